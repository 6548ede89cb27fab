"""Shared Python layer for the X-ray segmentation bundles.

Holds only what MONAI bundle configs cannot express: data manifests, custom
transforms and handlers, metrics reports, plots and synthetic data.
"""
