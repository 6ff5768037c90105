"""brewcast's performance suite: run with `make bench`; never part of the unit tests."""
