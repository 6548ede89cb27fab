"""MONAI Label's local datastore, refusing uploads the bundles cannot read.

Without this, ``PUT /datastore`` stores any file (a text file would only fail later,
inside an infer or train request); here an image that cannot be read, or a label of
the wrong size or with unknown values, is refused with HTTP 400 and nothing is stored.
"""

from __future__ import annotations

from pathlib import Path

from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException

from xray_seg.label import labels
from xray_seg.label.images import EXTENSIONS, dimension
from xray_seg.tomography.volume_io import SlabReader


def _refuse(message: str) -> MONAILabelException:
    return MONAILabelException(MONAILabelError.INVALID_INPUT, message)


def check_image(path: str, name: str) -> int:
    """The image's dimension (2 or 3) if a bundle can read it; else ``MONAILabelException``."""
    dim = dimension(path)
    if dim is None:
        raise _refuse(f"{name}: not an image type the server takes ({' '.join(EXTENSIONS)})")
    try:
        if dim == 2:
            labels.load_2d(path)
        else:
            with SlabReader(path):
                pass
    except ValueError as e:
        raise _refuse(f"{name}: cannot be read as a {'radiograph' if dim == 2 else 'volume'} ({e})") from None
    return dim


class CheckedDatastore(LocalDatastore):
    def add_image(self, image_id, image_filename, image_info):
        check_image(image_filename, image_id or Path(image_filename).name)
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id, label_filename, label_tag, label_info):
        obj = self._datastore.objects.get(image_id)
        if obj is not None:
            image = self.get_image_uri(image_id)
            try:
                if dimension(image) == 2:
                    labels.label_map_2d(label_filename, image)
                else:
                    with SlabReader(image) as img, SlabReader(label_filename) as lab:
                        if img.meta.shape != lab.meta.shape:
                            raise ValueError(f"label volume shape {lab.meta.shape} differs from the image's "
                                             f"{img.meta.shape} (z, y, x)")
            except ValueError as e:
                raise _refuse(f"label for {image_id}: {e}") from None
        return super().save_label(image_id, label_filename, label_tag, label_info)
