"""Shared Python layer for the X-ray segmentation bundles.

Holds only what MONAI bundle configs cannot express: data manifests, custom
transforms and handlers, metrics reports, plots and synthetic data.
"""

from xray_seg.shared.quiet import filter_library_warnings

filter_library_warnings()
