"""Resuming an interrupted training run from the newest periodic checkpoint."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver

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


class ResumeFromLatest:
    """At trainer start, loads `load_dict` from the newest `{prefix}_epoch=N.pt` in `checkpoint_dir`, if any
    (trainer state included, so training continues at epoch N + 1). Does nothing when `enabled` is False."""

    def __init__(self, checkpoint_dir: str, load_dict: dict, prefix: str = "checkpoint", map_location=None,
                 enabled: bool = True) -> None:
        self.checkpoint_dir, self.load_dict, self.prefix = Path(checkpoint_dir), load_dict, prefix
        self.map_location, self.enabled = map_location, enabled

    def latest(self) -> Path | None:
        pattern = re.compile(rf"{re.escape(self.prefix)}_epoch=(\d+)\.pt$")
        found = [(int(m.group(1)), p) for p in self.checkpoint_dir.glob(f"{self.prefix}_epoch=*.pt")
                 if (m := pattern.search(p.name))]
        return max(found)[1] if found else None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        path = self.latest() if self.enabled else None
        if path is None:
            return
        CheckpointLoader(load_path=str(path), load_dict=self.load_dict, map_location=self.map_location)(engine)
        logger.info("resumed from %s at epoch %d", path, engine.state.epoch)
