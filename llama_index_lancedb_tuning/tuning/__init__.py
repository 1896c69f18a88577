"""The tuning loop: the do-no-harm gate, tuning an app's table, the CLI's run loop and its run directory.

Imports nothing: the CLI checks its arguments before torch loads."""
