"""A real MONAI Label server for the HTTP tests: the ``.venv-label`` interpreter (built here
when missing, as on a fresh clone in CI), a free loopback port, a temporary studies folder
of generated radiographs and a small generated volume, and a private temporary folder
(TMPDIR) so that the tests can see every file a request leaves behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from xray_seg.label import environment
from xray_seg.shared.paths import REPO
from xray_seg.synthetic.cxr import generate_dataset
from xray_seg.synthetic.tomo import generate_volume
from xray_seg.tomography.volume_io import read_volume, write_volume

START_TIMEOUT_S = 240


@dataclass
class Server:
    url: str
    studies: Path
    work_dir: Path
    tmp: Path  # the server's TMPDIR
    cases: Path  # generated images, masks and volumes that are not in the datastore
    log: Path
    process: subprocess.Popen

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 120), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=kw.pop("timeout", 300), **kw)

    def put(self, path: str, **kw) -> requests.Response:
        return requests.put(self.url + path, timeout=kw.pop("timeout", 120), **kw)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


@pytest.fixture(scope="session")
def label_python() -> Path:
    """The MONAI Label environment's interpreter; builds ``.venv-label`` when missing (minutes)."""
    if not environment.is_built():
        print(f"\nbuilding the MONAI Label environment {environment.VENV} (several minutes, once)", flush=True)
        environment.build(quiet=True)
    return environment.python_of()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_studies(root: Path) -> tuple[Path, Path]:
    studies, cases = root / "studies", root / "cases"
    studies.mkdir()
    generate_dataset(cases / "cxr", n_cases=6, size=256, seed=3)
    # Radiographs in the datastore: three of them, one not square (height 256, width 224).
    for i in range(3):
        shutil.copy(cases / "cxr" / "images" / f"synth_{i:04d}.png", studies / f"cxr{i}.png")
    wide = Image.open(cases / "cxr" / "images" / "synth_0003.png").crop((16, 0, 240, 256))
    wide.save(cases / "narrow.png")
    Image.open(cases / "cxr" / "masks" / "synth_0003.png").crop((16, 0, 240, 256)).save(cases / "narrow_mask.png")
    # A small volume, as NIfTI with a non-unit spacing (its geometry must come back).
    generated = generate_volume(cases / "tomo", shape=(24, 64, 64), seed=1, progress=False)
    image, meta = read_volume(generated["image"])
    meta.spacing = (2.0, 0.5, 0.5)
    write_volume(image, meta, studies / "vol0.nii.gz")
    write_volume(image, meta, cases / "vol1.nii.gz")
    (cases / "corrupt.nii.gz").write_bytes(b"not a volume" * 10)
    (cases / "notes.png").write_text("this is not an image\n")
    masks = cases / "labels"
    masks.mkdir()
    for i in range(3):  # label maps as clients send them: 0 background, 1 lung
        mask = np.array(Image.open(cases / "cxr" / "masks" / f"synth_{i:04d}.png")) > 0
        Image.fromarray(mask.astype(np.uint8)).save(masks / f"cxr{i}.png")
    return studies, cases


@pytest.fixture(scope="session")
def label_server(label_python: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("label_server")
    studies, cases = _make_studies(root)
    tmp = root / "tmp"
    tmp.mkdir()
    port = _free_port()
    log = root / "server.log"
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO / "scripts")}
    cmd = [str(label_python), "-m", "xray_seg.cli", "label", "serve", "--studies", str(studies), "--port", str(port),
           "--work_dir", str(root / "work")]
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", studies, root / "work", tmp, cases, log, process)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"server exited with {process.returncode}:\n{server.log_tail()}"
            try:
                if requests.get(server.url + "/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"server not up after {START_TIMEOUT_S} s:\n{server.log_tail()}"
            time.sleep(1)
        yield server
    finally:
        # The server and its training subprocesses: one process group, started above.
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
