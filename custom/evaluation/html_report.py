"""Writes the run's self-contained `report.html` (see `custom.evaluation.report_html`) when an evaluation run completes."""

from __future__ import annotations

from ignite.engine import Engine, Events

from custom.evaluation.report_html import build_report


class HTMLReport:
    """Attach to an evaluator with a `ClassificationReport`, anywhere in the handler list: on COMPLETED (after every
    EPOCH_COMPLETED handler, so once the report's files are written) builds `output_dir/report.html` from the run's
    metrics, predictions and plots, plus the training run's plots from `train_dir` (None: left out)."""

    def __init__(self, output_dir: str, train_dir: str | None = None, prefix: str | None = None) -> None:
        self.output_dir, self.train_dir, self.prefix = output_dir, train_dir, prefix

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, lambda _: build_report(self.output_dir, self.train_dir, self.prefix))
