"""Logs a run's output files (plots, report, metrics) as MLflow artifacts when MONAI's `--tracking mlflow` is on."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

logger = logging.getLogger(__name__)


class MLflowArtifacts:
    """On COMPLETED, logs the files of `output_dir` matching `patterns` into the run of every `MLFlowHandler`
    attached to the same engine; does nothing when none is (tracking off).

    `monai.bundle run --tracking mlflow` appends its `MLFlowHandler` at the end of the engine's handler list, so this
    handler, listed in the config, fires first, while that handler's run is still open. Only `output_dir`'s own files
    are logged (not subfolders), so a tracking store kept inside it (MONAI's default `mlruns.db` / `mlruns/`) is
    never copied into itself.

    Args:
        output_dir: the folder whose files are logged.
        patterns: glob patterns of the files to log.
        end_run: then mark the run FINISHED. For a stand-alone evaluation: MONAI's default settings track it with
            the "validator" handler, which leaves its run open, so the next tracked run would log into it.
    """

    def __init__(self, output_dir: str, patterns: Sequence[str] = ("*.png", "*.html", "*.json", "*.csv"),
                 end_run: bool = False) -> None:
        self.output_dir, self.patterns, self.end_run = Path(output_dir), tuple(patterns), end_run

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self._log)

    def _log(self, engine: Engine) -> None:
        # ignite has no public listing of an engine's handlers; MLFlowHandler registers its bound `complete` here
        trackers = {id(h.__self__): h.__self__ for h, *_ in engine._event_handlers[Events.COMPLETED]
                    if isinstance(getattr(h, "__self__", None), MLFlowHandler)}
        files = sorted({p for pattern in self.patterns for p in self.output_dir.glob(pattern) if p.is_file()})
        for tracker in trackers.values():
            if tracker.cur_run is None:
                continue
            for path in files:
                tracker.client.log_artifact(tracker.cur_run.info.run_id, str(path))
            logger.info("logged %d files of %s to MLflow run %s", len(files), self.output_dir,
                        tracker.cur_run.info.run_id)
            if self.end_run:
                tracker.close()
