"""Multi-class (NORMAL / BACTERIAL / VIRAL) metrics and training, and the two-stage screening pipeline, on real
Kermany images from the shared data: a 1-epoch three-class ResNet18 on a tiny datalist is stage 2, the shipped
binary `models/model.pt` is stage 1."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run
from sklearn import metrics as skm

from custom.data.datalists import kermany_items, write_datalist
from custom.evaluation.metrics import multiclass_metrics
from custom.evaluation.screening import FINAL_CLASSES, TwoStageScreening, combine

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
KERMANY = SHARED / "pediatric_cxr"

# hand-made 3-class example: 9 images, probabilities (N, 3), argmax decisions [0, 1, 0, 1, 1, 2, 2, 0, 2]
MC_LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
MC_PROBS = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.1, 0.5, 0.4],
                     [0.2, 0.3, 0.5], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]])


def first_per_class(split: str, n: int, exclude: set = frozenset()) -> list[dict]:
    items = [i for i in kermany_items(KERMANY, split, "three_class") if i["patient_id"] not in exclude]
    return [item for c in range(3) for item in [i for i in items if i["label"] == c][:n]]


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory) -> Path:
    """One real epoch of the three-class ResNet18 on 4 training / 2 validation images per class; test = 4 per class
    from the official test split."""
    tmp = tmp_path_factory.mktemp("three_class")
    training = first_per_class("train", 4)
    validation = first_per_class("train", 2, exclude={i["patient_id"] for i in training})
    write_datalist({"class_names": FINAL_CLASSES, "training": training, "validation": validation,
                    "test": first_per_class("test", 4)}, tmp / "tiny.json")
    # `python -m monai.bundle run training --config_file "['configs/train.json','configs/train_three_class.json']"`
    run("training", config_file=[str(ROOT / "configs" / name) for name in ("train.json", "train_three_class.json")],
        bundle_root=str(ROOT), datalist_file=str(tmp / "tiny.json"), dataset_dir=str(KERMANY),
        output_dir=str(tmp / "train"), ckpt_dir=str(tmp / "models"), max_epochs=1, batch_size=6, make_plots=False,
        augment=False)
    return tmp


def test_multiclass_metrics_match_sklearn():
    m = multiclass_metrics(MC_LABELS, MC_PROBS, FINAL_CLASSES)
    predicted = MC_PROBS.argmax(1)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 1], [1, 0, 2]]
    assert m["confusion_matrix"] == skm.confusion_matrix(MC_LABELS, predicted).tolist()
    precision, recall, f1, support = skm.precision_recall_fscore_support(MC_LABELS, predicted)
    for c, name in enumerate(FINAL_CLASSES):
        per_class = m["per_class"][name]
        assert per_class["precision"] == pytest.approx(precision[c])
        assert per_class["recall"] == pytest.approx(recall[c])
        assert per_class["f1"] == pytest.approx(f1[c])
        assert per_class["support"] == support[c] == 3
        # specificity = recall of "not c"
        assert per_class["specificity"] == pytest.approx(skm.recall_score(MC_LABELS != c, predicted != c))
        assert per_class["roc_auc"] == pytest.approx(skm.roc_auc_score(MC_LABELS == c, MC_PROBS[:, c]))
    assert m["per_class"]["NORMAL"]["specificity"] == pytest.approx(5 / 6)  # one VIRAL image called NORMAL
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(MC_LABELS, predicted)) == pytest.approx(6 / 9)
    assert m["macro_precision"] == pytest.approx(skm.precision_score(MC_LABELS, predicted, average="macro"))
    assert m["macro_recall"] == pytest.approx(skm.recall_score(MC_LABELS, predicted, average="macro"))
    assert m["f1"] == pytest.approx(skm.f1_score(MC_LABELS, predicted, average="macro"))
    assert m["macro_specificity"] == pytest.approx(np.mean([m["per_class"][n]["specificity"] for n in FINAL_CLASSES]))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(MC_LABELS, MC_PROBS, multi_class="ovr", average="macro"))
    # explicit decisions replace argmax: everything called NORMAL
    forced = multiclass_metrics(MC_LABELS, MC_PROBS, FINAL_CLASSES, predicted=np.zeros(9, dtype=int))
    assert forced["confusion_matrix"] == [[3, 0, 0], [3, 0, 0], [3, 0, 0]]
    assert forced["roc_auc"] == pytest.approx(m["roc_auc"])  # scores unchanged


def test_combine_keeps_stage1_negatives_normal():
    p = np.array([0.1, 0.5, 0.9, 0.95])
    stage2 = np.array([[np.nan] * 3, [0.9, 0.02, 0.08], [0.1, 0.6, 0.3], [0.0, 0.2, 0.8]])
    predicted, probs = combine(p, 0.3, stage2, FINAL_CLASSES)
    # stage 2's NORMAL vote (row 1) cannot overrule stage 1: the subtypes are renormalised, 0.08 / 0.10 -> VIRAL
    assert predicted.tolist() == [0, 2, 1, 2]
    np.testing.assert_allclose(probs.sum(1), 1.0)
    np.testing.assert_allclose(probs[1], [0.5, 0.5 * 0.2, 0.5 * 0.8])
    np.testing.assert_allclose(probs[0], [0.9, 0.05, 0.05])
    # a bacterial-vs-viral stage 2 (columns in its own order)
    predicted, _ = combine(p, 0.3, np.array([[np.nan] * 2, [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]]), ["VIRAL", "BACTERIAL"])
    assert predicted.tolist() == [0, 1, 2, 1]


def test_three_class_training_writes_per_class_metrics(three_class_run):
    metrics = json.loads((three_class_run / "train" / "val_metrics.json").read_text())
    assert metrics["n"] == 6 and metrics["class_names"] == FINAL_CLASSES
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum(1).tolist() == [2, 2, 2]
    for name in FINAL_CLASSES:
        assert set(metrics["per_class"][name]) == {"precision", "recall", "specificity", "f1", "roc_auc", "support"}
        assert 0 <= metrics["per_class"][name]["roc_auc"] <= 1
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_specificity", "f1", "roc_auc"):
        assert 0 <= metrics[key] <= 1, key
    history = json.loads((three_class_run / "train" / "history.json").read_text())
    assert history[0]["val_roc_auc"] == pytest.approx(metrics["roc_auc"])  # the key metric
    assert (three_class_run / "train" / "val_confusion_matrix.png").stat().st_size > 5000
    with open(three_class_run / "train" / "val_predictions.csv") as f:
        assert next(csv.reader(f))[:4] == ["file", "prob_NORMAL", "prob_BACTERIAL", "prob_VIRAL"]
    checkpoint = torch.load(three_class_run / "models" / "model.pt", map_location="cpu", weights_only=False)
    assert checkpoint["model"]["net.fc.weight"].shape[0] == 3


def test_two_stage_screening_end_to_end(three_class_run):
    out = three_class_run / "screening"
    run("screening", config_file=[str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "screening.json")],
        bundle_root=str(ROOT), datalist_file=str(three_class_run / "tiny.json"), dataset_dir=str(KERMANY),
        output_dir=str(out), stage2_ckpt=str(three_class_run / "models" / "model.pt"))
    report = json.loads((out / "screening_metrics.json").read_text())
    stored = torch.load(ROOT / "models" / "model.pt", map_location="cpu", weights_only=False)["operating_point"]
    stage1 = report["stage1"]
    assert stage1["threshold"] == pytest.approx(stored["threshold"]) and stage1["method"].startswith(stored["method"])
    with open(out / "screening_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert report["n"] == len(rows) == 12
    cm = np.array(report["end_to_end"]["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 12 and cm.sum(1).tolist() == [4, 4, 4]
    negatives = [r for r in rows if r["stage1_positive"] == "0"]
    assert negatives, "the shipped model should call some NORMAL test images negative"
    assert all(r["predicted_label"] == "NORMAL" and r["stage2_prob_VIRAL"] == "" for r in negatives)
    assert cm[:, 0].sum() == len(negatives)  # stage 2 never says NORMAL
    # stage-1 operating point on this split, and stage 2 on its true positives
    (tn, fp), (fn, tp) = stage1["confusion_matrix"]
    assert tn + fp + fn + tp == 12 and tn + fn == len(negatives)
    assert stage1["sensitivity"] == pytest.approx(tp / 8) and stage1["specificity"] == pytest.approx(tn / 4)
    assert report["stage2"]["n"] == tp and np.array(report["stage2"]["confusion_matrix"]).sum() == tp
    assert np.array(report["stage2"]["confusion_matrix"]).tolist() == cm[1:, 1:].tolist()
    assert set(report["end_to_end"]["per_class"]) == set(FINAL_CLASSES)
    for name in ("screening_confusion_matrix", "stage1_roc", "stage2_confusion_matrix"):
        assert (out / f"{name}.png").stat().st_size > 5000, name


def test_stage1_threshold_repicked_on_validation_for_target_sensitivity(three_class_run, tmp_path):
    parser = ConfigParser()
    parser.read_config([ROOT / "configs" / "train.json", ROOT / "configs" / "screening.json"])
    parser.update({"bundle_root": str(ROOT), "datalist_file": str(three_class_run / "tiny.json"),
                   "dataset_dir": str(KERMANY)})
    datalist = parser.get_parsed_content("datalist")
    screening = TwoStageScreening(
        datalist["test"], parser.get_parsed_content("validate#preprocessing"),
        parser.get_parsed_content("stage1_network_def"), parser.get_parsed_content("stage2_network_def"),
        ROOT / "models" / "model.pt", three_class_run / "models" / "model.pt", tmp_path,
        threshold_method="sensitivity", target_sensitivity=0.97, validation_items=datalist["validation"])
    report = screening.run()
    assert report["stage1"]["method"] == "sensitivity (picked on 6 validation images)"
    assert report["stage1"]["target_sensitivity"] == 0.97
    # the picked threshold keeps every validation pneumonia positive
    val_labels, val_p, _, _ = screening._predict(datalist["validation"], threshold=None)
    assert (val_p[val_labels > 0] >= report["stage1"]["threshold"]).all()
    with pytest.raises(ValueError, match="needs validation items"):
        TwoStageScreening([], None, None, None, "a", "b", tmp_path, threshold_method="youden")

