"""Per-epoch training history (loss, accuracy, validation metrics) as CSV/JSON and a curves PNG."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ignite.engine import Engine, Events

from custom.evaluation.plots import plot_training_curves
from custom.io import atomic_path, write_json


class TrainingHistory:
    """Attach to the trainer after `ValidationHandler`: at each epoch end records the mean training loss, the
    trainer's metrics, the learning rate and the evaluator's scalar metrics, then rewrites `history.csv`,
    `history.json` and `training_curves.png` in `output_dir`. Resumed runs continue the same history."""

    def __init__(self, output_dir: str, evaluator: Engine | None = None, optimizer=None) -> None:
        self.output_dir = Path(output_dir)
        self.evaluator, self.optimizer = evaluator, optimizer
        self.history: list[dict] = []
        self._losses: list[float] = []
        self._first_epoch = True

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: setattr(self, "_first_epoch", True))
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._record)

    def _start_epoch(self, engine: Engine) -> None:
        """Clears the loss buffer; on a run's first epoch keeps the rows of epochs done before a resume."""
        self._losses.clear()
        if self._first_epoch:
            self._first_epoch = False
            path = self.output_dir / "history.json"
            done = json.loads(path.read_text()) if path.exists() else []
            self.history = [h for h in done if h["epoch"] < engine.state.epoch]

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output[0]["loss"] if isinstance(output, list) else output["loss"]
        self._losses.append(float(loss))

    def _record(self, engine: Engine) -> None:
        row = {"epoch": engine.state.epoch, "train_loss": sum(self._losses) / max(len(self._losses), 1)}
        row.update({k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))})
        if self.optimizer is not None:
            row["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.evaluator is not None:
            row.update({k: float(v) for k, v in self.evaluator.state.metrics.items() if isinstance(v, (int, float))})
        self.history.append(row)
        write_json(self.history, self.output_dir / "history.json")
        keys = list(dict.fromkeys(k for h in self.history for k in h))
        with atomic_path(self.output_dir / "history.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        plot_training_curves(self.history, self.output_dir / "training_curves.png")
