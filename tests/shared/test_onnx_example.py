"""The README's example of running an exported model with ONNX Runtime alone gives the bundle's masks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
from bundle_runs import run_bundle
from PIL import Image

from xray_seg.shared.export import export_bundle
from xray_seg.shared.paths import BUNDLES

# Copied verbatim into the README ("Run an exported model without this package"): keep the two identical.
SNIPPET = '''\
# Segment the lungs of a chest radiograph with the exported cxr_lungs model and ONNX
# Runtime alone (numpy, pillow, onnxruntime), preprocessing as the bundle's inference.yaml does.
#   python onnx_segment.py cxr_lungs.onnx chest.png chest_seg.png
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

model_file, image_file, mask_file = sys.argv[1:4]
SIZE = 256  # inference.yaml image_size and roi_size; the network needs sizes divisible by 16

image = Image.open(image_file)
if image.mode not in ("L", "I", "I;16", "F"):  # colour or palette: grey
    image = image.convert("L")
grey = np.asarray(image, dtype=np.float32)
h, w = grey.shape

# Robust intensity scaling: 0.5 and 99.5 percentiles to 0..1, clipped.
lo, hi = np.percentile(grey, [0.5, 99.5])
grey = np.clip((grey - lo) / max(hi - lo, 1e-6), 0.0, 1.0)

# Longest side to SIZE (bilinear, anti-aliased), then zero-pad both sides to SIZE x SIZE.
scale = SIZE / max(h, w)
rh, rw = round(h * scale), round(w * scale)
small = np.asarray(Image.fromarray(grey).resize((rw, rh), Image.BILINEAR))
# The bundle reads images width-first (MONAI's PILReader), so the network sees them transposed.
x = small.T
top, left = (SIZE - rw) // 2, (SIZE - rh) // 2
x = np.pad(x, ((top, SIZE - rw - top), (left, SIZE - rh - left)))[None, None].astype(np.float32)

session = ort.InferenceSession(model_file, providers=["CPUExecutionProvider"])
logits = session.run(None, {"image": x})[0][0]  # (2, SIZE, SIZE): background, lung
logits = logits[:, top:top + rw, left:left + rh].transpose(0, 2, 1)

# Softmax, probabilities back to the input's size (bilinear), argmax: 0 background, 1 lung.
prob = np.exp(logits - logits.max(axis=0))
prob /= prob.sum(axis=0)
prob = np.stack([np.asarray(Image.fromarray(p).resize((w, h), Image.BILINEAR)) for p in prob])
Image.fromarray(prob.argmax(axis=0).astype(np.uint8)).save(mask_file)
'''


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_snippet_needs_only_numpy_pillow_and_onnxruntime() -> None:
    tree = ast.parse(SNIPPET)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported == {"sys", "numpy", "onnxruntime", "PIL"}


def test_onnx_runtime_snippet_segments_like_the_bundle(tmp_path: Path, data_dir: Path) -> None:
    # Real radiographs of both sites: the bundle's lung selection cuts a prediction back
    # to the patient's body, which the snippet (two largest components) does not do, and
    # synthetic images have no realistic body, so only on real ones must the two agree.
    (tmp_path / "in").mkdir()
    images = [tmp_path / "in" / "montgomery.png", tmp_path / "in" / "jsrt.png"]
    Image.open(data_dir / "montgomery" / "images" / "MCUCXR_0001_0.png").save(images[0])
    # A non-square image too: checks the padding and the width-first orientation.
    Image.open(data_dir / "jsrt_scr" / "images" / "JPCLN001.png").crop((40, 0, 472, 400)).save(images[1])
    model = export_bundle("cxr_lungs", "onnx", tmp_path / "cxr_lungs.onnx")
    run_bundle(BUNDLES / "cxr_lungs", ["inference.yaml"], dataset_dir=images[0].parent, output_dir=tmp_path / "bundle")

    script = tmp_path / "onnx_segment.py"
    script.write_text(SNIPPET)
    for image in images:
        mask_file = tmp_path / f"{image.stem}_onnx.png"
        # -I: isolated mode, PYTHONPATH ignored; the snippet runs outside this checkout.
        subprocess.run([sys.executable, "-I", str(script), str(model), str(image), str(mask_file)], check=True,
                       cwd=tmp_path, timeout=120)
        got = np.asarray(Image.open(mask_file))
        expected = np.asarray(Image.open(tmp_path / "bundle" / f"{image.stem}_seg.png"))
        assert got.shape == expected.shape == Image.open(image).size[::-1]
        assert set(np.unique(got)) <= {0, 1}
        # Not identical: PIL's and MONAI's anti-aliased resizing differ slightly, and the
        # bundle selects the lungs by anatomy rather than as the two largest components.
        assert dice(got == 1, expected == 1) >= 0.99, image.name
