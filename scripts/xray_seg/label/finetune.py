"""Fine-tune a bundle copy on newly labelled images, and keep the result only if it is no worse.

One fine-tuning run (``fine_tune``), driven by the bundle's own ``train.yaml`` with these
settings changed:

- a fresh run folder per request (``run_dir``, ``ckpt_dir`` = that folder, ``resume``
  false), so nothing resumes from an earlier run;
- ``init_weights``: the copy's current ``models/model.pt``;
- a lower learning rate (default 1e-4, the bundles train from scratch at 1e-3) and
  few epochs; validation after every epoch (``val_interval`` 1; ``TrainingRun`` also
  validates after the last one);
- batch norm in eval mode (``freeze_batch_norm``): layers normalise with the running
  statistics learnt on the full training set and never update them. With a batch of
  one or two radiographs (or a few patches of one volume) batch statistics are noise;
  training with them and then inferring with running statistics was what dropped lung
  Dice from 0.982 to 0.899 after one step. The affine (scale, shift) parameters still learn.

Before training, the current model is scored on the run's validation set; afterwards the
run's best model (``<run_dir>/model.pt``, by the same metric on the same set) replaces the
copy's ``models/model.pt`` only when its score is at least as high. The replacement is an
atomic rename, and the infer tasks reload a model file whose modification time changed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from xray_seg.label import workspace
from xray_seg.shared.atomic import atomic_path, write_text

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {"max_epochs": 10, "learning_rate": 1e-4, "val_split": 0.2}
KEY_METRIC = "val_mean_dice"
# Request keys that map onto train.yaml ids (the rest of the request is MONAI Label's own).
SIZE_SETTINGS = {
    2: ("image_size", "batch_size"),
    3: ("patch_size", "patches_per_step", "steps_per_epoch"),
}


def freeze_batch_norm(network: torch.nn.Module) -> int:
    """Keep every batch-norm layer of ``network`` in eval mode, whatever ``train()`` says.

    MONAI's trainer calls ``network.train()`` every iteration, so setting ``eval()`` once
    would not last; a forward pre-hook switches each layer back before it runs. Returns
    the number of layers frozen.
    """
    layers = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def to_eval(module: torch.nn.Module, _inputs) -> None:
        module.training = False

    for layer in layers:
        layer.register_forward_pre_hook(to_eval)
    return len(layers)


def _overrides(bundle_dir: Path, run_dir: Path, datalist: Path, settings: dict[str, Any], dim: int) -> dict:
    current = workspace.model_file(bundle_dir)
    overrides = {
        "bundle_root": str(bundle_dir),
        "run_name": run_dir.name,
        "run_dir": str(run_dir),
        "ckpt_dir": str(run_dir),
        "resume": False,
        "datalist": str(datalist),
        "dataset_dir": str(run_dir),
        "num_epochs": int(settings["max_epochs"]),
        "learning_rate": float(settings["learning_rate"]),
        "val_interval": 1,
        "num_workers": 0,
        "training_run#init_weights": str(current),
    }
    if dim == 3:
        overrides["label_values"] = [0, 1, 2]  # labels.tomography_item wrote class indices
    for key in SIZE_SETTINGS[dim]:
        if settings.get(key) is not None:
            overrides[key] = settings[key]
    if dim == 2 and settings.get("image_size") is not None:
        overrides["roi_size"] = [int(settings["image_size"])] * 2
    if dim == 3 and settings.get("patch_size") is not None:
        overrides["patch_size"] = [int(v) for v in settings["patch_size"]]
    return overrides


def _score(evaluator) -> float:
    evaluator.run()
    return float(evaluator.state.metrics[KEY_METRIC])


def fine_tune(model: str, bundle_dir: str | os.PathLike, train_items: list[dict], val_items: list[dict],
              run_dir: str | os.PathLike, **settings: Any) -> dict:
    """Fine-tune ``bundle_dir``'s model; promote the result when it validates at least as well.

    ``settings``: ``max_epochs``, ``learning_rate`` (``DEFAULTS``) and, for tests and small
    machines, ``image_size``/``batch_size`` (2D) or ``patch_size``/``patches_per_step``/
    ``steps_per_epoch`` (3D). Returns the run's summary (also written to ``result.json``).
    """
    from monai.bundle import ConfigParser

    started = time.monotonic()
    settings = {**DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
    bundle_dir, run_dir = Path(bundle_dir), Path(run_dir)
    dim = workspace.DIMENSION[model]
    run_dir.mkdir(parents=True, exist_ok=True)
    datalist = run_dir / "datalist.json"
    write_text(datalist, json.dumps({"training": train_items, "validation": val_items}, indent=2) + "\n")

    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "train.yaml"))
    parser.update(_overrides(bundle_dir, run_dir, datalist, settings, dim))
    if dim == 2 and "batch_size" not in settings:
        parser["batch_size"] = max(1, min(int(parser["batch_size"]), len(train_items)))
    parser.parse()

    device = parser.get_parsed_content("device")
    network = parser.get_parsed_content("network")
    frozen = freeze_batch_norm(network)
    current = workspace.model_file(bundle_dir)
    network.load_state_dict(torch.load(current, map_location=device, weights_only=True))
    evaluator = parser.get_parsed_content("validate#evaluator")
    baseline = _score(evaluator)
    logger.info("%s: current model scores %s %.4f on %d validation image(s)", model, KEY_METRIC, baseline, len(val_items))

    scores: list[float] = []
    from ignite.engine import Events

    evaluator.add_event_handler(Events.COMPLETED, lambda e: scores.append(float(e.state.metrics[KEY_METRIC])))
    parser.get_parsed_content("initialize")
    try:
        parser.get_parsed_content("run")
    finally:
        parser.get_parsed_content("finalize")

    candidate = run_dir / workspace.MODEL_FILE.name
    best = max((s for s in scores if not math.isnan(s)), default=math.nan)
    promoted = candidate.is_file() and not math.isnan(best) and (math.isnan(baseline) or best >= baseline)
    if promoted:
        with atomic_path(current) as tmp:
            shutil.copyfile(candidate, tmp)
    result = {
        "model": model,
        "run_dir": str(run_dir),
        "train_images": [Path(i["image"]).name for i in train_items],
        "val_images": [Path(i["image"]).name for i in val_items],
        "settings": {k: settings[k] for k in sorted(settings)},
        "batch_norm_layers_frozen": frozen,
        "metric": KEY_METRIC,
        "baseline": baseline,
        "best": best,
        "epoch_scores": scores,
        "promoted": promoted,
        "seconds": round(time.monotonic() - started, 1),
    }
    write_text(run_dir / "result.json", json.dumps(result, indent=2, default=str) + "\n")
    logger.info("%s: fine-tuned %s %.4f (current %.4f): %s", model, KEY_METRIC, best, baseline,
                "new model promoted" if promoted else "current model kept")
    return result
