"""Benchmarks and experiments: they generate data, run the bundles and measure (speed, memory, accuracy)."""
