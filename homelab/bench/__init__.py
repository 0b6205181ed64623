"""Benchmarks (``homelab bench ...``): comparable numbers for each stage, apart from the stages."""
