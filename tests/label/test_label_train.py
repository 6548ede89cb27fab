"""Annotate and retrain over HTTP: upload an image and labels, fine-tune, re-infer with
the new weights; a second /train while one runs is refused. Runs after
test_label_server.py (file order), which compares outputs of the shipped weights."""

from __future__ import annotations

import hashlib
import time

import numpy as np
from PIL import Image

from xray_seg.shared.paths import BUNDLES

from test_label_server import infer, png

TRAIN_TIMEOUT_S = 300


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_for_training(server) -> dict:
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        task = server.get("/train/").json()
        if task["status"] not in ("SUBMITTED", "RUNNING"):
            return task
        time.sleep(2)
    raise AssertionError(f"training still running after {TRAIN_TIMEOUT_S} s:\n{server.log_tail()}")


def test_upload_label_train_and_reinfer(label_server):
    shipped = sha256(BUNDLES / "cxr_lungs" / "models" / "model.pt")
    narrow = label_server.cases / "narrow.png"
    before = png(infer(label_server, "cxr_lungs", narrow))

    # A new image and labels, as a client sends them.
    new_image = label_server.cases / "cxr" / "images" / "synth_0004.png"
    with open(new_image, "rb") as f:
        added = label_server.put("/datastore/?image=cxr_new", files={"file": (new_image.name, f)})
    assert added.status_code == 200, added.text
    mask = (np.array(Image.open(label_server.cases / "cxr" / "masks" / "synth_0004.png")) > 0).astype(np.uint8)
    Image.fromarray(mask).save(label_server.cases / "labels" / "cxr_new.png")
    for image_id in ("cxr0", "cxr_new"):
        with open(label_server.cases / "labels" / f"{image_id}.png", "rb") as f:
            saved = label_server.put(f"/datastore/label?image={image_id}&tag=final", files={"label": ("label.png", f)})
        assert saved.status_code == 200, saved.text
    assert label_server.get("/datastore/?output=stats").json()["completed"] == 2

    # Tiny: one epoch at 128 pixels, validated on the two labelled images (val_split 0).
    settings = {"max_epochs": 1, "image_size": 128, "val_split": 0}
    started = label_server.post("/train/cxr_lungs", json=settings)
    assert started.status_code == 200, started.text
    deadline = time.monotonic() + 30
    while label_server.get("/train/?check_if_running=true").status_code != 200:
        assert time.monotonic() < deadline, "the training task did not start"
        time.sleep(0.2)
    again = label_server.post("/train/cxr_lungs", json=settings)
    assert again.status_code == 429 and "Already Running" in again.json()["detail"]
    assert label_server.get("/info/").status_code == 200  # still serving while training

    task = wait_for_training(label_server)
    assert task["status"] == "DONE", "\n".join(task.get("details", []))
    stats = label_server.get("/info/").json()["train_stats"]["cxr_lungs"]
    assert stats["train_images"] == ["cxr0.png", "cxr_new.png"] and stats["val_images"] == stats["train_images"]
    assert stats["promoted"] and stats["best"] >= stats["baseline"]

    after = png(infer(label_server, "cxr_lungs", narrow))
    assert after.shape == before.shape and not np.array_equal(after, before)  # the new weights are used
    assert sha256(BUNDLES / "cxr_lungs" / "models" / "model.pt") == shipped  # the repository's model is untouched
