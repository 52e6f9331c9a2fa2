"""The evaluator's Ignite metrics (`custom.evaluation.ignite_metrics`): ROC-AUC as `key_val_metric`, the operating-point
metrics as `additional_metrics`, and `ClassificationReport` writing files only, so that the order of the evaluator's
handlers changes nothing: same checkpoint, operating point, early-stopping score and history.

The training runs are the real `configs/train.json` on 12 training / 8 validation images of the embedded sample
(SmallCNN at 32 px, 3 epochs), once with the handlers in the config's order and once reversed.
"""

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from custom.evaluation import ROCAUC, ClassificationReport, OperatingPointMetrics
from custom.evaluation.metrics import (
    classification_metrics,
    multiclass_metrics,
    select_threshold,
)
from custom.models.trained_model import OperatingPoint

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"

# 10 images, binary: positive-class probability and label (ROC-AUC 23 / 25: the PNEUMONIA at 0.3 ranks below two NORMALs)
SCORES = np.array([0.05, 0.2, 0.35, 0.55, 0.1, 0.3, 0.6, 0.7, 0.8, 0.95])
LABELS = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
MC_LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
MC_PROBS = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.1, 0.5, 0.4],
                     [0.2, 0.3, 0.5], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]])


def evaluator(probs: np.ndarray, labels: np.ndarray, batch_size: int = 4, one_hot: bool = False) -> Engine:
    """An engine whose iterations output decollated {"pred", "label"} items, as MONAI's SupervisedEvaluator does."""
    batches = [list(range(i, min(i + batch_size, len(labels)))) for i in range(0, len(labels), batch_size)]

    def step(engine, rows):
        return [{"pred": torch.tensor(probs[i], dtype=torch.float32),
                 "label": torch.eye(probs.shape[1])[labels[i]] if one_hot else torch.tensor(labels[i])} for i in rows]

    engine = Engine(step)
    engine.batches = batches
    return engine


def test_binary_metrics_at_selected_threshold():
    probs = np.stack([1 - SCORES, SCORES], axis=1)
    engine = evaluator(probs, LABELS)
    point = OperatingPoint()
    metric = OperatingPointMetrics(["NORMAL", "PNEUMONIA"], prefix="val", operating_point=point, select_threshold="youden")
    ROCAUC().attach(engine, "val_roc_auc")
    metric.attach(engine, "operating_point_metrics")
    engine.run(engine.batches)
    assert point.threshold == pytest.approx(select_threshold(LABELS, SCORES, "youden")) and point.method == "youden"
    expected = classification_metrics(LABELS, probs.astype(np.float32), ["NORMAL", "PNEUMONIA"], point.threshold)
    assert metric.result == pytest.approx(expected)
    found = engine.state.metrics
    assert found["val_roc_auc"] == pytest.approx(expected["roc_auc"]) == pytest.approx(23 / 25)
    for name in ("accuracy", "sensitivity", "specificity", "f1", "ece", "loss", "threshold", "n"):
        assert found[f"val_{name}"] == pytest.approx(expected[name]), name
    # scalars only, key by key: nothing nested or unprefixed (MLflow / TensorBoard log every entry)
    assert all(k.startswith("val_") and isinstance(v, (int, float)) for k, v in found.items()), found
    assert "operating_point_metrics" not in found and found["val_n"] == 10


def test_multiclass_roc_auc_is_macro_one_vs_rest_and_no_threshold_is_picked():
    engine = evaluator(MC_PROBS, MC_LABELS, one_hot=True)
    point = OperatingPoint(threshold=0.3)
    metric = OperatingPointMetrics(["NORMAL", "BACTERIAL", "VIRAL"], prefix="test", operating_point=point,
                                   select_threshold="youden")
    ROCAUC().attach(engine, "test_roc_auc")
    metric.attach(engine, "operating_point_metrics")
    engine.run(engine.batches)
    expected = multiclass_metrics(MC_LABELS, MC_PROBS, ["NORMAL", "BACTERIAL", "VIRAL"])
    assert engine.state.metrics["test_roc_auc"] == pytest.approx(expected["roc_auc"])
    assert engine.state.metrics["test_accuracy"] == pytest.approx(expected["accuracy"]) == pytest.approx(6 / 9)
    assert engine.state.metrics["test_macro_specificity"] == pytest.approx(expected["macro_specificity"])
    assert point.threshold == 0.3 and point.method == "fixed"  # a threshold rule is for binary tasks only
    # a second run starts from an empty epoch
    engine.run(engine.batches)
    assert metric.result["n"] == 9


def test_report_needs_its_metrics_attached(tmp_path):
    metric = OperatingPointMetrics(["NORMAL", "PNEUMONIA"])
    with pytest.raises(ValueError, match="additional_metrics"):
        ClassificationReport(str(tmp_path), ["NORMAL", "PNEUMONIA"], metrics=metric).attach(Engine(lambda e, b: b))


class SeenMetrics:
    """Test probe, listed first among the evaluator's handlers: the metrics present when handlers start running."""

    seen: ClassVar[list[dict]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: self.seen.append(dict(e.state.metrics)))


def train(tmp: Path, reverse: bool) -> ConfigParser:
    from custom.data.datalists import build_kermany, write_datalist

    full = build_kermany(SAMPLE, val_fraction=0.15, seed=0)
    first = lambda split, n: [it for c in (0, 1) for it in [i for i in full[split] if i["label"] == c][:n]]
    write_datalist({"class_names": full["class_names"], "training": first("training", 6),
                    "validation": first("validation", 4), "test": []}, tmp / "datalist.json")
    parser = ConfigParser()
    parser.read_config(ROOT / "configs" / "train.json")
    parser.update({"bundle_root": str(ROOT), "datalist_file": str(tmp / "datalist.json"), "output_dir": str(tmp / "train"),
                   "ckpt_dir": str(tmp / "models"), "max_epochs": 3, "early_stop_patience": 1, "image_size": [32, 32],
                   "batch_size": 4, "augment": False, "make_plots": False, "resume": False, "num_workers": 0,
                   "network_def": {"_target_": "custom.models.networks.SmallCNN", "in_channels": "@in_channels",
                                   "num_classes": "@num_classes", "widths": [8, 16, 16]}})
    handlers = parser["validate#handlers"]
    parser["validate#handlers"] = [{"_target_": f"{__name__}.SeenMetrics"},
                                   *(handlers[::-1] if reverse else handlers)]
    SeenMetrics.seen = []
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("training")
    return parser


@pytest.mark.usefixtures("single_thread")
def test_handler_order_changes_nothing(tmp_path):
    runs = {}
    for reverse in (False, True):
        tmp = tmp_path / ("reversed" if reverse else "listed")
        parser = train(tmp, reverse)
        seen = SeenMetrics.seen
        history = json.loads((tmp / "train" / "history.json").read_text())
        checkpoint = torch.load(tmp / "models" / "model.pt", map_location="cpu", weights_only=True)
        last = torch.load(max((tmp / "models").glob("checkpoint_epoch=*.pt")), map_location="cpu", weights_only=True)
        runs[reverse] = {
            "history": history, "seen": seen, "operating_point": checkpoint["operating_point"],
            "best": last["best_model"], "early_stop": parser.get_parsed_content("validate#early_stopping")._handler.best_score,
            "metrics": json.loads((tmp / "train" / "val_metrics.json").read_text()),
            "weights": checkpoint["model"], "epochs": parser.get_parsed_content("train#trainer").state.epoch,
        }
        # before any handler ran, the evaluator held its metrics, the threshold already picked into them
        assert len(seen) == len(history) and all({"val_roc_auc", "val_accuracy", "val_sensitivity", "val_specificity",
                                                  "val_f1", "val_ece", "val_threshold"} <= set(m) for m in seen)
        assert [m["val_roc_auc"] for m in seen] == [h["val_roc_auc"] for h in history]
        top = max(h["val_roc_auc"] for h in history)
        best = max(i for i, h in enumerate(history) if h["val_roc_auc"] == top)  # the saver keeps the last of equals
        assert runs[reverse]["early_stop"] == top
        assert checkpoint["operating_point"]["threshold"] == pytest.approx(history[best]["val_threshold"])
        assert checkpoint["operating_point"]["method"] == parser["threshold_method"]
        assert runs[reverse]["metrics"]["threshold"] == pytest.approx(history[-1]["val_threshold"])
        assert runs[reverse]["metrics"]["roc_auc"] == pytest.approx(history[-1]["val_roc_auc"])
    listed, reversed_ = runs[False], runs[True]
    assert listed["epochs"] == reversed_["epochs"]
    for a, b in zip(listed["history"], reversed_["history"]):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], nan_ok=True) for k in a), {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    assert listed["operating_point"] == reversed_["operating_point"]
    assert listed["best"] == reversed_["best"] and listed["early_stop"] == reversed_["early_stop"]
    assert listed["metrics"] == reversed_["metrics"]
    assert all(torch.equal(listed["weights"][k], reversed_["weights"][k]) for k in listed["weights"])
