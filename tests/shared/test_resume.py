"""Resume checkpoints: the newest is found, the older ones are pruned."""

from __future__ import annotations

from pathlib import Path

from ignite.engine import Engine, Events

from xray_seg.shared.resume import PruneOlderCheckpoints, latest_checkpoint


def test_latest_checkpoint_orders_by_epoch_number_not_name(tmp_path: Path) -> None:
    for epoch in (2, 9, 10):
        (tmp_path / f"resume_checkpoint_epoch={epoch}.pt").write_bytes(b"")
    (tmp_path / "model.pt").write_bytes(b"")
    assert latest_checkpoint(str(tmp_path)).endswith("resume_checkpoint_epoch=10.pt")
    assert latest_checkpoint(str(tmp_path / "none")) is None


def test_pruner_keeps_only_the_newest_after_each_epoch(tmp_path: Path) -> None:
    (tmp_path / "resume_checkpoint_epoch=9.pt").write_bytes(b"")  # left by the run that was killed
    (tmp_path / "model.pt").write_bytes(b"")

    def save(engine: Engine) -> None:  # stands in for the CheckpointSaver attached before the pruner
        (tmp_path / f"resume_checkpoint_epoch={10 + engine.state.epoch}.pt").write_bytes(b"")

    engine = Engine(lambda e, batch: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, save)
    PruneOlderCheckpoints(str(tmp_path)).attach(engine)
    engine.run([0], max_epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "resume_checkpoint_epoch=12.pt"]
