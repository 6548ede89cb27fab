"""What every bundle's training run does around its trainer and validator.

The three ``train.yaml`` files used to repeat this wiring block by block (resume
saver and loader, pruning, best-model saver, early stop, time limit, initial
weights). It is one object now, built from MONAI and ignite parts, that each
config creates and attaches in ``initialize``:

- the run folder and its ``run.json`` (``xray_seg.shared.runs``): a resume with
  other settings is refused;
- the best model by the validation metric, ``<ckpt_dir>/model.pt`` (ignite
  ``Checkpoint``), whose score list is part of the resume state, so a worse epoch
  after a kill cannot replace the best model;
- a resume checkpoint every epoch in the run folder (ignite ``Checkpoint``, MONAI
  ``CheckpointLoader`` with ``weights_only`` loading) holding the network,
  optimiser, schedule, trainer, early-stopping and best-model state; older ones
  are pruned only after the new one is written;
- every checkpoint written to a temporary file and renamed, so a kill while
  writing never leaves a truncated or missing checkpoint;
- early stopping (ignite ``EarlyStopping``, whose state is resumed too);
- a validation after the last epoch when ``val_interval`` skipped it, so every
  run ends with a scored model;
- optional initial weights (fine-tuning) and an optional time limit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, EarlyStopping, TimeLimit
from monai.handlers import CheckpointLoader, stopping_fn_from_metric

from xray_seg.shared import runs
from xray_seg.shared.errors import UserError, or_exit
from xray_seg.shared.resume import PruneOlderCheckpoints, latest_checkpoint

logger = logging.getLogger(__name__)

BEST_MODEL = "model.pt"
RESUME = "resume"
PATH_SETTINGS = ("datalist", "dataset_dir", "init_weights")


class ReplacingDiskSaver(DiskSaver):
    """Keeps the best model under one file name, each new best replacing the old one
    atomically. ignite removes the previous best before saving the next; with one
    fixed name that removal is unnecessary and would open a window with no model."""

    def remove(self, filename: str) -> None:
        if filename != BEST_MODEL:
            super().remove(filename)


class TrainingRun:
    """Run folder, resume, best model, early stop and time limit of one training run.

    ``settings``: what must not change across a resume (epochs, learning rate,
    data); the network's architecture and the manifest's content are added here.
    ``ckpt_dir``: where the best model goes (default: the run folder).
    """

    def __init__(
        self,
        run_dir: str,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any,
        settings: dict[str, Any],
        device: torch.device | str = "cpu",
        ckpt_dir: str | None = None,
        resume: bool = True,
        key_metric: str = "val_mean_dice",
        early_stop_patience: int | None = None,
        init_weights: str | None = None,
        time_limit_s: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else self.run_dir
        self.network, self.optimizer, self.lr_scheduler = network, optimizer, lr_scheduler
        self.settings = dict(settings)
        self.device, self.resume, self.key_metric = device, resume, key_metric
        self.early_stop_patience, self.init_weights, self.time_limit_s = early_stop_patience, init_weights, time_limit_s

    def full_settings(self) -> dict[str, Any]:
        settings = dict(self.settings, network=runs.text_digest(repr(self.network)))
        for key in PATH_SETTINGS:  # the same files, whatever the working directory
            if settings.get(key):
                settings[key] = str(Path(settings[key]).resolve())
        datalist = settings.get("datalist")
        if datalist and Path(datalist).is_file():
            settings["datalist_sha256"] = runs.file_digest(datalist)
        return settings

    def attach(self, trainer: Engine, evaluator: Engine) -> None:
        or_exit(lambda: self._attach(trainer, evaluator))

    def _attach(self, trainer: Engine, evaluator: Engine) -> None:
        if self.ckpt_dir.exists() and not self.ckpt_dir.is_dir():
            raise UserError(f"{self.ckpt_dir}: checkpoint folder is a file")
        resume_from = latest_checkpoint(str(self.run_dir)) if self.resume else None
        if self.init_weights and resume_from is None:
            self._check_init_weights()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rank0 = idist.get_rank() == 0  # checkpoints and run.json: rank 0 of a distributed run writes
        runs.record_settings(str(self.run_dir), self.full_settings(), resuming=resume_from is not None, write=rank0)

        # ignite's Checkpoint with atomic disk writes. MONAI's CheckpointSaver writes in place
        # (atomic=False) and, for a fixed file name, deletes the old best model before
        # writing the new one: a kill in between would lose the best model.
        best_model = Checkpoint(
            {"model": self.network}, ReplacingDiskSaver(str(self.ckpt_dir), require_empty=False, atomic=True),
            score_function=stopping_fn_from_metric(self.key_metric), score_name=self.key_metric, n_saved=1,
            filename_pattern=BEST_MODEL,
        )
        evaluator.add_event_handler(Events.COMPLETED, best_model)
        early_stop = None
        if self.early_stop_patience:
            early_stop = EarlyStopping(patience=self.early_stop_patience, threshold=1e-4, trainer=trainer,
                                       score_function=stopping_fn_from_metric(self.key_metric))
            evaluator.add_event_handler(Events.COMPLETED, early_stop)

        state = {"model": self.network, "optimizer": self.optimizer, "lr_scheduler": self.lr_scheduler,
                 "trainer": trainer, "best_model": best_model,
                 **({"early_stop": early_stop} if early_stop is not None else {})}
        # Every epoch; n_saved=None because the pruner deletes older files only after the new one exists.
        resume_saver = Checkpoint(
            state, DiskSaver(str(self.run_dir), require_empty=False, atomic=True), filename_prefix=RESUME,
            n_saved=None, global_step_transform=lambda engine, _: engine.state.epoch,
            filename_pattern="{filename_prefix}_checkpoint_epoch={global_step}.{ext}",
        )
        trainer.add_event_handler(Events.EPOCH_COMPLETED, resume_saver)
        if rank0:
            PruneOlderCheckpoints(str(self.run_dir), prefix=RESUME).attach(trainer)

        if self.init_weights and resume_from is None:
            CheckpointLoader(self.init_weights, {"model": self.network}, map_location=self.device).attach(trainer)
        if resume_from is not None:
            logger.info("resuming %s from %s", self.run_dir, resume_from)
            CheckpointLoader(resume_from, state, map_location=self.device).attach(trainer)
        else:
            logger.info("run folder %s (resume after a kill with the same command and this run name)", self.run_dir)

        if self.time_limit_s is not None:
            trainer.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(self.time_limit_s))
        trainer.add_event_handler(Events.COMPLETED, lambda engine: self._validate_last_epoch(engine, evaluator))

    def _check_init_weights(self) -> None:
        """One ``ERROR:`` line, before the run folder is made, for initial weights that are
        missing, unreadable or of another network; MONAI's loader would otherwise fail with a
        traceback once training has started."""
        path = self.init_weights
        if not Path(path).is_file():
            raise UserError(f"{path}: initial weights (init_weights) not found")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle, zip and weights_only refusals all land here
            raise UserError(f"{path}: initial weights (init_weights) cannot be read as a weights-only "
                            f"checkpoint ({type(error).__name__})") from None
        if isinstance(saved, dict) and set(saved) == {"model"}:  # {"model": state}, as MONAI's loader accepts
            saved = saved["model"]
        got = {k: tuple(v.shape) for k, v in saved.items() if isinstance(v, torch.Tensor)} if isinstance(saved, dict) else {}
        # ignite's Checkpoint and MONAI's CheckpointLoader both unwrap DistributedDataParallel
        # (torchrun training) and DataParallel: the weights are the inner module's.
        network = self.network
        if isinstance(network, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            network = network.module
        expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
        if got != expected:
            wrong = sorted(k for k in expected if k in got and got[k] != expected[k])
            detail = (f"{wrong[0]} has shape {got[wrong[0]]}, the network needs {expected[wrong[0]]}" if wrong else
                      f"{len(set(expected) - set(got))} of the network's tensors missing, "
                      f"{len(set(got) - set(expected))} unknown ones")
            raise UserError(f"{path}: initial weights (init_weights) do not fit this bundle's network: {detail}")

    @staticmethod
    def _validate_last_epoch(trainer: Engine, evaluator: Engine) -> None:
        # MONAI's evaluator records the trainer epoch it last validated.
        if evaluator.state.epoch != trainer.state.epoch:
            evaluator.run(trainer.state.epoch)
