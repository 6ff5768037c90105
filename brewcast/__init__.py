"""brewcast."""
