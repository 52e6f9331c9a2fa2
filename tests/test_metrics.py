"""Tests for custom.evaluation.metrics against hand-computed confusion counts and scikit-learn / torch references, and the
bootstrap intervals on the real Kermany test labels (with `scripts/report.py bootstrap`)."""

import json
import math
import runpy
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from custom.data.datalists import kermany_patient_id
from custom.evaluation.metrics import (
    BOOTSTRAP_METRICS,
    binary_metrics,
    bootstrap_intervals,
    classification_metrics,
    multiclass_metrics,
    paired_bootstrap,
    select_threshold,
)

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


# ---------------------------------------------------------------------------------------------------- bootstrap
KERMANY_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "pediatric_cxr" / "test"


def noisy_scores(labels, signal=1.0, seed=0):
    """Deterministic positive-class probabilities: sigmoid(signal * (+-1) + standard gaussian noise)."""
    noise = np.random.default_rng(seed).normal(size=len(labels))
    return 1 / (1 + np.exp(-(signal * (2 * np.asarray(labels) - 1) + noise)))


def width(interval, name):
    return interval[name]["high"] - interval[name]["low"]


@pytest.fixture(scope="module")
def kermany_test():
    """(N,) labels (PNEUMONIA = 1) and patient ids of the 624 real official Kermany test images, from file names."""
    files = sorted(p for c in ("NORMAL", "PNEUMONIA") for p in (KERMANY_TEST / c).iterdir())
    labels = np.array([p.parent.name == "PNEUMONIA" for p in files], dtype=int)
    return labels, np.array([kermany_patient_id(p.name) for p in files]), files


def test_bootstrap_interval_contains_estimate_on_real_labels(kermany_test):
    labels, groups, _ = kermany_test
    scores = noisy_scores(labels)
    out = bootstrap_intervals(labels, scores, 0.5, groups=groups)
    assert out["n_boot"] == 2000 and out["n_groups"] == len(set(groups)) < len(labels)
    reference = binary_metrics(labels, scores, 0.5)
    for name in BOOTSTRAP_METRICS:
        assert out[name]["estimate"] == reference[name], name
        assert 0 <= out[name]["low"] < out[name]["estimate"] < out[name]["high"] <= 1, name
        assert out[name]["n_skipped"] == 0, name
    assert out == bootstrap_intervals(labels, scores, 0.5, groups=groups)  # seeded


@pytest.mark.parametrize("grouped", [False, True])
def test_bootstrap_replicate_matches_binary_metrics_on_the_resample(kermany_test, grouped):
    # with n_boot=1 the interval is the one replicate: the rows of default_rng(seed).integers(0, G, G) drawn groups
    labels, groups, _ = kermany_test
    scores = np.round(noisy_scores(labels), 1)  # many ties: checks the ROC-AUC tie handling against scikit-learn
    ids, codes = np.unique(groups, return_inverse=True) if grouped else (labels, np.arange(labels.size))
    for seed in range(3):
        drawn = np.random.default_rng(seed).integers(0, len(ids), len(ids))
        rows = np.concatenate([np.flatnonzero(codes == g) for g in drawn])
        reference = binary_metrics(labels[rows], scores[rows], 0.5)
        out = bootstrap_intervals(labels, scores, 0.5, groups=groups if grouped else None, n_boot=1, seed=seed)
        for name in BOOTSTRAP_METRICS:
            assert out[name]["low"] == out[name]["high"] == pytest.approx(reference[name], abs=1e-12), (seed, name)


def test_bootstrap_interval_narrows_with_more_images(kermany_test):
    labels, groups, _ = kermany_test
    scores = noisy_scores(labels)
    subset = np.random.default_rng(1).choice(labels.size, 100, replace=False)
    small = bootstrap_intervals(labels[subset], scores[subset], 0.5, groups=groups[subset])
    full = bootstrap_intervals(labels, scores, 0.5, groups=groups)
    for name in BOOTSTRAP_METRICS:
        assert width(full, name) < 0.75 * width(small, name), name  # ~ sqrt(100 / 624) = 0.4 expected


def test_bootstrap_resamples_patients_not_images(kermany_test):
    # 5 copies of every image inside its patient: the same patients, so the cluster bootstrap is unchanged (weights
    # scale by 5), while an image bootstrap takes the copies for independent evidence and narrows by ~sqrt(5)
    labels, groups, _ = kermany_test
    scores = noisy_scores(labels)
    copies = [np.repeat(a, 5) for a in (labels, scores, groups)]
    cluster = bootstrap_intervals(labels, scores, 0.5, groups=groups)
    cluster_copies = bootstrap_intervals(*copies[:2], 0.5, groups=copies[2])
    images_copies = bootstrap_intervals(*copies[:2], 0.5)
    assert cluster_copies["n_groups"] == cluster["n_groups"] and images_copies["n_groups"] == 5 * labels.size
    for name in BOOTSTRAP_METRICS:
        assert cluster_copies[name]["low"] == pytest.approx(cluster[name]["low"]), name
        assert cluster_copies[name]["high"] == pytest.approx(cluster[name]["high"]), name
        assert width(images_copies, name) < 0.6 * width(cluster_copies, name), name


def test_bootstrap_skips_replicates_missing_a_class():
    labels = np.array([0] * 9 + [1])
    scores = np.linspace(0.05, 0.95, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = bootstrap_intervals(labels, scores, 0.5, n_boot=500)
        # P(no positive drawn) = 0.9 ** 10 = 0.35: those replicates have no sensitivity or ROC-AUC
        for name in ("sensitivity", "roc_auc"):
            assert 100 < out[name]["n_skipped"] < 250 and not math.isnan(out[name]["low"]), name
        assert out["accuracy"]["n_skipped"] == out["specificity"]["n_skipped"] == 0
        negatives_only = bootstrap_intervals(np.zeros(10), scores, 0.5, n_boot=50)
    assert negatives_only["sensitivity"]["n_skipped"] == 50 and math.isnan(negatives_only["sensitivity"]["low"])
    with pytest.raises(ValueError, match="must all be"):
        bootstrap_intervals(labels, scores, 0.5, groups=np.arange(5))


def test_paired_bootstrap_self_and_better_model(kermany_test):
    labels, groups, _ = kermany_test
    weak, strong = noisy_scores(labels, 1.0, seed=0), noisy_scores(labels, 3.0, seed=1)
    same = paired_bootstrap(labels, weak, weak, 0.5, 0.5, groups=groups)
    better = paired_bootstrap(labels, weak, strong, 0.5, 0.5, groups=groups)
    single = bootstrap_intervals(labels, weak, 0.5, groups=groups)
    assert same["n_groups"] == better["n_groups"] == single["n_groups"] and better["n_boot"] == 2000
    for name in BOOTSTRAP_METRICS:
        assert same[name]["a"] == same[name]["b"] == single[name]["estimate"], name
        assert same[name]["difference"] == same[name]["low"] == same[name]["high"] == 0, name
        assert same[name]["p_value"] == 1.0, name
        assert better[name]["difference"] == pytest.approx(better[name]["b"] - better[name]["a"])
        assert 0 < better[name]["low"] < better[name]["difference"] < better[name]["high"], name
        assert better[name]["p_value"] < 0.01, name
    # swapping the models mirrors the difference and its interval
    worse = paired_bootstrap(labels, strong, weak, 0.5, 0.5, groups=groups)
    assert worse["roc_auc"]["high"] == pytest.approx(-better["roc_auc"]["low"])


def write_predictions(path, files, labels, scores):
    """A predictions CSV as custom/evaluation/report.py writes it."""
    names = np.array(["NORMAL", "PNEUMONIA"])
    pd.DataFrame({"file": [str(f) for f in files], "prob_NORMAL": 1 - scores, "prob_PNEUMONIA": scores,
                  "predicted_label": names[(scores >= 0.5).astype(int)], "true_label": names[labels]}
                 ).to_csv(path, index=False)


def test_bootstrap_report_command(kermany_test, tmp_path, monkeypatch, capsys):
    labels, groups, files = kermany_test
    rows = np.r_[0:20, len(labels) - 20:len(labels)]  # 20 NORMAL and 20 PNEUMONIA images
    scores = noisy_scores(labels[rows])
    write_predictions(tmp_path / "a.csv", [files[i] for i in rows], labels[rows], scores)
    script = str(Path(__file__).resolve().parents[1] / "scripts" / "report.py")

    def report(*args):
        monkeypatch.setattr(sys, "argv", [script, "bootstrap", "--predictions", str(tmp_path / "a.csv"), *args])
        runpy.run_path(script, run_name="__main__")
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    printed = report("--threshold", "0.5", "--n_boot", "200", "--output", str(tmp_path / "out" / "ci.json"))
    written = json.loads((tmp_path / "out" / "ci.json").read_text())
    assert written == printed
    assert set(written) == {*BOOTSTRAP_METRICS, "n_boot", "n_groups"} and written["n_boot"] == 200
    assert written["n_groups"] == len(set(groups[rows]))
    for name in BOOTSTRAP_METRICS:
        assert {"estimate", "low", "high"} <= set(written[name])
        assert written[name]["low"] <= written[name]["estimate"] <= written[name]["high"], name

    order = np.random.default_rng(0).permutation(len(rows))  # rows are matched by file, not position
    write_predictions(tmp_path / "b.csv", [files[rows[i]] for i in order], labels[rows][order], scores[order] ** 2)
    paired = report("--threshold", "0.5", "--other", str(tmp_path / "b.csv"), "--other_threshold", "0.25")
    assert paired["roc_auc"]["difference"] == pytest.approx(0)  # squaring keeps the ranking
    assert paired["accuracy"]["difference"] == 0 and paired["accuracy"]["p_value"] == 1  # same decisions
    assert {"a", "b", "difference", "low", "high", "p_value"} <= set(paired["sensitivity"])
    write_predictions(tmp_path / "c.csv", [files[i] for i in rows[1:]], labels[rows[1:]], scores[1:])
    with pytest.raises(ValueError, match="same files once each: 40 and 39 rows, 1 files only in the first"):
        report("--threshold", "0.5", "--other", str(tmp_path / "c.csv"), "--other_threshold", "0.5")

    # --domain keeps one domain's rows of both files (a two-domain evaluation writes a domain column)
    for name in ("a", "b"):
        table = pd.read_csv(tmp_path / f"{name}.csv")
        table["domain"] = np.where(table["file"].isin([str(files[i]) for i in rows[::2]]), "adult", "pediatric")
        table.to_csv(tmp_path / f"{name}.csv", index=False)
    one_domain = report("--threshold", "0.5", "--other", str(tmp_path / "b.csv"), "--other_threshold", "0.25",
                        "--domain", "adult", "--n_boot", "50")
    assert one_domain["n_groups"] == len(set(groups[rows[::2]]))
    with pytest.raises(ValueError, match=r"a\.csv: no rows of domain 'child'"):
        report("--threshold", "0.5", "--domain", "child")
    with pytest.raises(ValueError, match=r"c\.csv: no domain column"):
        monkeypatch.setattr(sys, "argv", [script, "bootstrap", "--predictions", str(tmp_path / "c.csv"),
                                          "--threshold", "0.5", "--domain", "adult"])
        runpy.run_path(script, run_name="__main__")
