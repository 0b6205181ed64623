"""supervisor stage."""
