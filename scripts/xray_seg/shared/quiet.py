"""Library notices the user cannot act on, filtered once for every command and config.

Called from ``xray_seg/__init__.py``, so it applies both to the ``xray-seg`` command
and to ``python -m monai.bundle run`` (every config imports ``xray_seg``). Only
notices raised inside the libraries are dropped: deprecations attributed to this
project's own code, and every other warning, still show.
"""

from __future__ import annotations

import logging
import warnings

# Modules whose internal deprecation notices are about their own dependencies.
LIBRARIES = r"(monai|itk|torch|ignite|tensorboard|numpy|scipy|skimage|pydicom|nibabel)(\.|$)"
NVIMGCODEC_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"

_done = False


class _DropNvImageCodec(logging.Filter):
    """MONAI logs that nvImageCodec (a GPU DICOM decoder) is absent each time a DICOM reader is made."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "nvImageCodec is not available" not in record.getMessage()


def filter_library_warnings() -> None:
    """Install the filters; calling again does nothing."""
    global _done
    if _done:
        return
    _done = True
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARIES)
    # Without nvImageCodec MONAI falls back to pydicom's own decoders, which is what we use.
    warnings.filterwarnings("ignore", message=r"NvImgCodecPydicomReader: nvImageCodec decoder plugin")
    logging.getLogger(NVIMGCODEC_LOGGER).addFilter(_DropNvImageCodec())
