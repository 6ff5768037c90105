"""brewcast's application: the command line, the stage API, the demo and its servers.

It sits on top of every stage package and nothing imports it but the DAG files, the tests
and the benchmarks (import-linter checks this in ``make lint``).
"""
