"""PNG figures: class distribution, sample and augmentation grids, training curves, confusion matrix, ROC (also one
curve per domain), precision-recall and calibration (reliability) curves.

Images are (1, W, H) tensors in MONAI's PIL axis convention; they are transposed for display.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from custom.evaluation.metrics import calibration_bins  # noqa: E402
from custom.io import atomic_path  # noqa: E402
from custom.models.trained_model import is_positive  # noqa: E402

if TYPE_CHECKING:
    import torch


def save_figure(fig, path: str | os.PathLike) -> None:
    """Save a figure as PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def as_display(image) -> np.ndarray:
    """(1, W, H) or (W, H) tensor/array -> (H, W) numpy array for `imshow`."""
    arr = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    return (arr[0] if arr.ndim == 3 else arr).T


def plot_class_distribution(counts: dict[str, dict[str, int]], path: str | os.PathLike) -> None:
    """Grouped bar chart of {split: {class_name: count}}."""
    splits = [s for s in counts if sum(counts[s].values())]
    classes = sorted({c for s in splits for c in counts[s]})
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(splits), 3.6))
    width = 0.8 / max(len(classes), 1)
    for i, name in enumerate(classes):
        values = [counts[s].get(name, 0) for s in splits]
        bars = ax.bar(np.arange(len(splits)) + i * width, values, width, label=name)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(np.arange(len(splits)) + width * (len(classes) - 1) / 2, splits)
    ax.set_ylabel("images")
    ax.set_title("Class distribution per split")
    ax.legend()
    save_figure(fig, path)


def plot_image_grid(images: Sequence, titles: Sequence[str], path: str | os.PathLike, ncols: int = 6,
                    suptitle: str = "") -> None:
    """Grey images (each (1, W, H) or (W, H)) in a grid with a title under each."""
    nrows = max(1, int(np.ceil(len(images) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(as_display(image), cmap="gray")
        ax.set_title(title, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    save_figure(fig, path)


def plot_training_curves(history: list[dict], path: str | os.PathLike) -> None:
    """Loss and accuracy per epoch for training and validation (keys train_loss, val_loss, train_accuracy,
    val_accuracy, val_roc_auc where present)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [h["epoch"] for h in history]
    for key, ax in (("train_loss", ax_loss), ("val_loss", ax_loss), ("train_accuracy", ax_acc),
                    ("val_accuracy", ax_acc), ("val_roc_auc", ax_acc)):
        points = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=key)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy / ROC-AUC")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


def plot_label_curve(labels: Sequence[int], curves: dict[str, tuple[Sequence[float], Sequence[float]]],
                     path: str | os.PathLike, ylabel: str = "ROC-AUC", title: str | None = None) -> None:
    """A learning curve: per name, mean (line) and standard deviation (error bar) of a metric against the number of
    labelled training images (symmetric-log axis, so that 0 labels is shown)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (means, stds) in curves.items():
        ax.errorbar(labels, means, yerr=stds, marker="o", capsize=3, label=name)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xticks(list(labels))
    ax.set_xticklabels([str(n) for n in labels])
    ax.set_xlabel("labelled target training images")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_confusion_matrix(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike,
                          title: str = "Confusion matrix") -> None:
    """Counts with row-normalised shading (rows = truth, columns = prediction)."""
    cm = np.asarray(cm)
    fraction = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(class_names), 1.2 + 1.1 * len(class_names)))
    ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, f"{count}\n{fraction[i, j]:.1%}", ha="center", va="center",
                color="white" if fraction[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(class_names)), class_names, rotation=30)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    save_figure(fig, path)


def _operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(sensitivity, specificity, precision) of the decision at `threshold` (`is_positive`) against (N,) 0/1 labels."""
    predicted = is_positive(scores, threshold)
    labels = np.asarray(labels).astype(bool)
    true_positives = (predicted & labels).sum()
    return (true_positives / max(labels.sum(), 1), (~predicted & ~labels).sum() / max((~labels).sum(), 1),
            true_positives / max(predicted.sum(), 1))


def _draw_precision_recall(ax, labels: np.ndarray, scores: np.ndarray, threshold: float | None) -> None:
    """Precision-recall curve (legend: average precision) on `ax`, with the operating point when `threshold` is set."""
    precision, recall, _ = skm.precision_recall_curve(labels, scores)
    ax.plot(recall, precision, label=f"AP {skm.average_precision_score(labels, scores):.3f}")
    if threshold is not None:
        sens, _, prec = _operating_point(labels, scores, threshold)
        ax.plot(sens, prec, "ro", label=f"threshold {threshold:.3f}")


def plot_roc_pr(labels: np.ndarray, scores: np.ndarray, path: str | os.PathLike, threshold: float | None = None) -> None:
    """ROC and precision-recall curves of (N,) 0/1 labels vs (N,) positive-class scores; marks the operating point."""
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(9, 4))
    fpr, tpr, _ = skm.roc_curve(labels, scores)
    ax_roc.plot(fpr, tpr, label=f"AUC {skm.roc_auc_score(labels, scores):.3f}")
    ax_roc.plot([0, 1], [0, 1], "k--", lw=0.8)
    _draw_precision_recall(ax_pr, labels, scores, threshold)
    if threshold is not None:
        sens, spec, _ = _operating_point(labels, scores, threshold)
        ax_roc.plot(1 - spec, sens, "ro", label=f"threshold {threshold:.3f}")
    for ax, (x, y, title) in ((ax_roc, ("1 - specificity", "sensitivity", "ROC")),
                              (ax_pr, ("recall", "precision", "Precision-recall"))):
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is ax_roc else "lower left")
    save_figure(fig, path)


def plot_domain_roc(labels: np.ndarray, scores: np.ndarray, domains: Sequence[str], path: str | os.PathLike,
                    threshold: float) -> None:
    """One ROC curve per domain (legend: domain, images, AUC) of (N,) 0/1 labels vs (N,) positive-class scores, each
    with its operating point at the one applied `threshold`; domains holding one class only are left out."""
    labels, scores, domains = np.asarray(labels).astype(bool), np.asarray(scores, dtype=float), np.asarray(domains)
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    for domain in sorted(set(domains.tolist())):
        part = domains == domain
        if not 0 < labels[part].sum() < part.sum():
            continue
        fpr, tpr, _ = skm.roc_curve(labels[part], scores[part])
        auc = skm.roc_auc_score(labels[part], scores[part])
        line, = ax.plot(fpr, tpr, label=f"{domain} (n={part.sum()}, AUC {auc:.3f})")
        sens, spec, _ = _operating_point(labels[part], scores[part], threshold)
        ax.plot(1 - spec, sens, "o", color=line.get_color())
    ax.plot([], [], "ko", label=f"threshold {threshold:.3f} (applied to all)")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC per domain")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


def plot_precision_recall(labels: np.ndarray, scores: np.ndarray, path: str | os.PathLike,
                          threshold: float | None = None) -> None:
    """Precision-recall curve of (N,) 0/1 labels vs (N,) positive-class scores, with the positive prevalence as the
    no-skill line and the operating point marked."""
    fig, ax = plt.subplots(figsize=(4.6, 4))
    prevalence = np.asarray(labels, dtype=float).mean()
    ax.axhline(prevalence, color="k", ls="--", lw=0.8, label=f"prevalence {prevalence:.3f}")
    _draw_precision_recall(ax, labels, scores, threshold)
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    save_figure(fig, path)


def plot_calibration(labels: np.ndarray, scores: np.ndarray, path: str | os.PathLike, n_bins: int = 10) -> float:
    """Reliability diagram (observed positive fraction vs mean predicted probability per equal-width bin) above a
    histogram of the scores; returns the expected calibration error (ECE, see `calibration_bins`)."""
    counts, predicted, observed, ece = calibration_bins(labels, scores, n_bins)
    filled = counts > 0
    fig, (ax, ax_hist) = plt.subplots(2, 1, figsize=(4.6, 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
    ax.plot(predicted[filled], observed[filled], "o-", label=f"model (ECE {ece:.3f})")
    ax.set_ylabel("observed positive fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Calibration ({n_bins} bins)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    edges = np.linspace(0, 1, n_bins + 1)
    ax_hist.bar(edges[:-1], counts, width=1 / n_bins, align="edge", edgecolor="white")
    ax_hist.set_xlabel("predicted probability of the positive class")
    ax_hist.set_ylabel("images")
    ax_hist.set_xlim(0, 1)
    save_figure(fig, path)
    return ece


def dataset_overview(datalist: dict, class_names: Sequence[str], output_dir: str | os.PathLike,
                     load: Callable, augment: Callable | None = None, per_class: int = 6, seed: int = 0) -> list[str]:
    """Writes class_distribution.png, samples.png (a row per class from training) and, with `augment`,
    augmented.png (each sample image next to augmented versions). `load` maps a datalist item to a dict with
    a preprocessed "image"; `augment` maps that dict to an augmented one. Returns the written paths."""
    os.makedirs(output_dir, exist_ok=True)
    counts = {split: {name: sum(1 for it in datalist.get(split, []) if it["label"] == c) for c, name in enumerate(class_names)}
              for split in ("training", "validation", "test")}
    written = [os.path.join(output_dir, "class_distribution.png")]
    plot_class_distribution(counts, written[-1])
    rng = np.random.default_rng(seed)
    train = datalist.get("training", [])
    picked = []
    for c, name in enumerate(class_names):
        members = [it for it in train if it["label"] == c]
        picked += [(name, members[i]) for i in rng.choice(len(members), min(per_class, len(members)), replace=False)]
    loaded = [(name, load(item)) for name, item in picked]
    written.append(os.path.join(output_dir, "samples.png"))
    plot_image_grid([d["image"] for _, d in loaded], [name for name, _ in loaded], written[-1], ncols=per_class,
                    suptitle="Training samples per class")
    if augment is not None and loaded:
        images, titles = [], []
        for name, d in loaded[:: max(1, len(loaded) // 4)][:4]:
            images.append(d["image"])
            titles.append(f"{name} original")
            for k in range(5):
                images.append(augment(dict(d))["image"])
                titles.append(f"augmented {k + 1}")
        written.append(os.path.join(output_dir, "augmented.png"))
        plot_image_grid(images, titles, written[-1], ncols=6, suptitle="Training augmentation")
    return written


def plot_mask_overlays(images: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], titles: Sequence[str],
                       path: str | os.PathLike, columns: int = 4) -> None:
    """PNG grid: each (1, W, H) image in grey with its (1, W, H) lung mask contour in red."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, mask, title in zip(axes.ravel(), images, masks, titles):
        ax.imshow(as_display(image), cmap="gray")
        ax.contour(as_display(mask.float()), levels=[0.5], colors="red", linewidths=1.0)
        ax.set_title(title[:28], fontsize=7)
    save_figure(fig, path)
