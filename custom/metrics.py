"""Classification metrics and operating-point selection on collected predictions (numpy in, plain dicts out)."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def select_threshold(labels: np.ndarray, scores: np.ndarray, method: str = "youden",
                     target_sensitivity: float = 0.95) -> float:
    """Decision threshold on the positive-class probability, chosen on validation data.

    Args:
        labels: (N,) 0/1 ground truth.
        scores: (N,) positive-class probability.
        method: "youden" (max sensitivity + specificity - 1), "sensitivity" (highest threshold whose sensitivity
            reaches `target_sensitivity`) or "fixed" (0.5).
    """
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if method == "fixed" or len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = skm.roc_curve(labels, scores, drop_intermediate=False)
    thresholds = np.clip(thresholds, 0.0, 1.0)  # sklearn's first threshold is +inf
    if method == "youden":
        best = np.flatnonzero(tpr - fpr == np.max(tpr - fpr))
        # every threshold in (thresholds[last + 1], thresholds[first]] is optimal: take the middle of that interval
        lower = thresholds[best[-1] + 1] if best[-1] + 1 < len(thresholds) else thresholds[best[-1]]
        return float((thresholds[best[0]] + lower) / 2)
    if method == "sensitivity":
        return float(thresholds[np.argmax(tpr >= target_sensitivity)])
    raise ValueError(f"unknown threshold method {method!r}; use 'youden', 'sensitivity' or 'fixed'")


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall (sensitivity), specificity, F1, ROC-AUC, PR-AUC and the confusion matrix
    [[TN, FP], [FN, TP]] of (N,) 0/1 labels against (N,) positive-class probabilities at `threshold`."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    predicted = (scores >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    both_classes = len(np.unique(labels)) == 2
    return {
        "n": int(labels.size),
        "threshold": float(threshold),
        "accuracy": float((tp + tn) / labels.size),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": float(skm.roc_auc_score(labels, scores)) if both_classes else float("nan"),
        "pr_auc": float(skm.average_precision_score(labels, scores)) if both_classes else float("nan"),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def multiclass_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str],
                       predicted: np.ndarray | None = None) -> dict:
    """Multi-class metrics of (N,) class indices against (N, C) probabilities: accuracy, per-class precision /
    recall / specificity / F1 / one-vs-rest ROC-AUC / support, their macro averages ("f1" = macro F1, "roc_auc" =
    macro one-vs-rest ROC-AUC, NaN unless every class is present) and the C x C confusion matrix (rows = truth,
    columns = prediction). The decision is argmax unless (N,) `predicted` class indices are given."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    classes = list(range(len(class_names)))
    predicted = probs.argmax(1) if predicted is None else np.asarray(predicted).astype(int)
    cm = skm.confusion_matrix(labels, predicted, labels=classes)
    precision, recall, f1, support = skm.precision_recall_fscore_support(labels, predicted, labels=classes, zero_division=0)
    per_class = {}
    for c, name in enumerate(class_names):
        tn = cm.sum() - cm[c].sum() - cm[:, c].sum() + cm[c, c]
        one_vs_rest = labels == c
        auc = skm.roc_auc_score(one_vs_rest, probs[:, c]) if 0 < one_vs_rest.sum() < labels.size else float("nan")
        per_class[name] = {
            "precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
            "specificity": _ratio(tn, tn + cm[:, c].sum() - cm[c, c]), "support": int(support[c]),
            "roc_auc": float(auc),
        }
    macro = {f"macro_{key}": float(np.mean([per_class[name][key] for name in class_names]))
             for key in ("precision", "recall", "specificity")}
    return {
        "n": int(labels.size),
        "accuracy": float((predicted == labels).mean()),
        **macro,
        "f1": float(np.mean(f1)),
        "roc_auc": float(np.mean([per_class[name]["roc_auc"] for name in class_names])),  # = sklearn's macro OvR
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
    }


def classification_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str],
                           threshold: float | None = None, positive_index: int = 1) -> dict:
    """Binary metrics at `threshold` when there are two classes (positive = `positive_index`), else multi-class.
    Adds the mean cross-entropy ("loss") of the probabilities. probs: (N, C)."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    if len(class_names) == 2:
        out = binary_metrics(labels == positive_index, probs[:, positive_index], 0.5 if threshold is None else threshold)
    else:
        out = multiclass_metrics(labels, probs, class_names)
    out["loss"] = float(-np.mean(np.log(np.clip(probs[np.arange(labels.size), labels], 1e-7, 1.0))))
    out["class_names"] = list(class_names)
    return out


def _ratio(numerator, denominator) -> float:
    return float(numerator / denominator) if denominator else float("nan")
