"""Reports on an evaluation run's outputs.

    # metrics of a predictions CSV at any decision threshold, e.g. the validation-picked one vs 0.5
    python scripts/report.py threshold --predictions runs/eval/test_predictions.csv --threshold 0.5 \
        [--results_file docs/results/shipped_test_threshold_0.5.json]
    # patient-level bootstrap 95 % intervals at a threshold, optionally paired against a second model's predictions
    python scripts/report.py bootstrap --predictions runs/eval/test_predictions.csv --threshold 0.42 \
        [--other runs/eval_b/test_predictions.csv --other_threshold 0.5] [--output bootstrap.json]
    # self-contained report.html for an evaluation folder (and the training run's plots)
    python scripts/report.py html --eval_dir runs/eval --train_dir runs/train
    # how a checkpoint was trained (bundle version, commit, config, seeds, data hash, times, versions, device)
    python scripts/report.py provenance models/model.pt [--config True]
"""

import json
import sys
from pathlib import Path

import fire
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.evaluation.metrics import (  # noqa: E402
    binary_metrics,
    bootstrap_intervals,
    paired_bootstrap,
)
from custom.evaluation.operating_point import labelled_predictions  # noqa: E402
from custom.evaluation.report_html import build_report  # noqa: E402
from custom.evaluation.timing import run_record  # noqa: E402
from custom.io import write_json  # noqa: E402
from custom.models.trained_model import load_checkpoint  # noqa: E402


def threshold(predictions: str, threshold: float = 0.5, positive: str = "PNEUMONIA",
              results_file: str | None = None) -> None:
    """Prints the binary metrics of a predictions CSV (file, prob_<class>..., true_label) at `threshold`;
    `results_file` also gets them, atomically, after the date, command, device and versions."""
    table = labelled_predictions(predictions, positive)
    result = binary_metrics((table["true_label"] == positive).to_numpy(), table[f"prob_{positive}"].to_numpy(), threshold)
    if results_file is not None:
        write_json({**run_record(packages=("scikit-learn",)), "predictions": predictions, "positive": positive,
                    **result}, results_file)
    print(json.dumps(result))


def bootstrap(predictions: str, threshold: float, other: str | None = None, other_threshold: float | None = None,
              positive: str = "PNEUMONIA", n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
              output: str | None = None, domain: str | None = None) -> None:
    """Prints (and writes to `output`) bootstrap intervals of accuracy, sensitivity, specificity and ROC-AUC of a
    predictions CSV at `threshold`, resampling patients (Kermany file-name ids, else one image per id); with `other`
    (a predictions CSV of the same files) the paired comparison other - predictions at `other_threshold`; with
    `domain`, on that domain's rows of both files only."""
    from custom.data.datalists import (
        kermany_patient_id,  # imports torch + MONAI (~10 s): only for this command
    )

    table = labelled_predictions(predictions, positive, domain)
    labels = (table["true_label"] == positive).to_numpy()
    scores = table[f"prob_{positive}"].to_numpy()
    groups = table["file"].map(kermany_patient_id).to_numpy()
    if other is None:
        result = bootstrap_intervals(labels, scores, threshold, groups, n_boot, alpha, seed)
    else:
        if other_threshold is None:
            raise ValueError("--other needs --other_threshold")
        second = labelled_predictions(other, positive, domain)
        files, other_files = set(table["file"]), set(second["file"])
        if files != other_files or len(files) != len(table) or len(other_files) != len(second):
            raise ValueError(f"{predictions} and {other} must list the same files once each: {len(table)} and "
                             f"{len(second)} rows, {len(files - other_files)} files only in the first, "
                             f"{len(other_files - files)} only in the second")
        second = second.set_index("file").loc[table["file"]]
        if not np.array_equal(second["true_label"].to_numpy(), table["true_label"].to_numpy()):
            raise ValueError(f"{predictions} and {other} disagree on true_label")
        result = paired_bootstrap(labels, scores, second[f"prob_{positive}"].to_numpy(), threshold, other_threshold,
                                  groups, n_boot, alpha, seed)
    if output is not None:
        write_json(result, output)
    print(json.dumps(result))


def html(eval_dir: str, train_dir: str | None = None, prefix: str | None = None, output: str | None = None) -> None:
    """Writes `report.html` (or `output`) for an evaluation output folder and prints its path."""
    print(build_report(eval_dir, train_dir, prefix, output))


def provenance(checkpoint: str, config: bool = False) -> None:
    """Prints a checkpoint's provenance record as JSON (`config=True`: with the full merged config)."""
    record = load_checkpoint(checkpoint).get("provenance")
    if record is None:
        raise ValueError(f"{checkpoint}: no provenance recorded (trained before bundle 0.5.0, or not by train.json)")
    print(json.dumps(record if config else {k: v for k, v in record.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    fire.Fire({"threshold": threshold, "bootstrap": bootstrap, "html": html, "provenance": provenance})
