"""Tests for custom.metrics against hand-computed confusion counts and scikit-learn / torch references."""

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from custom.metrics import binary_metrics, classification_metrics, multiclass_metrics, select_threshold

# 4 negatives, 6 positives. At threshold 0.5: TN = 3 (0.1, 0.4, 0.2), FP = 1 (0.6), FN = 2 (0.3, 0.45), TP = 4.
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
SCORES = np.array([0.1, 0.4, 0.6, 0.2, 0.9, 0.8, 0.3, 0.7, 0.55, 0.45])


def sensitivity_at(labels, scores, t):
    return float(np.mean(scores[labels == 1] >= t))


def youden_at(labels, scores, t):
    return sensitivity_at(labels, scores, t) - float(np.mean(scores[labels == 0] >= t))


# ---------------------------------------------------------------------------------------------------- binary
def test_binary_metrics_hand_computed():
    m = binary_metrics(LABELS, SCORES, threshold=0.5)
    assert m["n"] == 10
    assert m["threshold"] == 0.5
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]  # [[TN, FP], [FN, TP]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["recall"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6))
    # 20 of the 24 (positive, negative) pairs are ranked correctly
    assert m["roc_auc"] == pytest.approx(20 / 24)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(LABELS, SCORES))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(LABELS, SCORES))


def test_binary_metrics_threshold_is_inclusive():
    # a score equal to the threshold is positive: 0.55 becomes a TP, 0.45 stays a FN, 0.6 stays a FP
    m = binary_metrics(LABELS, SCORES, threshold=0.55)
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]
    m = binary_metrics(LABELS, SCORES, threshold=0.56)
    assert m["confusion_matrix"] == [[3, 1], [3, 3]]
    m = binary_metrics(LABELS, SCORES, threshold=0.3)
    assert m["confusion_matrix"] == [[2, 2], [0, 6]]
    assert m["recall"] == 1.0 and m["specificity"] == pytest.approx(0.5)


def test_binary_metrics_single_class_and_empty_denominators():
    m = binary_metrics(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]), threshold=0.5)
    assert m["confusion_matrix"] == [[4, 0], [0, 0]]
    assert m["specificity"] == 1.0 and m["accuracy"] == 1.0
    assert math.isnan(m["recall"]) and math.isnan(m["precision"]) and math.isnan(m["roc_auc"])


# ---------------------------------------------------------------------------------------------------- threshold
def test_youden_picks_middle_of_gap_on_separable_data():
    labels = np.array([1, 0, 1, 0, 0, 1])
    scores = np.array([0.6, 0.1, 0.9, 0.3, 0.2, 0.7])  # negatives <= 0.3 < 0.6 <= positives
    t = select_threshold(labels, scores, method="youden")
    assert t == pytest.approx(0.45)
    m = binary_metrics(labels, scores, t)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0


def test_youden_is_optimal_on_random_data():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 300)
    scores = 1 / (1 + np.exp(-(1.2 * labels + rng.normal(size=300))))
    t = select_threshold(labels, scores)
    best = max(youden_at(labels, scores, c) for c in np.unique(scores))
    assert youden_at(labels, scores, t) == pytest.approx(best)
    assert 0.0 < t < 1.0


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_sensitivity_threshold_is_highest_reaching_target(target):
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, 400)
    scores = 1 / (1 + np.exp(-(1.0 * labels + rng.normal(size=400))))  # overlapping classes
    assert skm.roc_auc_score(labels, scores) < 0.95
    t = select_threshold(labels, scores, method="sensitivity", target_sensitivity=target)
    assert sensitivity_at(labels, scores, t) >= target
    assert binary_metrics(labels, scores, t)["sensitivity"] >= target  # consistent with binary_metrics
    # no higher threshold reaches the target
    reaching = [c for c in np.unique(scores) if sensitivity_at(labels, scores, c) >= target]
    assert t == pytest.approx(max(reaching))
    assert sensitivity_at(labels, scores, np.nextafter(t, np.inf)) < target
    # and it is not a trivial "everything positive" threshold
    assert binary_metrics(labels, scores, t)["specificity"] > 0


def test_threshold_fixed_single_class_and_unknown_method():
    assert select_threshold(LABELS, SCORES, method="fixed") == 0.5
    assert select_threshold(np.ones(5), np.linspace(0.1, 0.9, 5)) == 0.5
    with pytest.raises(ValueError, match="unknown threshold method"):
        select_threshold(LABELS, SCORES, method="f1-max")


# ---------------------------------------------------------------------------------------------------- multi-class
CLASS_NAMES = ["NORMAL", "BACTERIA", "VIRUS"]
MC_LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
MC_PRED = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 1])
# confusion matrix (rows truth, columns prediction): [[2, 1, 1], [1, 2, 0], [0, 1, 2]]


def mc_probs(seed=3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(MC_LABELS), 3))
    logits[np.arange(len(MC_PRED)), MC_PRED] += 6.0  # argmax = MC_PRED
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.array_equal(probs.argmax(1), MC_PRED)
    return probs


def test_multiclass_metrics_hand_computed():
    probs = mc_probs()
    m = multiclass_metrics(MC_LABELS, probs, CLASS_NAMES)
    assert m["n"] == 10
    assert m["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]
    assert m["accuracy"] == pytest.approx(6 / 10)
    expected = {
        #            precision, recall, f1,  specificity, support
        "NORMAL": (2 / 3, 2 / 4, 4 / 7, 5 / 6, 4),
        "BACTERIA": (2 / 4, 2 / 3, 4 / 7, 5 / 7, 3),
        "VIRUS": (2 / 3, 2 / 3, 2 / 3, 6 / 7, 3),
    }
    assert list(m["per_class"]) == CLASS_NAMES
    for name, (precision, recall, f1, specificity, support) in expected.items():
        pc = m["per_class"][name]
        assert pc["precision"] == pytest.approx(precision), name
        assert pc["recall"] == pytest.approx(recall), name
        assert pc["f1"] == pytest.approx(f1), name
        assert pc["specificity"] == pytest.approx(specificity), name
        assert pc["support"] == support, name
    assert m["f1"] == pytest.approx((4 / 7 + 4 / 7 + 2 / 3) / 3)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(MC_LABELS, probs, multi_class="ovr"))


def test_multiclass_missing_class():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.1, 0.7], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    m = multiclass_metrics(labels, probs, CLASS_NAMES)
    assert m["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    assert math.isnan(m["roc_auc"])  # one-vs-rest AUC undefined with a class absent
    assert m["per_class"]["VIRUS"]["support"] == 0
    assert m["per_class"]["VIRUS"]["specificity"] == pytest.approx(3 / 4)


# ---------------------------------------------------------------------------------------------------- combined + loss
def test_classification_metrics_binary_and_loss():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 64)
    logits = torch.tensor(rng.normal(size=(64, 2)) + 1.5 * np.eye(2)[labels])
    probs = torch.softmax(logits, 1).numpy()
    out = classification_metrics(labels, probs, ["NORMAL", "PNEUMONIA"], threshold=0.3)
    reference = binary_metrics(labels, probs[:, 1], 0.3)
    for key, value in reference.items():
        assert out[key] == value, key
    assert out["class_names"] == ["NORMAL", "PNEUMONIA"]
    expected_loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).item()
    assert out["loss"] == pytest.approx(expected_loss, rel=1e-9)
    # default threshold 0.5; positive_index=0 makes NORMAL the positive class
    assert classification_metrics(labels, probs, ["NORMAL", "PNEUMONIA"])["threshold"] == 0.5
    flipped = classification_metrics(labels, probs, ["NORMAL", "PNEUMONIA"], positive_index=0)
    assert flipped["sensitivity"] == pytest.approx(np.mean(probs[labels == 0, 0] >= 0.5))
    assert flipped["loss"] == pytest.approx(expected_loss, rel=1e-9)


def test_classification_metrics_multiclass_loss():
    probs = mc_probs()
    out = classification_metrics(MC_LABELS, probs, CLASS_NAMES)
    assert out["confusion_matrix"] == multiclass_metrics(MC_LABELS, probs, CLASS_NAMES)["confusion_matrix"]
    expected = torch.nn.functional.nll_loss(torch.log(torch.tensor(probs)), torch.tensor(MC_LABELS)).item()
    assert out["loss"] == pytest.approx(expected, rel=1e-9)
    # a zero probability on the true class is clipped, not infinite
    zero = classification_metrics(np.array([1, 0]), np.array([[1.0, 0.0], [1.0, 0.0]]), ["NORMAL", "PNEUMONIA"])
    assert zero["loss"] == pytest.approx(-np.log(1e-7) / 2)
