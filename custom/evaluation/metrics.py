"""Classification metrics and operating-point selection on collected predictions (numpy in, plain dicts out)."""

from __future__ import annotations

import numpy as np
from scipy import sparse
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedKFold

from custom.models.trained_model import is_positive

BOOTSTRAP_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc")
_BOOTSTRAP_CHUNK = 256  # replicates resampled at once: memory stays at a few (chunk, N) float arrays


THRESHOLD_METHODS = ("youden", "sensitivity", "fixed", "platt", "kfold_youden")


def select_threshold(labels: np.ndarray, scores: np.ndarray, method: str = "youden",
                     target_sensitivity: float = 0.95, folds: int = 5) -> float:
    """Decision threshold on the positive-class probability, chosen on validation data.

    Args:
        labels: (N,) 0/1 ground truth.
        scores: (N,) positive-class probability.
        method: "youden" (max sensitivity + specificity - 1), "sensitivity" (highest threshold whose sensitivity
            reaches `target_sensitivity`), "fixed" (0.5; also what temperature scaling then 0.5 decides, since a
            temperature keeps the sign of the logit), "platt" (0.5 after Platt scaling, a logistic fit of the labels
            on the logit of the scores) or "kfold_youden" (mean of the Youden thresholds of the `folds` stratified,
            seeded training parts of the data: a steadier estimate than one Youden threshold).
    """
    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64)
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; use one of {THRESHOLD_METHODS}")
    if method == "fixed" or len(np.unique(labels)) < 2:
        return 0.5
    if method == "platt":
        logit = np.log(np.clip(scores, 1e-7, 1 - 1e-7) / np.clip(1 - scores, 1e-7, 1))
        fit = LogisticRegression(C=1e6).fit(logit[:, None], labels)
        return float(1 / (1 + np.exp(fit.intercept_[0] / fit.coef_[0, 0])))  # logit where a * logit + b = 0
    if method == "kfold_youden":
        splits = StratifiedKFold(min(folds, int(np.bincount(labels).min())), shuffle=True, random_state=0)
        return float(np.mean([select_threshold(labels[part], scores[part]) for part, _ in splits.split(scores, labels)]))
    fpr, tpr, thresholds = skm.roc_curve(labels, scores, drop_intermediate=False)
    thresholds = np.clip(thresholds, 0.0, 1.0)  # sklearn's first threshold is +inf
    if method == "youden":
        best = np.flatnonzero(tpr - fpr == np.max(tpr - fpr))
        # every threshold in (thresholds[last + 1], thresholds[first]] is optimal: take the middle of that interval
        lower = thresholds[best[-1] + 1] if best[-1] + 1 < len(thresholds) else thresholds[best[-1]]
        return float((thresholds[best[0]] + lower) / 2)
    return float(thresholds[np.argmax(tpr >= target_sensitivity)])


def cross_fitted_accuracy(labels: np.ndarray, scores: np.ndarray, method: str, groups: np.ndarray | None = None,
                          folds: int = 5, target_sensitivity: float = 0.95) -> float:
    """Accuracy of a threshold rule on data it was not fitted on: the (N,) validation images are split into `folds`
    parts (by `groups`, e.g. patients, when given), the threshold is picked by `method` on the other parts and
    applied to each part in turn; returns the accuracy over all N. Compares rules on validation alone."""
    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64)
    groups = np.arange(labels.size) if groups is None else np.asarray(groups)
    correct = np.zeros(labels.size, dtype=bool)
    for fit, held in GroupKFold(folds, shuffle=True, random_state=0).split(scores, labels, groups):
        threshold = select_threshold(labels[fit], scores[fit], method, target_sensitivity)
        correct[held] = is_positive(scores[held], threshold) == labels[held]
    return float(correct.mean())


def calibration_bins(labels: np.ndarray, scores: np.ndarray,
                     n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Equal-width bins of (N,) positive-class probabilities in [0, 1] against (N,) 0/1 labels.

    Returns (n_bins,) image counts, mean predicted probability and observed positive fraction per bin (NaN where a
    bin is empty), and the expected calibration error ECE = sum_b n_b / N * |observed_b - predicted_b|.
    """
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    if labels.shape != scores.shape or not labels.size:
        raise ValueError(f"calibration needs equal-length, non-empty labels and scores; "
                         f"got {labels.shape} and {scores.shape}")
    if scores.min() < 0 or scores.max() > 1:
        raise ValueError(f"calibration needs probabilities in [0, 1]; got [{scores.min():.3g}, {scores.max():.3g}]")
    index = np.minimum((scores * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(index, weights=scores, minlength=n_bins) / counts
        observed = np.bincount(index, weights=labels, minlength=n_bins) / counts
    filled = counts > 0
    ece = float(np.sum(counts[filled] / labels.size * np.abs(observed[filled] - predicted[filled])))
    return counts, predicted, observed, ece


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall (sensitivity), specificity, F1, ROC-AUC, PR-AUC, expected calibration error (10
    bins) and the confusion matrix
    [[TN, FP], [FN, TP]] of (N,) 0/1 labels against (N,) positive-class probabilities at `threshold`."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    predicted = is_positive(scores, threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    return {
        "n": int(labels.size),
        "threshold": float(threshold),
        "accuracy": float((tp + tn) / labels.size),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": _auc(labels == 1, scores),
        "pr_auc": float(skm.average_precision_score(labels, scores)) if 0 < tp + fn < labels.size else float("nan"),
        "ece": calibration_bins(labels, scores)[3] if labels.size else float("nan"),
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
        per_class[name] = {
            "precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
            "specificity": _ratio(tn, tn + cm[:, c].sum() - cm[c, c]), "support": int(support[c]),
            "roc_auc": _auc(labels == c, probs[:, c]),
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


def roc_auc(labels: np.ndarray, probs: np.ndarray, positive_index: int = 1) -> float:
    """ROC-AUC of (N,) class indices against (N, C) probabilities, as `classification_metrics` reports it: for C = 2
    that of the `positive_index` class's probability, else the macro one-vs-rest mean (NaN unless every class is
    present)."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] == 2:
        return _auc(labels == positive_index, probs[:, positive_index])
    return float(np.mean([_auc(labels == c, probs[:, c]) for c in range(probs.shape[1])]))


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


def bootstrap_intervals(labels: np.ndarray, scores: np.ndarray, threshold: float, groups: np.ndarray | None = None,
                        n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Percentile bootstrap (1 - alpha) intervals of accuracy, sensitivity, specificity and ROC-AUC of (N,) 0/1
    labels against (N,) positive-class probabilities decided at `threshold` (`is_positive`).

    With (N,) `groups` (patient ids) whole groups are resampled with replacement (cluster bootstrap), else images.
    Returns `{metric: {"estimate", "low", "high", "n_skipped"}, "n_boot", "n_groups"}`; `n_skipped` counts the
    replicates where the metric is undefined (a class missing), left out of the percentiles.
    """
    estimate = binary_metrics(labels, scores, threshold)
    n_groups, (replicates,) = _bootstrap_replicates(labels, [(scores, threshold)], groups, n_boot, seed)
    out = {}
    for name in BOOTSTRAP_METRICS:
        low, high, skipped = _percentile_interval(replicates[name], alpha)
        out[name] = {"estimate": estimate[name], "low": low, "high": high, "n_skipped": skipped}
    return {**out, "n_boot": int(n_boot), "n_groups": n_groups}


def domain_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float, domains: np.ndarray,
                   groups: np.ndarray | None = None, n_boot: int = 0) -> dict:
    """Per domain (sorted names): `binary_metrics` of its (N,) 0/1 labels against (N,) positive-class probabilities
    at the one applied `threshold`, `bootstrap_intervals` when `n_boot` > 0 (resampling `groups` where given), and
    "youden_threshold_diagnostic": the Youden threshold that domain's own labels would pick (`select_threshold`),
    reported to show how far the domains' operating points lie apart, never applied."""
    labels, scores, domains = np.asarray(labels).astype(int), np.asarray(scores, dtype=np.float64), np.asarray(domains)
    out = {}
    for domain in sorted(set(domains.tolist())):
        part = domains == domain
        entry = binary_metrics(labels[part], scores[part], threshold)
        if n_boot:
            entry["intervals"] = bootstrap_intervals(labels[part], scores[part], threshold,
                                                     None if groups is None else np.asarray(groups)[part], n_boot)
        entry["youden_threshold_diagnostic"] = {
            "threshold": select_threshold(labels[part], scores[part]) if 0 < labels[part].sum() < part.sum()
            else float("nan"), "applied": False,
            "note": "picked on this domain's own evaluated labels; a diagnostic, never used for a decision"}
        out[str(domain)] = entry
    return out


def paired_bootstrap(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, threshold_a: float,
                     threshold_b: float, groups: np.ndarray | None = None, n_boot: int = 2000, alpha: float = 0.05,
                     seed: int = 0) -> dict:
    """Paired bootstrap of model B against model A on the same (N,) 0/1 labels: both (N,) score vectors are
    evaluated on the same image or `groups` (patient) resamples, as in `bootstrap_intervals`.

    Returns `{metric: {"a", "b", "difference" (b - a), "low", "high", "p_value", "n_skipped"}, "n_boot",
    "n_groups"}` with a percentile interval of the difference and the two-sided bootstrap p-value
    2 * min(P(diff <= 0), P(diff >= 0)), capped at 1.
    """
    a, b = binary_metrics(labels, scores_a, threshold_a), binary_metrics(labels, scores_b, threshold_b)
    n_groups, (rep_a, rep_b) = _bootstrap_replicates(labels, [(scores_a, threshold_a), (scores_b, threshold_b)],
                                                     groups, n_boot, seed)
    out = {}
    for name in BOOTSTRAP_METRICS:
        diff = rep_b[name] - rep_a[name]
        low, high, skipped = _percentile_interval(diff, alpha)
        defined = diff[~np.isnan(diff)]
        p_value = min(1.0, 2 * min(np.mean(defined <= 0), np.mean(defined >= 0))) if defined.size else float("nan")
        out[name] = {"a": a[name], "b": b[name], "difference": b[name] - a[name], "low": low, "high": high,
                     "p_value": float(p_value), "n_skipped": skipped}
    return {**out, "n_boot": int(n_boot), "n_groups": n_groups}


def _bootstrap_replicates(labels: np.ndarray, models: list[tuple[np.ndarray, float]], groups: np.ndarray | None,
                          n_boot: int, seed: int) -> tuple[int, list[dict[str, np.ndarray]]]:
    """Number of groups and, per `(scores, threshold)` model, the (n_boot,) replicate values of each bootstrap
    metric (NaN where undefined). Every replicate draws G groups with replacement (groups = images without
    `groups`); a replicate's metrics are those of the original rows weighted by how often their group was drawn."""
    labels = np.asarray(labels).astype(int)
    codes = np.arange(labels.size) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
    if labels.size == 0 or n_boot < 1:
        raise ValueError(f"bootstrap needs at least one sample and one replicate, got {labels.size} and {n_boot}")
    if any(np.shape(s) != labels.shape for s, _ in models) or codes.shape != labels.shape:
        raise ValueError(f"labels {labels.shape}, scores {[np.shape(s) for s, _ in models]} and groups "
                         f"{codes.shape} must all be (N,)")
    n_groups = int(codes.max()) + 1
    statistics = [_group_statistics(labels, np.asarray(s, dtype=np.float64), t, codes, n_groups) for s, t in models]
    rng = np.random.default_rng(seed)
    chunks = [[] for _ in models]
    for start in range(0, n_boot, _BOOTSTRAP_CHUNK):
        size = min(_BOOTSTRAP_CHUNK, n_boot - start)
        draws = rng.integers(0, n_groups, (size, n_groups)) + n_groups * np.arange(size)[:, None]
        counts = np.bincount(draws.ravel(), minlength=size * n_groups).reshape(size, n_groups).astype(np.float64)
        for stats, chunk in zip(statistics, chunks):
            chunk.append(_weighted_metrics(counts, stats))
    return n_groups, [{name: np.concatenate([c[name] for c in chunk]) for name in BOOTSTRAP_METRICS}
                      for chunk in chunks]


def _group_statistics(labels: np.ndarray, scores: np.ndarray, threshold: float, codes: np.ndarray,
                      n_groups: int) -> dict:
    """Per group (G,) counts of images, correct decisions, positives, true positives, negatives and true negatives,
    and (G, U) sparse counts of positives / negatives per distinct score (U distinct scores, ascending)."""
    n = labels.size
    predicted, positive, negative = is_positive(scores, threshold), labels == 1, labels == 0
    members = sparse.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(n_groups, n))
    score_bins = sparse.csr_matrix((np.ones(n), (np.arange(n), np.unique(scores, return_inverse=True)[1].ravel())))
    columns = {"n": np.ones(n), "correct": predicted == positive, "positive": positive, "tp": positive & predicted,
               "negative": negative, "tn": negative & ~predicted}
    return {**{name: members @ column.astype(np.float64) for name, column in columns.items()},
            "positive_scores": members @ sparse.diags(positive.astype(np.float64)) @ score_bins,
            "negative_scores": members @ sparse.diags(negative.astype(np.float64)) @ score_bins}


def _weighted_metrics(counts: np.ndarray, stats: dict) -> dict[str, np.ndarray]:
    """(B,) bootstrap metrics from (B, G) group draw counts. ROC-AUC is the Mann-Whitney statistic
    P(positive score > negative score) + P(tie) / 2, which equals scikit-learn's trapezoidal ROC-AUC."""
    with np.errstate(invalid="ignore", divide="ignore"):
        positive_scores = (stats["positive_scores"].T @ counts.T).T  # (B, U) positives per distinct score
        negative_scores = (stats["negative_scores"].T @ counts.T).T
        negatives_below = np.cumsum(negative_scores, axis=1) - negative_scores
        pairs = counts @ stats["positive"] * (counts @ stats["negative"])
        wins = np.sum(positive_scores * (negatives_below + negative_scores / 2), axis=1)
        return {"accuracy": counts @ stats["correct"] / (counts @ stats["n"]),
                "sensitivity": counts @ stats["tp"] / (counts @ stats["positive"]),
                "specificity": counts @ stats["tn"] / (counts @ stats["negative"]),
                "roc_auc": np.where(pairs > 0, wins / pairs, np.nan)}


def _percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float, int]:
    """(alpha / 2, 1 - alpha / 2) percentiles of the defined (non-NaN) replicate values and the NaN count."""
    defined = values[~np.isnan(values)]
    if not defined.size:
        return float("nan"), float("nan"), int(values.size)
    low, high = np.percentile(defined, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high), int(values.size - defined.size)


def _auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC of (N,) bool truth against (N,) scores; NaN unless both classes are present."""
    return float(skm.roc_auc_score(truth, scores)) if 0 < truth.sum() < truth.size else float("nan")


def _ratio(numerator, denominator) -> float:
    return float(numerator / denominator) if denominator else float("nan")
