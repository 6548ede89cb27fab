"""Figures of the MONAI Label server on real data: latency per endpoint, fine-tune time,
and held-out Dice before and after a fine-tune on 3 newly labelled images per 2D bundle.

    xray-seg benchmark label [--dataset_dir ../shared/data] [--output_file runs/benchmark/label.json]

Runs in the main environment (it needs ``requests``) and starts the server under the
MONAI Label environment's interpreter, once per 2D bundle, each with its own temporary
studies folder: 3 training-split images of the bundle's data set (Montgomery for
cxr_lungs, JSRT for cxr_anatomy) with their labels sent as label maps (JSRT's five masks
merged, clavicle > heart > lung), fine-tuned with the server's default settings. The
held-out images are the first ``--n_held_out`` test-split images of the same manifest,
segmented through ``/infer`` before and after. No pixels are written outside temporary folders.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from xray_seg.shared.atomic import write_text
from xray_seg.chest.anatomy import LABEL_VALUES, merge_to_label_map
from xray_seg.label import environment
from xray_seg.shared.paths import MANIFESTS, REPO

DATASETS = {"cxr_lungs": ("montgomery", "montgomery.json"), "cxr_anatomy": ("jsrt_scr", "jsrt_scr.json")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, studies: Path, work_dir: Path, log: Path) -> None:
        import requests

        self.requests = requests
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [str(environment.python_of()), "-m", "xray_seg.cli", "label", "serve", "--studies", str(studies),
               "--port", str(port), "--work_dir", str(work_dir)]
        env = {**os.environ, "PYTHONPATH": str(REPO / "scripts")}
        started = time.monotonic()
        with open(log, "w") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        self.start_s = time.monotonic() - started

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)

    def infer(self, model: str, path: Path) -> tuple[np.ndarray, float]:
        started = time.monotonic()
        with open(path, "rb") as f:
            r = self.requests.post(f"{self.url}/infer/{model}?output=image", files={"file": (path.name, f)}, timeout=900)
        r.raise_for_status()
        elapsed = time.monotonic() - started
        return np.array(Image.open(io.BytesIO(r.content))) if path.suffix == ".png" else r.content, elapsed

    def train(self, model: str, settings: dict) -> tuple[dict, float]:
        started = time.monotonic()
        self.requests.post(f"{self.url}/train/{model}", json=settings, timeout=60).raise_for_status()
        time.sleep(2)
        while self.requests.get(f"{self.url}/train/", timeout=60).json()["status"] in ("SUBMITTED", "RUNNING"):
            time.sleep(2)
        task = self.requests.get(f"{self.url}/train/", timeout=60).json()
        if task["status"] != "DONE":
            raise RuntimeError("\n".join(task.get("details", [])))
        stats = self.requests.get(f"{self.url}/info/", timeout=60).json()["train_stats"][model]
        return stats, time.monotonic() - started


def _truth(model: str, dataset: Path, item: dict) -> np.ndarray:
    """Ground truth as a (rows, columns) label map with the server's values."""
    if model == "cxr_lungs":
        return (np.array(Image.open(dataset / item["label"]).convert("L")) > 127).astype(np.uint8)
    channels = np.stack([np.array(Image.open(dataset / p).convert("L")) > 127 for p in item["label"]])
    return merge_to_label_map(channels.astype(np.uint8))


def _dice(pred: np.ndarray, truth: np.ndarray, values: list[int]) -> float:
    scores = []
    for v in values:
        a, b = pred == v, truth == v
        scores.append(2 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum())))
    return float(np.mean(scores))


def _held_out(server: Server, model: str, dataset: Path, items: list[dict]) -> tuple[float, list[float]]:
    values = [1] if model == "cxr_lungs" else list(LABEL_VALUES.values())
    dices, times = [], []
    for item in items:
        pred, elapsed = server.infer(model, dataset / item["image"])
        dices.append(_dice(pred, _truth(model, dataset, item), values))
        times.append(elapsed)
    return float(np.mean(dices)), times


def fine_tune_benchmark(model: str, data: Path, n_new: int, n_held_out: int, root: Path,
                        settings: dict | None = None) -> dict:
    folder, manifest = DATASETS[model]
    dataset = data / folder
    split = json.loads((MANIFESTS / manifest).read_text())
    new, held_out = split["training"][:n_new], split["testing"][:n_held_out]
    studies = root / model / "studies"
    studies.mkdir(parents=True)
    for item in new:
        (studies / Path(item["image"]).name).write_bytes((dataset / item["image"]).read_bytes())
    server = Server(studies, root / model / "work", root / model / "server.log")
    try:
        before, latencies = _held_out(server, model, dataset, held_out)
        for item in new:  # the new labels, as label maps (what clients send)
            buffer = io.BytesIO()
            Image.fromarray(_truth(model, dataset, item)).save(buffer, format="PNG")
            image_id = Path(item["image"]).stem
            r = server.requests.put(f"{server.url}/datastore/label?image={image_id}&tag=final",
                                    files={"label": ("label.png", buffer.getvalue())}, timeout=60)
            r.raise_for_status()
        stats, train_s = server.train(model, settings or {})
        after, _ = _held_out(server, model, dataset, held_out)
        candidate = None
        if not stats["promoted"]:
            # What the guard kept out: score the fine-tuned model anyway (the server reloads a
            # model file whose time stamp changed), for the figures only.
            current = root / model / "work" / "bundles" / model / "models" / "model.pt"
            shutil.copyfile(Path(stats["run_dir"]) / "model.pt", current)
            candidate, _ = _held_out(server, model, dataset, held_out)
    finally:
        server.stop()
    return {
        "model": model, "server_start_s": round(server.start_s, 1),
        "new_images": [Path(i["image"]).name for i in new], "held_out_images": [Path(i["image"]).name for i in held_out],
        "infer_latency_s_median": round(statistics.median(latencies), 3),
        "held_out_dice_before": round(before, 4), "held_out_dice_after": round(after, 4),
        "held_out_dice_of_the_fine_tuned_model": round(candidate if candidate is not None else after, 4),
        "fine_tune_request_s": round(train_s, 1), "fine_tune": stats,
    }


def tomography_latency(data: Path, root: Path, repeats: int = 3) -> dict:
    """/infer/xray_tomography on a 64 x 256 x 256 block of the real volume (NIfTI)."""
    from xray_seg.tomography.volume_io import VolumeMeta, write_volume

    slices = sorted((data / "soc_ptycho" / "images").glob("*.tif*"))[:64]
    block = np.stack([np.array(Image.open(p))[:256, :256] for p in slices])
    studies = root / "tomo" / "studies"
    studies.mkdir(parents=True)
    volume = root / "tomo" / "block.nii.gz"
    write_volume(block, VolumeMeta(format="nifti", shape=block.shape, dtype=block.dtype), volume)
    server = Server(studies, root / "tomo" / "work", root / "tomo" / "server.log")
    try:
        times = [server.infer("xray_tomography", volume)[1] for _ in range(repeats)]
    finally:
        server.stop()
    return {"shape": list(block.shape), "infer_latency_s": [round(t, 2) for t in times],
            "infer_latency_s_median": round(statistics.median(times), 2)}


def benchmark(data: Path, output_file: Path, n_new: int = 3, n_held_out: int = 6, val_split: float | None = None,
              only: str | None = None) -> dict:
    """The figures for each 2D bundle (and the tomography latency), written to ``output_file``."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in DATASETS:
            if only in (None, model):
                settings = {} if val_split is None else {"val_split": val_split}
                results[model] = fine_tune_benchmark(model, data, n_new, n_held_out, Path(tmp), settings)
                print(json.dumps(results[model], indent=2), flush=True)
        if only in (None, "xray_tomography"):
            results["xray_tomography"] = tomography_latency(data, Path(tmp))
            print(json.dumps(results["xray_tomography"], indent=2), flush=True)
    write_text(output_file, json.dumps(results, indent=2) + "\n")
    return results
