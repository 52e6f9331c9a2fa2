"""Per-run classification report: predictions CSV, metrics JSON, confusion-matrix and ROC plots (per domain too when
the items come from several), written from the evaluator's collected outputs and what its
`custom.evaluation.ignite_metrics.OperatingPointMetrics` computed."""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events

from custom.data.transforms import source_file
from custom.evaluation.ignite_metrics import OperatingPointMetrics, label_index
from custom.evaluation.metrics import bootstrap_intervals, domain_metrics
from custom.evaluation.plots import plot_confusion_matrix, plot_domain_roc, plot_roc_pr
from custom.io import atomic_path, write_json
from custom.lung.transforms import STATUS_KEY
from custom.models.trained_model import OperatingPoint

logger = logging.getLogger(__name__)


class ClassificationReport:
    """Collects an evaluator's per-image outputs and, at the end of each evaluation run, writes
    `{prefix}_predictions.csv` (file, probability per class, predicted label[, true label][, what the lung step
    did: `custom.lung.transforms.STATUS_KEY`]) and `{prefix}_metrics.json` (the count, lung fallbacks and, where
    labels exist, the metrics) plus PNG plots. It only writes files: the metrics are the evaluator's Ignite metrics
    (`metrics`, which MONAI's workflow computes before any handler runs, so this handler's place in the list does
    not matter), and it puts nothing in `engine.state.metrics`.

    When the items carry more than one ``domain`` value, the predictions CSV gains a `domain` column and a binary
    labelled run adds `domains` to the metrics JSON (`custom.evaluation.metrics.domain_metrics`: per domain the
    metrics at the one applied threshold, intervals, and its own Youden threshold as a diagnostic only) and writes
    `{prefix}_roc_domains.png`; with one domain (or none) the files are exactly those of a plain run.

    Expects decollated outputs with "pred" = (C,) class probabilities and "label" = class index or (C,) one-hot
    (absent for unlabelled inference); the file name comes from the decollated batch's "image"
    (`custom.data.transforms.source_file`: a MetaTensor's meta, "image_meta_dict", or the path string itself when the
    network input is a cached embedding).

    Args:
        output_dir: where the files go.
        class_names: C names, index order.
        prefix: file prefix, e.g. "val" or "test".
        operating_point: decides the predicted labels (the one `metrics` uses, whose threshold it may have just
            picked); None -> 0.5 (argmax for C > 2).
        metrics: the evaluator's `OperatingPointMetrics` (in its `additional_metrics`); None (unlabelled
            inference): the metrics JSON holds the count and lung fallbacks only.
        plots: write the PNG plots.
        predictions_filename: name of the predictions CSV (default `{prefix}_predictions.csv`).
        bootstrap: binary tasks: this many bootstrap replicates for 95 % intervals of accuracy, sensitivity,
            specificity and ROC-AUC, resampling patients (the items' "patient_id") where known, in the metrics JSON
            as "intervals"; 0: none.
    """

    def __init__(self, output_dir: str, class_names: list[str], prefix: str = "val",
                 operating_point: OperatingPoint | None = None, metrics: OperatingPointMetrics | None = None,
                 plots: bool = True, predictions_filename: str | None = None, bootstrap: int = 0) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.prefix = prefix
        self.operating_point = operating_point
        self.metrics = metrics
        self.plots = plots
        self.predictions_filename = predictions_filename or f"{prefix}_predictions.csv"
        self.bootstrap = bootstrap
        self.result: dict = {}
        self._reset()

    def attach(self, engine: Engine) -> None:
        if self.metrics is not None and not self.metrics.is_attached(engine):
            raise ValueError(f"ClassificationReport({self.prefix!r}): its metrics are not attached to the evaluator; "
                             "list them in the evaluator's additional_metrics")
        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self._reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)

    def _reset(self) -> None:
        self.files, self.probs, self.labels, self.patients, self.lung, self.domains = [], [], [], [], [], []

    def _collect(self, engine: Engine) -> None:
        for item, source in zip(engine.state.output, engine.state.batch):
            self.probs.append(item["pred"].detach().float().cpu().numpy().reshape(-1))
            if item.get("label") is not None:
                self.labels.append(label_index(item["label"]))
            self.patients.append(source.get("patient_id"))
            self.lung.append(source.get(STATUS_KEY))
            self.domains.append(source.get("domain"))
            self.files.append(source_file(source))

    @property
    def binary(self) -> bool:
        return len(self.class_names) == 2

    @property
    def multi_domain(self) -> bool:
        return len(set(self.domains)) > 1

    def _complete(self, engine: Engine) -> None:
        probs = np.stack(self.probs) if self.probs else np.zeros((0, len(self.class_names)))
        labels = np.asarray(self.labels) if len(self.labels) == len(self.probs) and self.labels else None
        op = self.operating_point
        predicted = (op or OperatingPoint()).decide(probs)
        self._write_predictions(probs, predicted, labels)
        lung = {"lung_fallbacks": self.lung.count("fallback")} if any(self.lung) else {}
        if labels is None or self.metrics is None:
            self.result = {"n": len(probs), **lung}
            write_json(self.result, self.output_dir / f"{self.prefix}_metrics.json")
            return
        self.result = {**self.metrics.result, **lung}
        positive = op.positive_index if op is not None else 1
        groups = np.asarray(self.patients) if all(p is not None for p in self.patients) else None
        if self.bootstrap and self.binary:
            self.result["intervals"] = bootstrap_intervals(labels == positive, probs[:, positive],
                                                           self.result["threshold"], groups, n_boot=self.bootstrap)
        if self.binary and self.multi_domain:
            self.result["domains"] = domain_metrics(labels == positive, probs[:, positive], self.result["threshold"],
                                                    np.asarray(self.domains, dtype=str), groups, self.bootstrap)
        write_json(self.result, self.output_dir / f"{self.prefix}_metrics.json")
        if self.plots:
            plot_confusion_matrix(self.result["confusion_matrix"], self.class_names,
                                  self.output_dir / f"{self.prefix}_confusion_matrix.png", title=f"{self.prefix} confusion matrix")
            if self.binary and len(np.unique(labels)) == 2:
                threshold = op.threshold if op is not None else None
                plot_roc_pr(labels == positive, probs[:, positive], self.output_dir / f"{self.prefix}_roc.png", threshold)
            if "domains" in self.result:
                plot_domain_roc(labels == positive, probs[:, positive], np.asarray(self.domains, dtype=str),
                                self.output_dir / f"{self.prefix}_roc_domains.png", self.result["threshold"])
        logger.info("%s: %s", self.prefix, {k: round(v, 4) for k, v in self.result.items()
                                             if isinstance(v, float) and not math.isnan(v)})

    def _write_predictions(self, probs: np.ndarray, predicted: np.ndarray, labels: np.ndarray | None) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        with atomic_path(self.output_dir / self.predictions_filename) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            lung, domain = any(self.lung), self.multi_domain
            writer.writerow(["file", *[f"prob_{n}" for n in self.class_names], "predicted_label"]
                            + (["true_label"] if labels is not None else []) + ([STATUS_KEY] if lung else [])
                            + (["domain"] if domain else []))
            for i, file in enumerate(self.files):
                row = [file, *[f"{p:.6f}" for p in probs[i]], self.class_names[predicted[i]]]
                writer.writerow(row + ([self.class_names[labels[i]]] if labels is not None else [])
                                + ([self.lung[i]] if lung else []) + ([self.domains[i]] if domain else []))
