"""Texts to vectors: which model to load, and the torch and ONNX Runtime encoders with their export cache.

Imports nothing: the CLI checks its arguments before torch loads."""
