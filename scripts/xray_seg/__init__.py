"""The Python layer of the X-ray segmentation bundles: only what MONAI bundle configs cannot say.

Sub-packages: ``shared`` (what every bundle uses), ``chest`` (2D radiographs),
``tomography`` (3D volumes), ``synthetic`` (data with exact labels), ``label`` (the
MONAI Label app), ``studies`` (benchmarks, experiments) and ``cli`` (``xray-seg``).
Library warnings the user cannot act on are filtered once, here.
"""

from xray_seg.shared.quiet import filter_library_warnings

filter_library_warnings()
