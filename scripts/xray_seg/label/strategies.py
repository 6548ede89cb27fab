"""Active-learning strategies: MONAI Label's ``random``, and ``tta`` (most uncertain first)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.strategy import Strategy

from xray_seg.label import uncertainty, workspace
from xray_seg.label.images import dimension

logger = logging.getLogger(__name__)


class TTAUncertainty(Strategy):
    """The unlabelled image the model disagrees with itself most about under test-time
    augmentation (``xray_seg.label.uncertainty``).

    Request parameters: ``model`` (default: ``cxr_lungs`` when there are unlabelled 2D
    images, else ``xray_tomography``); ``max_candidates`` (default 16): at most this many
    unlabelled images, drawn at random, are scored per request, so the time per request
    stays bounded on large datastores. The answer lists the scores it ranked by.
    """

    def __init__(self, bundles: dict[str, Path], max_candidates: int = 16) -> None:
        super().__init__("Test-time-augmentation disagreement: the image the model is least sure about")
        self.bundles, self.max_candidates = bundles, max_candidates

    def __call__(self, request, datastore: Datastore):
        unlabelled = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        by_dim: dict[int, list[str]] = {2: [], 3: []}
        for image_id in unlabelled:
            dim = dimension(datastore.get_image_uri(image_id))
            if dim in by_dim:
                by_dim[dim].append(image_id)
        model = request.get("model") or ("cxr_lungs" if by_dim[2] else "xray_tomography")
        if model not in self.bundles:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT,
                                      f"unknown model {model!r}; expected one of {', '.join(self.bundles)}")
        candidates = sorted(by_dim[workspace.DIMENSION[model]])
        if not candidates:
            return None
        limit = int(request.get("max_candidates", self.max_candidates))
        if len(candidates) > limit:
            candidates = sorted(random.sample(candidates, limit))
        scores = self.score(model, {i: datastore.get_image_uri(i) for i in candidates})
        if not scores:
            return None
        ranking = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
        best, score = ranking[0]
        logger.info("tta (%s): %s scores %.4f (of %d)", model, best, score, len(ranking))
        return {"id": best, "score": score, "model": model, "ranking": [[i, s] for i, s in ranking]}

    def score(self, model: str, paths: dict[str, str]) -> dict[str, float]:
        bundle = self.bundles[model]
        parser = workspace.inference_config(bundle)
        network = workspace.load_network(bundle)
        inferer = parser.get_parsed_content("inferer")
        scores = {}
        for image_id, path in paths.items():
            try:
                if model == "xray_tomography":
                    inputs = uncertainty.volume_block(path)
                    augs = uncertainty.augmentations_3d()
                else:
                    inputs = parser.get_parsed_content("preprocessing")({"image": path})["image"][None]
                    augs = uncertainty.augmentations_2d()
                scores[image_id] = uncertainty.disagreement(network, inputs.float(), inferer, augs,
                                                            sigmoid=model == "cxr_anatomy")
            except Exception as e:  # an unreadable image is skipped, not fatal for the ranking
                logger.warning("tta: %s skipped: %s", image_id, e)
        return scores
