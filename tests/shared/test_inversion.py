"""InvertSpatiald gives what MONAI's Invertd gives: the same values, dtype and metadata (affine
included) for both 2D bundles' preprocessing, on PNG and NIfTI inputs smaller, larger, wider and
taller than the window; anything it cannot undo is refused by name."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, Flipd, Invertd
from monai.utils import MetaKeys, SpaceKeys
from PIL import Image

from xray_seg.shared.inversion import InvertSpatiald
from xray_seg.shared.paths import BUNDLES

SHAPES = [(512, 512), (300, 517), (120, 200), (256, 256), (1023, 999)]  # (rows, columns)


def _inputs(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for rows, cols in SHAPES:
        path = folder / f"grey_{rows}x{cols}.png"
        Image.fromarray(rng.integers(0, 255, (rows, cols), dtype=np.uint8)).save(path)
        files.append(path)
    # A NIfTI radiograph with anisotropic, sheared spacing and an offset origin: the affine matters.
    affine = np.array([[0.14, 0.01, 0, 10.5], [0, -0.17, 0, 3.25], [0, 0, 1, -7], [0, 0, 0, 1]])
    path = folder / "radiograph.nii.gz"
    nib.save(nib.Nifti1Image(rng.random((333, 412)).astype(np.float32), affine), path)
    return [*files, path]


def _same_meta(a: dict, b: dict) -> None:
    """``a`` (ours) holds ``b``'s (Invertd's) metadata; the one key it may add is MetaTensor's
    default ``space: RAS``, which Invertd leaves out when it assigns a PNG's metadata."""
    extra = set(a) - set(b)
    assert extra <= {MetaKeys.SPACE} and all(a[k] == SpaceKeys.RAS for k in extra), extra
    assert set(b) <= set(a)
    for key in b:
        x, y = a[key], b[key]
        if isinstance(x, (torch.Tensor, np.ndarray, float)):  # assert_array_equal: NaN == NaN
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(key))
        else:
            assert x == y, key


@pytest.mark.parametrize("bundle", ["cxr_lungs", "cxr_anatomy"])
def test_equals_monai_invertd_on_the_bundles_preprocessing(bundle, tmp_path) -> None:
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(BUNDLES / bundle)
    preprocessing = parser.get_parsed_content("preprocessing")
    channels = parser.get_parsed_content("network_def#out_channels")
    monai_inverse = Invertd(keys=["pred", "image"], transform=preprocessing, orig_keys="image",
                            nearest_interp=False, to_tensor=True)
    ours = InvertSpatiald(keys=["pred", "image"], orig_key="image")
    rng = torch.Generator().manual_seed(0)
    for path in _inputs(tmp_path):
        item = preprocessing({"image": str(path)})
        item["pred"] = MetaTensor(torch.rand(channels, *item["image"].shape[1:], generator=rng))
        expected, got = monai_inverse(dict(item)), ours(dict(item))
        for key in ("pred", "image"):
            assert isinstance(got[key], MetaTensor)
            assert got[key].dtype == expected[key].dtype == torch.float32
            assert got[key].shape == expected[key].shape
            assert tuple(got[key].shape[1:]) == tuple(item["image"].meta["spatial_shape"])  # the input's size
            assert torch.equal(got[key].as_tensor(), expected[key].as_tensor()), (path.name, key)
            _same_meta(got[key].meta, expected[key].meta)
            assert got[key].applied_operations == expected[key].applied_operations == []
        got["pred"].meta["filename_or_obj"] = "changed"  # each key has its own metadata
        assert got["image"].meta["filename_or_obj"] == str(path)
        # The input is left as it was (another transform may still read it).
        assert [op["class"] for op in item["image"].applied_operations] == ["Resize", "SpatialPad"]


def test_refuses_an_operation_it_does_not_undo(tmp_path) -> None:
    path = _inputs(tmp_path)[1]
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "cxr_lungs" / "configs" / "inference.yaml"))
    preprocessing = Compose([parser.get_parsed_content("preprocessing"), Flipd(keys="image", spatial_axis=0)])
    item = preprocessing({"image": str(path)})
    item["pred"] = MetaTensor(torch.rand(2, *item["image"].shape[1:]))
    with pytest.raises(ValueError, match="preprocessing applied Flip: use Invertd"):
        InvertSpatiald(keys="pred")(item)


def test_refuses_an_image_without_a_record() -> None:
    with pytest.raises(ValueError, match="carries no transform record"):
        InvertSpatiald(keys="pred")({"image": torch.zeros(1, 8, 8), "pred": torch.zeros(2, 8, 8)})


def test_refuses_a_resize_that_added_dimensions() -> None:
    from monai.transforms import Resized

    item = Resized(keys="image", spatial_size=(4, 4, 1))({"image": MetaTensor(torch.rand(1, 8, 8))})
    assert item["image"].applied_operations[-1]["extra_info"]["new_dim"] == 1
    item["pred"] = MetaTensor(torch.rand(2, 4, 4, 1))
    with pytest.raises(ValueError, match="added spatial dimensions; use Invertd"):
        InvertSpatiald(keys="pred")(item)


def test_refuses_padded_channels_before_changing_anything() -> None:
    """MONAI's SpatialPad never pads channels; a record that says it did (edited, or from
    another transform under that name) is refused rather than cropped wrongly."""
    from monai.transforms import SpatialPadd

    item = SpatialPadd(keys="image", spatial_size=(12, 12))({"image": MetaTensor(torch.rand(1, 8, 8))})
    record = item["image"].applied_operations[-1]
    record["extra_info"]["padded"] = ((1, 0), *record["extra_info"]["padded"][1:])
    item["pred"] = MetaTensor(torch.rand(2, 12, 12))
    before = item["pred"].clone()
    with pytest.raises(ValueError, match="the channels were padded; use Invertd"):
        InvertSpatiald(keys="pred")(item)
    assert torch.equal(item["pred"], before)
