"""One self-contained HTML report per evaluation run: metrics table (and one row per domain when the run has
several), evaluation plots (confusion matrix, ROC, ROC per domain, precision-recall, calibration), the training
run's curves and data plots, and any other PNG (saliency gallery, t-SNE, ...) found in the folders. Images are
embedded as base64 data URIs, so `report.html` is one file that can be mailed, archived or logged as an artifact on
its own.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
from pathlib import Path

import pandas as pd

from custom.evaluation.plots import plot_calibration, plot_precision_recall
from custom.io import write_text

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRIC_ROWS = (("accuracy", "Accuracy"), ("precision", "Precision"), ("recall", "Recall / sensitivity"),
               ("specificity", "Specificity"), ("f1", "F1"), ("roc_auc", "ROC-AUC"), ("pr_auc", "PR-AUC"),
               ("ece", "Expected calibration error (10 bins)"), ("loss", "Cross-entropy"),
               ("threshold", "Decision threshold on P(positive)"), ("n", "Images"))
TRAINING_PLOTS = (("training_curves.png", "Training curves"), ("class_distribution.png", "Class distribution"),
                  ("samples.png", "Training samples"), ("augmented.png", "Augmentation"))
STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}figure{display:inline-block;margin:0 1em 1em 0;
vertical-align:top}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.9em;color:#555}"""


def find_prefix(eval_dir: Path) -> str:
    """The run's file prefix from `{prefix}_metrics.json` ("test" preferred when several runs share the folder)."""
    prefixes = sorted(p.name[: -len("_metrics.json")] for p in eval_dir.glob("*_metrics.json"))
    if not prefixes:
        raise FileNotFoundError(f"{eval_dir}: no *_metrics.json (not an evaluation output folder)")
    return "test" if "test" in prefixes else prefixes[0]


def read_metrics(path: Path) -> dict:
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read metrics JSON ({e})") from e
    if not isinstance(metrics, dict) or "class_names" not in metrics:
        raise ValueError(f"{path}: not a ClassificationReport metrics file (no 'class_names')")
    return metrics


def curve_plots(predictions: Path, metrics: dict, eval_dir: Path, prefix: str) -> dict:
    """Writes `{prefix}_pr.png` and `{prefix}_calibration.png` from a binary run's predictions CSV (file,
    prob_<class>..., predicted_label, true_label); returns {"ece": float} (empty when not applicable)."""
    names = metrics["class_names"]
    if len(names) != 2:
        return {}
    try:
        table = pd.read_csv(predictions)
    except (OSError, ValueError) as e:
        raise ValueError(f"{predictions}: cannot read predictions CSV ({e})") from e
    positive = names[1]
    missing = {f"prob_{positive}", "true_label"} - set(table.columns)
    if missing:
        raise ValueError(f"{predictions}: missing column(s) {sorted(missing)}")
    labels = (table["true_label"] == positive).to_numpy()
    scores = table[f"prob_{positive}"].to_numpy(dtype=float)
    if labels.all() or not labels.any():
        return {}
    plot_precision_recall(labels, scores, eval_dir / f"{prefix}_pr.png", metrics.get("threshold"))
    return {"ece": plot_calibration(labels, scores, eval_dir / f"{prefix}_calibration.png")}


def image_tag(path: Path, caption: str) -> str:
    """A <figure> with the PNG embedded as a data URI; raises ValueError naming the file if it is not a PNG."""
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path}: not a PNG file")
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="{uri}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)} <code>{html.escape(path.name)}</code></figcaption></figure>")


def metrics_table(metrics: dict) -> str:
    rows = []
    for key, label in METRIC_ROWS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float):
                text = "n/a" if math.isnan(value) else f"{value:.4f}"
            else:
                text = str(value)
            rows.append(f'<tr><th>{html.escape(label)}</th><td class="num">{text}</td></tr>')
    return "<table>" + "".join(rows) + "</table>"


def domains_table(metrics: dict) -> str:
    """Per-domain rows of a multi-domain run's metrics (`custom.evaluation.metrics.domain_metrics`), with the one
    applied threshold stated and each domain's own Youden threshold shown as a diagnostic."""
    def cell(entry: dict, key: str) -> str:
        value, interval = entry.get(key, float("nan")), entry.get("intervals", {}).get(key)
        text = "n/a" if math.isnan(value) else f"{value:.4f}"
        if interval and not math.isnan(interval["low"]):
            text += f" ({interval['low']:.4f}&ndash;{interval['high']:.4f})"
        return f'<td class="num">{text}</td>'

    header = ("<tr><th>domain</th><th>Images</th><th>Accuracy</th><th>Sensitivity</th><th>Specificity</th><th>F1</th>"
              "<th>ROC-AUC</th><th>Own Youden threshold (diagnostic, not applied)</th></tr>")
    rows = [f'<tr><th>{html.escape(name)}</th><td class="num">{entry["n"]}</td>'
            + "".join(cell(entry, key) for key in ("accuracy", "sensitivity", "specificity", "f1", "roc_auc"))
            + cell(entry["youden_threshold_diagnostic"], "threshold") + "</tr>"
            for name, entry in metrics["domains"].items()]
    return (f"<p>Every domain is decided at the one overall threshold {metrics['threshold']:.4f} on P(positive) (the "
            "model's operating point); 95 % bootstrap intervals in brackets. The own Youden threshold is what each "
            "domain's evaluated labels would pick: a diagnostic of how far the domains' operating points lie apart, "
            "never applied.</p><table>" + header + "".join(rows) + "</table>")


def build_report(eval_dir: str | os.PathLike, train_dir: str | os.PathLike | None = None, prefix: str | None = None,
                 output: str | os.PathLike | None = None, title: str = "cxr-pneumonia evaluation report") -> Path:
    """Builds `report.html` for an evaluation output folder (as written by `run evaluating`).

    Args:
        eval_dir: folder with `{prefix}_metrics.json`, `{prefix}_predictions.csv` and the run's PNG plots.
        train_dir: the training run's output folder (training curves, class distribution, samples), optional.
        prefix: metrics/predictions prefix ("test", "validation", ...); default: found in `eval_dir`.
        output: where to write the HTML; default `eval_dir/report.html`.
        title: the page title.

    Also writes `{prefix}_pr.png` and `{prefix}_calibration.png` (binary runs) into `eval_dir`. Returns the path.
    """
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise FileNotFoundError(f"{eval_dir}: evaluation output folder does not exist")
    train = Path(train_dir) if train_dir is not None else None
    if train is not None and not train.is_dir():
        raise FileNotFoundError(f"{train}: training output folder does not exist")
    prefix = prefix or find_prefix(eval_dir)
    metrics_path = eval_dir / f"{prefix}_metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path}: no metrics for prefix {prefix!r}")
    metrics = read_metrics(metrics_path)
    predictions = eval_dir / f"{prefix}_predictions.csv"
    if predictions.exists():
        metrics.update(curve_plots(predictions, metrics, eval_dir, prefix))

    used: set[Path] = set()

    def figures(folder: Path | None, named: list[tuple[str, str]]) -> str:
        tags = []
        for name, caption in named:
            path = folder / name if folder is not None else None
            if path is not None and path.exists():
                used.add(path.resolve())
                tags.append(image_tag(path, caption))
        return "".join(tags)

    names = metrics["class_names"]
    positive = f", positive class {html.escape(str(names[1]))}" if len(names) == 2 else ""
    sections = [f"<h2>Metrics ({html.escape(prefix)}{positive})</h2>", metrics_table(metrics)]
    if "domains" in metrics:
        sections += [f"<h2>Metrics per domain ({html.escape(prefix)})</h2>", domains_table(metrics)]
    evaluation = figures(eval_dir, [(f"{prefix}_confusion_matrix.png", "Confusion matrix"),
                                    (f"{prefix}_roc.png", "ROC"), (f"{prefix}_roc_domains.png", "ROC per domain"),
                                    (f"{prefix}_pr.png", "Precision-recall"),
                                    (f"{prefix}_calibration.png", "Calibration")])
    if evaluation:
        sections += ["<h2>Evaluation</h2>", evaluation]
    for folder, heading in ((train, "Training run"), (eval_dir, "Data")):
        found = figures(folder, list(TRAINING_PLOTS))
        if found:
            sections += [f"<h2>{heading}</h2>", found]
    others = [p for p in sorted(eval_dir.glob("*.png")) if p.resolve() not in used]
    if others:
        sections += ["<h2>Galleries</h2>", figures(eval_dir, [(p.name, p.stem.replace("_", " ")) for p in others])]

    sources = f"evaluation: <code>{html.escape(str(eval_dir.resolve()))}</code>" + (
        f", training: <code>{html.escape(str(train.resolve()))}</code>" if train is not None else "")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{sources}</p>\n"
            + "\n".join(sections) + "\n</body></html>\n")
    path = Path(output) if output is not None else eval_dir / "report.html"
    write_text(page, path)
    logger.info("HTML report: %s", path)
    return path
