"""llamacpp stage."""
