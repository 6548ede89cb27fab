"""The MONAI Label app: three bundles' infer and fine-tune tasks, two strategies, a
checked local datastore. MONAI Label loads it from ``<work_dir>/app/main.py`` (written by
``server.prepare_app``); its bundle copies are in ``<work_dir>/bundles``."""

from __future__ import annotations

from pathlib import Path

from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.random import Random

import xray_seg
from xray_seg.label import workspace
from xray_seg.label.datastore import CheckedDatastore
from xray_seg.label.images import EXTENSIONS
from xray_seg.label.infer import ChestInfer, TomographyInfer
from xray_seg.label.strategies import TTAUncertainty
from xray_seg.label.train import FineTuneTask


class XraySegApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.work_dir = Path(app_dir).resolve().parent
        self.bundles = workspace.prepare(self.work_dir)  # keeps existing copies (fine-tuned models)
        super().__init__(
            app_dir=app_dir, studies=studies, conf=conf, name="xray-seg",
            description="Chest radiograph (lungs, anatomy) and X-ray tomography (phases) segmentation",
            version=getattr(xray_seg, "__version__", "0.1.0"),
        )

    def init_datastore(self):
        return CheckedDatastore(
            self.studies, extensions=list(EXTENSIONS), auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self):
        return {
            "cxr_lungs": ChestInfer("cxr_lungs", self.bundles["cxr_lungs"]),
            "cxr_anatomy": ChestInfer("cxr_anatomy", self.bundles["cxr_anatomy"]),
            "xray_tomography": TomographyInfer("xray_tomography", self.bundles["xray_tomography"]),
        }

    def init_trainers(self):
        runs = self.work_dir / "runs"
        return {name: FineTuneTask(name, path, runs) for name, path in self.bundles.items()}

    def init_strategies(self):
        return {"random": Random(), "tta": TTAUncertainty(self.bundles)}
