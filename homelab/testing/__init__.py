"""Helpers for tests and benchmarks (tiny GGUF models, a test llama-server build); no stage imports them."""
