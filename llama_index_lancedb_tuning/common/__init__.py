"""Small helpers every stage may use: atomic JSON, the retry policy, secret redaction, counted nouns, quiet imports.

Imports nothing: the CLI checks its arguments before torch loads."""
