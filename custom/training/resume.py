"""Resuming an interrupted training run from the newest periodic checkpoint, only when that checkpoint belongs to the
same run (same config hash and datalist hash in its provenance)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver

from custom.models.provenance import Provenance
from custom.models.trained_model import load_checkpoint

logger = logging.getLogger(__name__)


class KeyMetricState:
    """Checkpointable view of a key-metric `CheckpointSaver`'s best-score record, so that a resumed run does not
    overwrite the best model with a worse one."""

    def __init__(self, saver: CheckpointSaver) -> None:
        self.saver = saver

    def state_dict(self) -> dict:
        return self.saver._key_metric_checkpoint.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.saver.load_state_dict(state)


def latest_checkpoint(checkpoint_dir: str | Path, prefix: str = "checkpoint") -> Path | None:
    """The newest `{prefix}_epoch=N.pt` in `checkpoint_dir` (largest N), or None."""
    pattern = re.compile(rf"{re.escape(prefix)}_epoch=(\d+)\.pt$")
    found = [(int(m.group(1)), p) for p in Path(checkpoint_dir).glob(f"{prefix}_epoch=*.pt") if (m := pattern.search(p.name))]
    return max(found)[1] if found else None


def prepare_checkpoint_dir(checkpoint_dir: str | Path, provenance: Provenance, resume: bool = True,
                           prefix: str = "checkpoint") -> None:
    """Before training. resume=True: a checkpoint to resume from in `checkpoint_dir` must come from the same run
    (config hash and datalist hash of its provenance equal `provenance`'s), else raises, naming what differs and the
    way out. A newest checkpoint that cannot be read (truncated by a kill during its write) is renamed
    `<name>.corrupt`, with a warning, and the one before it is used. resume=False: removes the old run's
    `{prefix}_epoch=N.pt` files so that none is resumed later."""
    path = latest_checkpoint(checkpoint_dir, prefix)
    if path is None:
        return
    if not resume:
        for old in Path(checkpoint_dir).glob(f"{prefix}_epoch=*.pt"):
            old.unlink(missing_ok=True)
            logger.info("--resume False: removed %s", old)
        return
    saved = None
    while path is not None:
        try:
            saved = load_checkpoint(path).get("provenance")
            break
        except ValueError as err:
            if "cannot read checkpoint" not in str(err):
                raise
            # a run killed while writing it (CheckpointSaver does not write atomically): set it aside, use the
            # one before it
            aside = path.with_name(path.name + ".corrupt")
            path.replace(aside)
            logger.warning("%s\nmoved to %s; resuming from the checkpoint before it, if any", err, aside)
            path = latest_checkpoint(checkpoint_dir, prefix)
    if path is None:
        return
    differs = provenance.mismatch(saved) if saved is not None else ["provenance"]
    if differs:
        what = " and ".join({"config_hash": "config", "datalist_hash": "data (datalist)", "provenance": "provenance "
                             "(none recorded)"}[d] for d in differs)
        raise RuntimeError(
            f"{path}: will not resume from this checkpoint: its {what} differ(s) from this run's. Start over with "
            f"`--resume False` (replaces the checkpoints in {checkpoint_dir}) or give this run another `--ckpt_dir`.")


class ResumeFromLatest:
    """At trainer start, loads `load_dict` from the newest `{prefix}_epoch=N.pt` in `checkpoint_dir`, if any
    (trainer state included, so training continues at epoch N + 1). Does nothing when `enabled` is False. Check the
    checkpoint with `prepare_checkpoint_dir` first, before any data is loaded."""

    def __init__(self, checkpoint_dir: str, load_dict: dict, prefix: str = "checkpoint", map_location=None,
                 enabled: bool = True) -> None:
        self.checkpoint_dir, self.load_dict, self.prefix = Path(checkpoint_dir), load_dict, prefix
        self.map_location, self.enabled = map_location, enabled

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        path = latest_checkpoint(self.checkpoint_dir, self.prefix) if self.enabled else None
        if path is None:
            return
        CheckpointLoader(load_path=str(path), load_dict=self.load_dict, map_location=self.map_location)(engine)
        logger.info("resumed from %s at epoch %d", path, engine.state.epoch)
