"""Ignite metrics of a classification evaluator, for its `key_val_metric` (`ROCAUC`) and `additional_metrics`
(`OperatingPointMetrics`): MONAI's workflow attaches them before any handler, so every handler (checkpoint saver,
early stopping, StatsHandler, `ClassificationReport`) finds them in `engine.state.metrics` whatever its place.

They gather the epoch's outputs and compute with `custom.evaluation.metrics`. Unlike MONAI's `ROCAUC` and Ignite's
`ROC_AUC`, they do not all-gather across ranks: `configs/multi_gpu_train.json` validates on rank 0 alone, where a
collective call would wait for ranks that never evaluate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from ignite.metrics import Metric
from monai.handlers import from_engine

from custom.evaluation.metrics import classification_metrics, roc_auc, select_threshold
from custom.models.trained_model import OperatingPoint



def pred_label(output: list[dict]) -> tuple[list, list]:
    """Decollated outputs -> ([pred, ...], [label, ...]); ([], []) for an iteration without outputs (a batch whose
    files all failed, see `custom.data.skip_empty_batch`)."""
    return from_engine(["pred", "label"])(output) if output else ([], [])


def label_index(label) -> int:
    """A decollated label (class index as a number or 0-d / (1,) tensor, or a (C,) one-hot) -> the class index."""
    label = torch.as_tensor(label).detach().cpu().reshape(-1)
    return int(label.argmax()) if label.numel() > 1 else int(label)


class _EpochOutputs(Metric):
    """Gathers the epoch's (N, C) class probabilities and (N,) class indices from decollated outputs ("pred" = (C,)
    probabilities, "label" = class index or one-hot; `output_transform` gives `([pred, ...], [label, ...])`)."""

    def __init__(self, output_transform: Callable = pred_label, **kwargs) -> None:
        self.probs: list[np.ndarray] = []
        self.labels: list[int] = []
        super().__init__(output_transform, skip_unrolling=True, **kwargs)

    def reset(self) -> None:
        self.probs, self.labels = [], []

    def update(self, output: tuple[Sequence, Sequence]) -> None:
        preds, labels = output
        for pred, label in zip(preds, labels):
            self.probs.append(torch.as_tensor(pred).detach().float().cpu().numpy().reshape(-1))
            self.labels.append(label_index(label))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.probs:
            raise ValueError(f"{type(self).__name__} must have at least one labelled output before it can be computed")
        return np.stack(self.probs), np.asarray(self.labels)


class ROCAUC(_EpochOutputs):
    """ROC-AUC of the epoch (`custom.evaluation.metrics.roc_auc`): binary, that of class `positive_index`;
    multi-class, the macro one-vs-rest mean. NaN where a class is missing."""

    def __init__(self, positive_index: int = 1, output_transform: Callable = pred_label) -> None:
        self.positive_index = positive_index
        super().__init__(output_transform)

    def compute(self) -> float:
        probs, labels = self.arrays()
        return roc_auc(labels, probs, self.positive_index)


class OperatingPointMetrics(_EpochOutputs):
    """The epoch's metrics at the operating point (`custom.evaluation.metrics.classification_metrics`: accuracy,
    precision, recall / sensitivity, specificity, F1, PR-AUC, ECE, loss, n, threshold; multi-class: accuracy, macro
    averages, F1, loss, n), as the dict `{f"{prefix}_{name}": value}` of its scalars that Ignite puts key by key into
    `engine.state.metrics` (ROC-AUC is left to `ROCAUC`, the key metric). The whole result, with the confusion
    matrix, per-class metrics and class names, stays in `result` for `ClassificationReport` to write.

    Args:
        class_names: C names, index order.
        prefix: metric name prefix, e.g. "val" or "test".
        operating_point: binary tasks decide with its threshold; None -> 0.5 (argmax for C > 2).
        select_threshold: if set (a `custom.evaluation.metrics.THRESHOLD_METHODS` rule), binary tasks first choose
            the threshold on this epoch's data and store it in `operating_point` (validation only, never test).
        target_sensitivity: for select_threshold="sensitivity".
    """

    def __init__(self, class_names: Sequence[str], prefix: str = "val", operating_point: OperatingPoint | None = None,
                 select_threshold: str | None = None, target_sensitivity: float = 0.95,
                 output_transform: Callable = pred_label) -> None:
        self.class_names, self.prefix = list(class_names), prefix
        self.operating_point, self.select_threshold = operating_point, select_threshold
        self.target_sensitivity = target_sensitivity
        self.result: dict = {}
        super().__init__(output_transform, metrics_result_mode="flatten")

    def compute(self) -> dict[str, float]:
        probs, labels = self.arrays()
        op, binary = self.operating_point, len(self.class_names) == 2
        if self.select_threshold and binary and op is not None:
            op.threshold = select_threshold(labels == op.positive_index, probs[:, op.positive_index],
                                            self.select_threshold, self.target_sensitivity)
            op.method = self.select_threshold
        threshold = op.threshold if (op is not None and binary) else None
        positive = op.positive_index if op is not None else 1
        self.result = classification_metrics(labels, probs, self.class_names, threshold, positive)
        return {f"{self.prefix}_{name}": value for name, value in self.result.items()
                if name != "roc_auc" and isinstance(value, (int, float)) and not isinstance(value, bool)}
