"""Benchmarks: ``homelab bench ...`` commands that print comparable numbers; no stage imports them."""
