"""xray_seg.shared.training and runs: run folders, resume with changed settings, the best
model kept across a resume, a validation after the last epoch, initial weights for
fine-tuning, and where each bundle's training writes by default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from xray_seg.shared import runs
from xray_seg.shared.paths import BUNDLES, RUNS
from xray_seg.shared.resume import latest_checkpoint
from xray_seg.shared.training import BEST_MODEL, TrainingRun

BUNDLE_NAMES = ("cxr_lungs", "cxr_anatomy", "xray_tomography")


class ScriptedValidator(Engine):
    """A validator that scores trainer epoch e with ``scores[e]``, run as MONAI's
    evaluators are: ``run(global_epoch)`` leaves ``state.epoch == global_epoch``."""

    def __init__(self, scores: dict[int, float]) -> None:
        super().__init__(lambda engine, batch: None)
        self.validated: list[int] = []
        self.add_event_handler(Events.EPOCH_COMPLETED, self._score)
        self.scores = scores

    def _score(self, engine: Engine) -> None:
        engine.state.metrics["val_mean_dice"] = self.scores[engine.state.epoch]
        self.validated.append(engine.state.epoch)

    def run(self, global_epoch: int = 1) -> None:  # type: ignore[override]
        self.state.max_epochs, self.state.epoch, self.state.iteration = global_epoch, global_epoch - 1, 0
        super().run([0])


class Crash(RuntimeError):
    pass


def training(run_dir: Path, scores: dict[int, float], max_epochs: int, crash_after: int | None = None,
             val_interval: int = 1, settings: dict | None = None,
             resume: bool = True, init_weights: str | None = None, seen: list[float] | None = None,
             wrap: bool = False) -> tuple[torch.nn.Linear, ScriptedValidator]:
    """A tiny run whose network weight equals the epoch it was trained in, so the best
    model file tells which epoch it came from. ``seen`` collects the weight each epoch
    starts from. ``wrap``: the run sees the network inside ``DataParallel``, as a torchrun
    run sees it inside ``DistributedDataParallel``."""
    torch.manual_seed(0)
    net = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)

    def step(engine: Engine, batch: int) -> None:
        if seen is not None and engine.state.iteration % 2 == 1:  # the epoch's first of two iterations
            seen.append(net.weight.item())
        net.weight.data.fill_(float(engine.state.epoch))

    trainer, validator = Engine(step), ScriptedValidator(scores)

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine: Engine) -> None:  # as MONAI's ValidationHandler, attached before the run's handlers
        if engine.state.epoch % val_interval == 0:
            validator.run(engine.state.epoch)

    TrainingRun(str(run_dir), torch.nn.DataParallel(net) if wrap else net, optimizer, scheduler, settings or {"num_epochs": max_epochs},
                resume=resume, early_stop_patience=10, init_weights=init_weights).attach(trainer, validator)
    if crash_after is not None:
        @trainer.on(Events.EPOCH_COMPLETED(once=crash_after))
        def crash(engine: Engine) -> None:  # after the resume checkpoint: a kill at the epoch's end
            raise Crash

    try:
        trainer.run([0, 1], max_epochs=max_epochs)
    except Crash:
        pass
    return net, validator


def best_epoch(run_dir: Path) -> float:
    return float(torch.load(run_dir / BEST_MODEL, weights_only=True)["weight"].item())  # the state dict itself, as MONAI saves one model


def test_best_model_keeps_its_score_across_a_resume(tmp_path: Path) -> None:
    scores = {1: 0.80, 2: 0.90, 3: 0.50, 4: 0.60}
    training(tmp_path, scores, max_epochs=4, crash_after=2)
    assert best_epoch(tmp_path) == 2.0 and latest_checkpoint(str(tmp_path)).endswith("epoch=2.pt")
    _, validator = training(tmp_path, scores, max_epochs=4)
    assert validator.validated == [3, 4]  # resumed after epoch 2
    # Epochs 3 and 4 scored below epoch 2: the best model is still epoch 2's.
    assert best_epoch(tmp_path) == 2.0
    assert [p.name for p in tmp_path.glob("resume_*")] == ["resume_checkpoint_epoch=4.pt"]


def test_without_the_kept_score_a_worse_epoch_would_win(tmp_path: Path) -> None:
    """The control: starting the same folder over (resume false) forgets the old score, and
    epoch 1's worse model replaces epoch 2's; so the test above tells kept from fresh."""
    scores = {1: 0.80, 2: 0.90, 3: 0.50, 4: 0.60}
    training(tmp_path, scores, max_epochs=4, crash_after=2)
    training(tmp_path, scores, max_epochs=1, resume=False, settings={"num_epochs": 4})
    assert best_epoch(tmp_path) == 1.0


def test_resume_with_other_settings_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scores = {1: 0.5, 2: 0.6, 3: 0.7}
    training(tmp_path, scores, max_epochs=3, crash_after=1, settings={"num_epochs": 3, "learning_rate": 1e-3})
    files = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_info:
        training(tmp_path, scores, max_epochs=3, settings={"num_epochs": 3, "learning_rate": 1e-4})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and "learning_rate: was 0.001, now 0.0001" in err and str(tmp_path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    recorded = json.loads((tmp_path / runs.RUN_FILE).read_text())["settings"]
    assert recorded["learning_rate"] == 1e-3 and recorded["network"]


def test_a_run_ends_with_a_validation_whatever_the_interval(tmp_path: Path) -> None:
    _, validator = training(tmp_path, {1: 0.1, 2: 0.2, 3: 0.3}, max_epochs=3, val_interval=2)
    assert validator.validated == [2, 3]
    assert best_epoch(tmp_path) == 3.0


def test_training_starts_from_the_initial_weights_and_a_resume_wins(tmp_path: Path) -> None:
    init = tmp_path / "pretrained.pt"
    torch.save({"model": {"weight": torch.tensor([[42.0]])}}, init)  # as MONAI's CheckpointSaver writes one model
    run, scores = tmp_path / "run", {1: 0.5, 2: 0.6, 3: 0.7}
    seen: list[float] = []
    training(run, scores, max_epochs=3, crash_after=1, init_weights=str(init), seen=seen)
    assert seen == [42.0]  # epoch 1 started from the given weights, not the seeded random ones
    seen.clear()
    training(run, scores, max_epochs=3, init_weights=str(init), seen=seen)
    assert seen == [1.0, 2.0]  # resumed after epoch 1 from its checkpoint, not from init_weights again


def test_a_wrapped_network_fine_tunes_from_the_plain_weights_runs_save(tmp_path: Path) -> None:
    """Under torchrun the network is wrapped in DistributedDataParallel; the weights file of
    a run (or the shipped model) holds the inner module's keys, without "module.", and is
    accepted and loaded into it."""
    init = tmp_path / "pretrained.pt"
    torch.save({"weight": torch.tensor([[42.0]])}, init)
    seen: list[float] = []
    training(tmp_path / "run", {1: 0.5}, max_epochs=1, init_weights=str(init), seen=seen, wrap=True)
    assert seen == [42.0]
    assert list(torch.load(tmp_path / "run" / BEST_MODEL, weights_only=True)) == ["weight"]


@pytest.mark.parametrize("content,problem", [
    (None, "not found"),
    (b"not a checkpoint", "cannot be read"),
    ({"weight": torch.zeros(2, 2)}, "weight has shape (2, 2), the network needs (1, 1)"),
    ({"model": {"conv.weight": torch.zeros(1)}}, "1 of the network's tensors missing, 1 unknown ones"),
])
def test_unusable_initial_weights_are_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture, content: object, problem: str) -> None:
    init = tmp_path / "init.pt"
    if isinstance(content, bytes):
        init.write_bytes(content)
    elif content is not None:
        torch.save(content, init)
    with pytest.raises(SystemExit) as exit_info:
        training(tmp_path / "run", {1: 0.5}, max_epochs=1, init_weights=str(init))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and err.count("\n") == 1, err
    assert str(init) in err and "init_weights" in err and problem in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_every_bundle_can_fine_tune_from_given_weights(bundle: str, tmp_path: Path) -> None:
    """`--init_weights` reaches the training run, and a resume must keep it."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.yaml"))
    parser["bundle_root"] = str(BUNDLES / bundle)
    parser["device"] = "$torch.device('cpu')"
    parser["init_weights"] = str(tmp_path / "pretrained.pt")
    run = parser.get_parsed_content("training_run")
    assert run.init_weights == str(tmp_path / "pretrained.pt")
    assert run.full_settings()["init_weights"] == str((tmp_path / "pretrained.pt").resolve())


def test_evaluation_finds_the_curves_of_the_models_own_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / runs.LOGS).mkdir(parents=True)
    (run / runs.RUN_FILE).write_text("{}")
    assert runs.logs_of(str(run / "model.pt")) == str(run / runs.LOGS)
    assert runs.eval_dir(str(run / "model.pt"), str(BUNDLES / "cxr_lungs")) == str(run / "eval")
    shipped = BUNDLES / "cxr_lungs" / "models" / "model.pt"
    assert runs.logs_of(str(shipped)) is None
    assert runs.eval_dir(str(shipped), str(BUNDLES / "cxr_lungs")) == str(RUNS / "cxr_lungs" / "eval")


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_training_writes_into_a_run_folder_by_default(bundle: str) -> None:
    """Never into bundle/*/models: the run folder is runs/<bundle>/<start time>."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / bundle / "configs" / "train.yaml"))
    parser["bundle_root"] = str(BUNDLES / bundle)
    run_dir = Path(parser.get_parsed_content("run_dir"))
    assert run_dir.parent == RUNS / bundle and run_dir.name[:2] == "20"
    for key in ("ckpt_dir", "log_dir", "output_dir"):
        assert Path(parser.get_parsed_content(key)).is_relative_to(run_dir), key


def test_run_names_are_plain_folder_names() -> None:
    with pytest.raises(ValueError, match="plain folder name"):
        runs.run_dir(str(BUNDLES / "cxr_lungs"), "../escape")
