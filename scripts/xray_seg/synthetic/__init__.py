"""Synthetic data with exact labels: chest radiographs and simulated tomography."""
