"""The MONAI Label server over real HTTP: /info, /infer for each bundle, errors, concurrency.

The curl equivalents of these requests are in the README (MONAI Label section).
"""

from __future__ import annotations

import io
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel
import numpy as np
import pytest
from PIL import Image

from xray_seg.cli.demo import bundle_command
from xray_seg.shared.paths import BUNDLES


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def left_behind(server, before: set[Path], timeout_s: float = 10.0) -> set[Path]:
    """Files that a request added to the server's temporary folder or to its bundle copies.

    MONAI Label removes its temporary files after the response is sent, so this waits for that
    clean-up. Files of an earlier request may vanish meanwhile; only new files count.
    """
    def new() -> set[Path]:
        return (files_under(server.tmp) | files_under(server.work_dir / "bundles")) - before

    deadline = time.monotonic() + timeout_s
    while new() and time.monotonic() < deadline:
        time.sleep(0.2)
    return new()


def infer(server, model: str, path: Path, output: str = "image", **kw):
    with open(path, "rb") as f:
        return server.post(f"/infer/{model}?output={output}", files={"file": (path.name, f)}, **kw)


def png(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array(Image.open(io.BytesIO(response.content)))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_info_lists_the_three_bundles_with_their_labels(label_server):
    info = label_server.get("/info/").json()
    models = info["models"]
    assert models["cxr_lungs"]["labels"] == {"lung": 1} and models["cxr_lungs"]["dimension"] == 2
    assert models["cxr_anatomy"]["labels"] == {"right_lung": 1, "left_lung": 2, "heart": 3, "right_clavicle": 4,
                                               "left_clavicle": 5}
    assert models["cxr_anatomy"]["dimension"] == 2
    assert models["xray_tomography"]["labels"] == {"pores": 1, "zirconia": 2, "nickel": 3}
    assert models["xray_tomography"]["dimension"] == 3
    assert set(info["trainers"]) == set(models)
    assert {"random", "tta"} <= set(info["strategies"])
    assert info["datastore"]["total"] == 4


def test_infer_lungs_returns_a_uint8_label_png_of_the_input_size(label_server):
    before = files_under(label_server.tmp) | files_under(label_server.work_dir / "bundles")
    label = png(infer(label_server, "cxr_lungs", label_server.cases / "narrow.png"))
    assert label.shape == (256, 224) and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1}
    truth = np.array(Image.open(label_server.cases / "narrow_mask.png")) > 0
    assert dice(label == 1, truth) > 0.8
    # No file left anywhere: not in the temporary folder, not in the bundle copies.
    assert left_behind(label_server, before) == set()


def test_infer_lungs_on_a_datastore_image_and_as_json(label_server):
    response = label_server.post("/infer/cxr_lungs?image=cxr1&output=json")
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["lung_area_px"]["total"] > 0 and result["label_names"] == {"lung": 1}
    assert set(result["qc"]) == {"qc_score", "qc_flag", "reasons"}  # the bundle's quality row


def test_infer_anatomy_label_map_and_measurements(label_server):
    path = label_server.cases / "narrow.png"
    label = png(infer(label_server, "cxr_anatomy", path))
    assert label.shape == (256, 224) and label.dtype == np.uint8
    assert set(np.unique(label)) <= {0, 1, 2, 3, 4, 5} and {0, 1, 2} <= set(np.unique(label))
    result = infer(label_server, "cxr_anatomy", path, output="json").json()
    assert 0 < result["cardiothoracic_ratio"] < 1
    assert result["lung_area_px"]["total"] == result["lung_area_px"]["right_lung"] + result["lung_area_px"]["left_lung"]
    both = infer(label_server, "cxr_anatomy", path, output="all")
    assert both.status_code == 200 and both.headers["content-type"].startswith("multipart/form-data")
    assert b"cardiothoracic_ratio" in both.content and b"\x89PNG" in both.content


def test_infer_anatomy_on_a_dicom_gives_its_size_and_measurements_in_mm(label_server, tmp_path):
    from dicom_files import write_dicom

    pixels = np.array(Image.open(label_server.cases / "narrow.png").convert("L")).astype(np.uint16) * 256
    path = write_dicom(tmp_path / "chest.dcm", pixels, pixel_spacing=[0.2, 0.25])
    label = png(infer(label_server, "cxr_anatomy", path))
    assert label.shape == pixels.shape
    result = infer(label_server, "cxr_anatomy", path, output="json").json()
    assert result["pixel_spacing_mm"] == [0.2, 0.25]
    assert result["lung_area_mm2"]["total"] == pytest.approx(result["lung_area_px"]["total"] * 0.05)


def test_infer_tomography_matches_the_command_line_plus_one(label_server, label_python, tmp_path):
    volume = label_server.cases / "vol1.nii.gz"
    before = files_under(label_server.tmp) | files_under(label_server.work_dir / "bundles")
    response = infer(label_server, "xray_tomography", volume)
    assert response.status_code == 200, response.text
    assert left_behind(label_server, before) == set()  # no file left behind
    served = tmp_path / "served.nii.gz"
    served.write_bytes(response.content)
    # The command line, in the same environment (same torch), on the same volume.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / volume.name).write_bytes(volume.read_bytes())
    cmd = bundle_command(["inference.yaml"], bundle=BUNDLES / "xray_tomography",
                         dataset_dir=tmp_path / "in", output_dir=tmp_path / "out")
    run = subprocess.run([str(label_python), *cmd[1:]], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    cli = nibabel.load(tmp_path / "out" / "vol1_seg.nii.gz")
    got, source = nibabel.load(served), nibabel.load(volume)
    assert got.shape == source.shape and np.allclose(got.affine, source.affine)
    assert got.get_data_dtype() == np.uint8
    values = np.asarray(got.dataobj)
    assert set(np.unique(values)) <= {1, 2, 3}  # every phase a segment, pores included
    np.testing.assert_array_equal(values, np.asarray(cli.dataobj) + 1)


def test_eight_concurrent_infer_requests_all_answered(label_server):
    path = label_server.cases / "narrow.png"
    reference = png(infer(label_server, "cxr_lungs", path))
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: infer(label_server, "cxr_lungs", path), range(8)))
    for response in responses:
        np.testing.assert_array_equal(png(response), reference)


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(label_server):
    unknown = infer(label_server, "no_such_model", label_server.cases / "narrow.png")
    assert unknown.status_code == 404 and "no_such_model" in unknown.json()["detail"]

    with open(label_server.cases / "notes.png", "rb") as f:
        upload = label_server.put("/datastore/?image=notes", files={"file": ("notes.png", f)})
    assert upload.status_code == 400 and "cannot be read" in upload.json()["detail"]
    assert not (label_server.studies / "notes.png").exists()

    corrupt = infer(label_server, "xray_tomography", label_server.cases / "corrupt.nii.gz")
    assert corrupt.status_code == 400 and "cannot read" in corrupt.json()["detail"]

    not_image = infer(label_server, "cxr_lungs", label_server.cases / "notes.png")
    assert not_image.status_code == 400 and "radiograph" in not_image.json()["detail"]

    small = io.BytesIO()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(small, format="PNG")
    wrong_size = label_server.put("/datastore/label?image=cxr0&tag=final", files={"label": ("l.png", small.getvalue())})
    assert wrong_size.status_code == 400 and "differs from the image" in wrong_size.json()["detail"]

    assert label_server.get("/info/").status_code == 200
    assert png(infer(label_server, "cxr_lungs", label_server.cases / "narrow.png")).shape == (256, 224)


def test_info_json_is_valid(label_server):
    json.dumps(label_server.get("/info/").json())
