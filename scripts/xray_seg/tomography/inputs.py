"""The volume entry points that the tomography bundle's configs call; bad input
gives one ``ERROR:`` line and exit status 2 (``xray_seg.shared.errors``)."""

from __future__ import annotations

import numpy as np

from xray_seg.shared.errors import or_exit
from xray_seg.shared.outputs import check_output_dir
from xray_seg.shared.splits import load_split
from xray_seg.tomography.volume_io import check_same_shape, check_volume, read_volume


def volume_cases(manifest: str, dataset_dir: str, split: str, label_values: list[int] | None = None,
                 output_dir: str | None = None) -> list[dict]:
    """Items of one split of a volume or slab manifest, every volume opened and
    checked up front: readable (a .nii.gz's whole gzip stream), image and label of
    one shape, and, with ``label_values``, label voxels only of those values. With
    ``output_dir`` (an evaluation's report folder), the destination is checked first."""
    def scan() -> list[dict]:
        if output_dir is not None:
            check_output_dir(output_dir)
        items = load_split(manifest, dataset_dir, split)
        for item in items:
            with check_volume(item["image"]) as image, check_volume(item["label"]) as label:
                check_same_shape(image.meta, label.meta)
            if label_values is not None:
                slices = item.get("slices")
                values, _ = read_volume(item["label"], slices=None if slices is None else tuple(slices))
                unknown = sorted(set(np.unique(values).tolist()) - {int(v) for v in label_values})
                if unknown:
                    raise ValueError(f"label volume {item['label']} has values {unknown[:10]} "
                                     f"outside the expected {list(label_values)}")
        return items

    return or_exit(scan)
