"""MONAI Label train task: fine-tune a bundle copy on the datastore's labelled images
(``finetune.fine_tune``; built on MONAI Label's base ``TrainTask``, because
``BundleTrainTask`` resumes into the bundle's own folders and has no promotion step)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.train import TrainTask

from xray_seg.label import finetune, labels
from xray_seg.shared.atomic import write_text

logger = logging.getLogger(__name__)
LATEST = "latest.json"
# Request keys passed on to fine_tune.
SETTINGS = ("max_epochs", "learning_rate", "val_split", "image_size", "batch_size", "patch_size",
            "patches_per_step", "steps_per_epoch")


class FineTuneTask(TrainTask):
    def __init__(self, model: str, bundle_dir: Path, runs_dir: Path) -> None:
        super().__init__(f"Fine-tune {model} from its current model on the labelled images; "
                         "keep the result only if it validates at least as well")
        self.model, self.bundle_dir, self.runs_dir = model, Path(bundle_dir), Path(runs_dir) / model

    def config(self):
        return dict(finetune.DEFAULTS)

    def stats(self):
        try:
            return json.loads((self.runs_dir / LATEST).read_text())
        except (OSError, ValueError):
            return {}

    def __call__(self, request, datastore: Datastore):
        settings = {k: request[k] for k in SETTINGS if request.get(k) is not None}
        run_dir = self.runs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        try:
            items, skipped = labels.training_items(self.model, datastore.datalist(), run_dir / "labels")
        except labels.LabelError as e:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, str(e)) from None
        if not items:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT,
                                      f"{self.model}: no labelled images to train on (save labels with "
                                      "PUT /datastore/label first)" + (f"; not for this model: {skipped}" if skipped else ""))
        train_items, val_items = labels.split(items, float(settings.pop("val_split", finetune.DEFAULTS["val_split"])))
        result = finetune.fine_tune(self.model, self.bundle_dir, train_items, val_items, run_dir, **settings)
        result["skipped"] = skipped
        write_text(self.runs_dir / LATEST, json.dumps(result, indent=2, default=str) + "\n")
        return result
