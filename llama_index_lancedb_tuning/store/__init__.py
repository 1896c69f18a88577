"""The LanceDB table: schema and writes, the encoders recorded with it, promotions as tagged versions, Ray ingest.

Imports nothing: the CLI checks its arguments before torch loads."""
