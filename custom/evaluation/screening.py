"""Two-stage screening: stage 1, a binary NORMAL / PNEUMONIA model at a (high-sensitivity) threshold; stage 2, a
bacterial-vs-viral (or NORMAL / BACTERIAL / VIRAL) model run only on the stage-1 positives. Each image ends up
NORMAL (stage-1 negative) or the more probable of BACTERIAL / VIRAL under stage 2 (stage 2 never overrules stage 1:
a three-class stage-2 model's NORMAL probability is dropped and the other two renormalised)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader, Dataset

from custom.data.datalists import LABEL_SCHEMES
from custom.evaluation.metrics import (
    binary_metrics,
    multiclass_metrics,
    select_threshold,
)
from custom.evaluation.plots import plot_confusion_matrix, plot_roc_pr
from custom.io import atomic_path, write_json
from custom.models.trained_model import OperatingPoint, is_positive, load_weights

logger = logging.getLogger(__name__)

FINAL_CLASSES = LABEL_SCHEMES["three_class"]  # NORMAL, BACTERIAL, VIRAL
SUBTYPES = FINAL_CLASSES[1:]


def combine(p_pneumonia: np.ndarray, threshold: float, stage2_probs: np.ndarray,
            stage2_class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """End-to-end decision and probabilities.

    Args:
        p_pneumonia: (N,) stage-1 P(pneumonia).
        threshold: stage-1 decision threshold (`is_positive`).
        stage2_probs: (N, C2) stage-2 probabilities (rows of stage-1 negatives are ignored and may be NaN).
        stage2_class_names: C2 names, containing BACTERIAL and VIRAL.

    Returns:
        (N,) indices into FINAL_CLASSES and (N, 3) probabilities [1 - p, p * P(bacterial | pneumonia),
        p * P(viral | pneumonia)]; stage-1 negatives, never seen by stage 2, split p evenly between the subtypes.
    """
    p = np.asarray(p_pneumonia, dtype=np.float64)
    columns = [list(stage2_class_names).index(name) for name in SUBTYPES]
    subtype = np.asarray(stage2_probs, dtype=np.float64)[:, columns]
    positive = is_positive(p, threshold)
    subtype = np.where(positive[:, None], subtype / np.maximum(subtype.sum(1, keepdims=True), 1e-12), 0.5)
    predicted = np.where(positive, 1 + subtype.argmax(1), 0)
    return predicted, np.column_stack([1 - p, p[:, None] * subtype])


class TwoStageScreening:
    """Runs both stages over labelled items and writes the report to `output_dir` atomically:
    `screening_metrics.json` (stage-1 operating point and metrics on the split, stage-2 metrics on the true
    positives, end-to-end 3x3 confusion matrix and per-class metrics), `screening_predictions.csv`,
    `screening_confusion_matrix.png` (end to end), `stage1_roc.png`, `stage2_confusion_matrix.png`.

    Args:
        items: datalist items `{"image", "label"}` with three-class labels (NORMAL=0, BACTERIAL=1, VIRAL=2).
        preprocessing: dict transform giving "image" as a (C, H, W) float tensor (the bundle's validation one).
        stage1_network, stage2_network: the networks of `stage1_ckpt`, `stage2_ckpt` (logits out).
        stage1_class_names: 2 names; the pneumonia one is the positive class.
        stage2_class_names: BACTERIAL and VIRAL, optionally with NORMAL (a three-class model).
        threshold_method: None uses the threshold stored in the stage-1 checkpoint; "sensitivity" or "youden"
            re-picks it on `validation_items` (never on the evaluated split).
        target_sensitivity: for threshold_method="sensitivity", e.g. 0.95..0.99.
        split: name of the evaluated split, recorded in the report.
    """

    def __init__(self, items: Sequence[dict], preprocessing: Callable, stage1_network: torch.nn.Module,
                 stage2_network: torch.nn.Module, stage1_ckpt: str, stage2_ckpt: str, output_dir: str,
                 stage1_class_names: Sequence[str] = ("NORMAL", "PNEUMONIA"),
                 stage2_class_names: Sequence[str] = FINAL_CLASSES, threshold_method: str | None = None,
                 target_sensitivity: float = 0.95, validation_items: Sequence[dict] | None = None,
                 split: str = "test", device: torch.device | str = "cpu", batch_size: int = 32,
                 num_workers: int = 0) -> None:
        if list(stage1_class_names) != ["NORMAL", "PNEUMONIA"]:
            raise ValueError(f"stage 1 must be a NORMAL / PNEUMONIA model, got classes {list(stage1_class_names)}")
        if not set(SUBTYPES) <= set(stage2_class_names) <= set(FINAL_CLASSES):
            raise ValueError(f"stage 2 classes must include {SUBTYPES} (and optionally NORMAL), "
                             f"got {list(stage2_class_names)}")
        if threshold_method is not None and not validation_items:
            raise ValueError(f"threshold_method={threshold_method!r} needs validation items to pick the threshold on")
        self.items, self.validation_items = list(items), list(validation_items or [])
        self.preprocessing = preprocessing
        self.stage1, self.stage2 = stage1_network, stage2_network
        self.stage1_ckpt, self.stage2_ckpt = str(stage1_ckpt), str(stage2_ckpt)
        self.output_dir = Path(output_dir)
        self.stage2_class_names = list(stage2_class_names)
        self.threshold_method, self.target_sensitivity = threshold_method, float(target_sensitivity)
        self.split, self.device = split, torch.device(device)
        self.batch_size, self.num_workers = batch_size, num_workers

    def run(self) -> dict:
        """Loads both checkpoints, predicts, writes the report files and returns the metrics dict."""
        checkpoint = load_weights(self.stage1, self.stage1_ckpt)
        load_weights(self.stage2, self.stage2_ckpt)
        self.stage1.to(self.device).eval()
        self.stage2.to(self.device).eval()
        if self.threshold_method is None:
            if "operating_point" not in checkpoint:
                raise ValueError(f"{self.stage1_ckpt}: no operating_point stored; "
                                 "set a threshold_method to pick one on validation")
            stored = OperatingPoint.from_checkpoint(checkpoint)
            threshold, method = stored.threshold, f"{stored.method} (from checkpoint)"
        else:
            val_labels, val_p, _, _ = self._predict(self.validation_items, threshold=None)
            threshold = select_threshold(val_labels > 0, val_p, self.threshold_method, self.target_sensitivity)
            method = f"{self.threshold_method} (picked on {len(val_p)} validation images)"
        labels, p, p2, files = self._predict(self.items, threshold)
        predicted, probs = combine(p, threshold, p2, self.stage2_class_names)
        report = self.report(labels, p, threshold, probs, predicted)
        report["stage1"].update(method=method, checkpoint=self.stage1_ckpt)
        if self.threshold_method == "sensitivity":
            report["stage1"]["target_sensitivity"] = self.target_sensitivity
        report["stage2"]["checkpoint"] = self.stage2_ckpt
        self._write(report, files, labels, p, p2, predicted)
        logger.info("screening on %s: stage-1 threshold %.4f sensitivity %.4f specificity %.4f; "
                    "end-to-end accuracy %.4f",
                    self.split, threshold, report["stage1"]["sensitivity"], report["stage1"]["specificity"],
                    report["end_to_end"]["accuracy"])
        return report

    def report(self, labels: np.ndarray, p: np.ndarray, threshold: float, probs: np.ndarray,
               predicted: np.ndarray) -> dict:
        """Metrics dict from (N,) three-class labels, (N,) stage-1 P(pneumonia), (N, 3) end-to-end probabilities
        and (N,) end-to-end decisions (see `combine`)."""
        positive = is_positive(p, threshold)
        true_positive = positive & (labels > 0)
        stage2 = {"n_stage1_positive": int(positive.sum()), "class_names": list(SUBTYPES)}
        if true_positive.any():  # bacterial vs viral on the pneumonia images that stage 1 passed on
            subtype = probs[true_positive, 1:]
            subtype = subtype / np.maximum(subtype.sum(1, keepdims=True), 1e-12)  # P(subtype | pneumonia)
            stage2.update(multiclass_metrics(labels[true_positive] - 1, subtype, list(SUBTYPES),
                                             predicted[true_positive] - 1))
        else:
            stage2["n"] = 0
        return {
            "split": self.split,
            "n": int(labels.size),
            "class_names": list(FINAL_CLASSES),
            "stage1": binary_metrics(labels > 0, p, threshold),
            "stage2": stage2,
            "end_to_end": multiclass_metrics(labels, probs, list(FINAL_CLASSES), predicted),
        }

    @torch.inference_mode()
    def _predict(self, items: Sequence[dict], threshold: float | None):
        """(N,) labels, (N,) stage-1 P(pneumonia), (N, C2) stage-2 probabilities (NaN for stage-1 negatives; None
        when `threshold` is None: stage 1 only) and the N file names."""
        for item in items:
            if not (isinstance(item.get("label"), int) and 0 <= item["label"] < len(FINAL_CLASSES)):
                raise ValueError(f"{item.get('image')}: label {item.get('label')!r} is not a three-class label "
                                 f"(0..2 = {FINAL_CLASSES}); build the datalist with label_scheme three_class")
        loader = DataLoader(Dataset(list(items), self.preprocessing), batch_size=self.batch_size, shuffle=False,
                            num_workers=self.num_workers)
        labels, p1, p2, files = [], [], [], []
        for batch in loader:
            files += [str(f) for f in batch["image"].meta["filename_or_obj"]]
            images = batch["image"].as_tensor().to(self.device)
            p = torch.softmax(self.stage1(images).float(), 1)[:, 1]
            p1.append(p.cpu())
            labels.append(torch.as_tensor(batch["label"]).reshape(-1))
            if threshold is not None:
                probs = torch.full((len(p), len(self.stage2_class_names)), float("nan"))
                positive = torch.from_numpy(is_positive(p.cpu(), threshold))
                if positive.any():
                    probs[positive] = torch.softmax(self.stage2(images[positive.to(self.device)]).float(), 1).cpu()
                p2.append(probs)
        if not p1:
            raise ValueError("no images to screen: the selected split is empty")
        stage2 = torch.cat(p2).numpy() if threshold is not None else None
        return torch.cat(labels).numpy().astype(int), torch.cat(p1).double().numpy(), stage2, files

    def _write(self, report: dict, files: list[str], labels: np.ndarray, p: np.ndarray, p2: np.ndarray,
               predicted: np.ndarray) -> None:
        out = self.output_dir
        stage1_positive = is_positive(p, report["stage1"]["threshold"])
        write_json(report, out / "screening_metrics.json")
        with atomic_path(out / "screening_predictions.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "prob_PNEUMONIA", "stage1_positive",
                             *[f"stage2_prob_{n}" for n in self.stage2_class_names], "predicted_label", "true_label"])
            for i, file in enumerate(files):
                stage2 = ["" if np.isnan(q) else f"{q:.6f}" for q in p2[i]]
                writer.writerow([file, f"{p[i]:.6f}", int(stage1_positive[i]), *stage2,
                                 FINAL_CLASSES[predicted[i]], FINAL_CLASSES[labels[i]]])
        plot_confusion_matrix(report["end_to_end"]["confusion_matrix"], FINAL_CLASSES,
                              out / "screening_confusion_matrix.png", title=f"two-stage screening, {self.split}")
        if 0 < (labels > 0).sum() < labels.size:
            plot_roc_pr(labels > 0, p, out / "stage1_roc.png", report["stage1"]["threshold"])
        if report["stage2"]["n"]:
            plot_confusion_matrix(report["stage2"]["confusion_matrix"], SUBTYPES, out / "stage2_confusion_matrix.png",
                                  title="stage 2 on stage-1 true positives")
