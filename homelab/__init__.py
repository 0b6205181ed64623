"""homelab: a few YAML files in, a running multi-model llama.cpp server out."""

__version__ = "0.1.0"
