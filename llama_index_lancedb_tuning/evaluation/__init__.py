"""Scores: rates with their n, 95% intervals and paired tests, a table's query types scored, the report, data caveats.

Imports nothing: the CLI checks its arguments before torch loads."""
