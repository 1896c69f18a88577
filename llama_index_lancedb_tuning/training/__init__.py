"""Fine-tuning on sentence-transformers' Trainer: the finetuner, the query-only loss, the rows the trainer sees, progress.

Imports nothing: the CLI checks its arguments before torch loads."""
