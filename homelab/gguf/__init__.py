"""gguf stage."""
