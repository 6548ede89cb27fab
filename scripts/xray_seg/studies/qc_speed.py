"""Per-image cost of cxr_lungs post-processing: the old "two largest components" against
anatomy-aware selection + quality row, side by side in one run.

    PYTHONPATH=scripts python -m xray_seg.studies.qc_speed [--size 512] [--repeats 30] \
        [--image IMAGE.png] [--folder IN] [--output_file runs/benchmark/qc_speed.json]

Both start from the same softmax probabilities at the input's size (what ``Invertd``
gives) and end with the 0/1 mask; the new path adds the entropy map and the qc row.
The probabilities are the shipped model's on ``--image`` (default: a synthetic
radiograph from ``xray_seg.synthetic.cxr``), resized to --size. Prints and writes JSON
with the median CPU milliseconds (one thread) of each, their ratio, the machine and its load;
with --folder, also the wall time of the whole inference.yaml (old post-processing
swapped in, or as shipped) on that folder, one thread, alternately, best of three each
(wall and CPU time: on a shared machine the CPU time is the steadier figure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from monai.transforms import AsDiscreted, Compose, KeepLargestConnectedComponentd

from xray_seg.chest.lung_selection import SelectLungsd
from xray_seg.chest.quality import LungQualityd, Uncertaintyd
from xray_seg.shared.atomic import write_text
from xray_seg.shared.machine import cpu_name
from xray_seg.shared.paths import BUNDLES, REPO


def probabilities(image_path: Path | None, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, softmax) as (1, W, H) and (2, W, H) at size x size, from the shipped cxr_lungs model."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "cxr_lungs" / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(BUNDLES / "cxr_lungs")
    parser["device"] = "$torch.device('cpu')"
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(BUNDLES / "cxr_lungs" / "models" / "model.pt", weights_only=True))
    net.eval()
    with tempfile.TemporaryDirectory() as tmp:
        if image_path is None:
            from xray_seg.synthetic.cxr import generate_dataset

            generate_dataset(Path(tmp), n_cases=1, size=size)
            image_path = min((Path(tmp) / "images").iterdir())
        item = parser.get_parsed_content("preprocessing")({"image": str(image_path)})
    with torch.no_grad():
        prob = torch.softmax(net(item["image"][None].as_tensor()), dim=1)
    resize = lambda x: torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")[0]
    return resize(item["image"][None].as_tensor()), resize(prob)


def timed(fn, repeats: int) -> float:
    """Median CPU milliseconds of this process per call: on a shared, loaded machine wall time
    mostly measures the other processes; one thread, so CPU time is the call's own work."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times)


# The cxr_lungs post-processing before lung selection and qc.csv, as it was shipped.
TWO_LARGEST_POSTPROCESSING = [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    {"_target_": "Invertd", "keys": ["pred", "image"], "transform": "@preprocessing", "orig_keys": "image",
     "nearest_interp": False, "to_tensor": True},
    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1], "num_components": 2},
    {"_target_": "xray_seg.chest.transforms.SaveMaskd", "keys": "pred", "output_dir": "@staging_dir"},
]


def bundle_seconds(inputs: Path, old: bool) -> tuple[float, float]:
    """(wall, CPU) seconds of the whole cxr_lungs inference.yaml on ``inputs`` (CPU), either as
    shipped now or with the old post-processing and without the qc.csv handler."""
    from monai.bundle import ConfigWorkflow

    configs = BUNDLES / "cxr_lungs" / "configs"
    with tempfile.TemporaryDirectory() as tmp:
        workflow = ConfigWorkflow(
            config_file=str(configs / "inference.yaml"), meta_file=str(configs / "metadata.json"),
            logging_file=str(configs / "logging.conf"), workflow_type="infer",
            bundle_root=str(BUNDLES / "cxr_lungs"), dataset_dir=str(inputs), output_dir=str(Path(tmp) / "out"),
            device="$torch.device('cpu')",
        )
        if old:
            workflow.parser["postprocessing"]["transforms"] = TWO_LARGEST_POSTPROCESSING
            workflow.parser["handlers"] = [h for h in workflow.parser["handlers"]
                                           if "QualityTable" not in str(h.get("_target_", ""))]
        workflow.initialize()
        start, cpu = time.perf_counter(), time.process_time()
        workflow.run()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        workflow.finalize()
    return seconds, cpu_seconds


def main(argv: list[str] | None = None) -> dict:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--size", type=int, default=512)
    args.add_argument("--repeats", type=int, default=30)
    args.add_argument("--image", type=Path, default=None)
    args.add_argument("--folder", type=Path, default=None,
                      help="also time the whole inference.yaml on this folder, old and new alternately, twice each")
    args.add_argument("--output_file", type=Path, default=REPO / "runs" / "benchmark" / "qc_speed.json")
    a = args.parse_args(argv)
    torch.set_num_threads(1)
    image, prob = probabilities(a.image, a.size)
    old = Compose([AsDiscreted(keys="pred", argmax=True),
                   KeepLargestConnectedComponentd(keys="pred", applied_labels=[1], num_components=2)])
    new = Compose([Uncertaintyd(keys="pred"), AsDiscreted(keys="pred", argmax=True),
                   SelectLungsd(keys="pred", image_key="image"), LungQualityd(keys="pred", image_key="image")])
    item = lambda: {"pred": prob.clone(), "image": image.clone()}
    old_ms = timed(lambda: old(item()), a.repeats)
    new_ms = timed(lambda: new(item()), a.repeats)
    result = {
        "size": a.size, "repeats": a.repeats, "image": str(a.image or "synthetic"),
        "two_largest_cpu_ms": round(old_ms, 2), "selection_and_qc_cpu_ms": round(new_ms, 2),
        "extra_cpu_ms_per_image": round(new_ms - old_ms, 2), "ratio_new_over_old": round(new_ms / old_ms, 2),
        "threads": 1, "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                                   "load_1_5_15": [round(x, 2) for x in os.getloadavg()]},
    }
    if a.folder is not None:
        runs: dict[str, list[tuple[float, float]]] = {"two_largest": [], "selection_and_qc": []}
        for _ in range(3):  # alternately, so that a change in the machine's load hits both
            runs["two_largest"].append(bundle_seconds(a.folder, old=True))
            runs["selection_and_qc"].append(bundle_seconds(a.folder, old=False))
        n = sum(1 for p in a.folder.iterdir() if p.is_file())
        best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in runs.items()}
        result["bundle_inference"] = {
            "folder": str(a.folder), "images": n, "threads": 1,
            "wall_and_cpu_seconds": {k: [[round(w, 2), round(c, 2)] for w, c in v] for k, v in runs.items()},
            "best_wall_ms_per_image": {k: round(1000 * w / n, 1) for k, (w, _) in best.items()},
            "best_cpu_ms_per_image": {k: round(1000 * c / n, 1) for k, (_, c) in best.items()},
            "ratio_new_over_old_wall": round(best["selection_and_qc"][0] / best["two_largest"][0], 3),
            "ratio_new_over_old_cpu": round(best["selection_and_qc"][1] / best["two_largest"][1], 3),
            "load_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        }
    write_text(a.output_file, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
