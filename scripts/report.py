"""Reports on an evaluation run's outputs.

    # metrics of a predictions CSV at any decision threshold, e.g. the validation-picked one vs 0.5
    python scripts/report.py threshold --predictions runs/eval/test_predictions.csv --threshold 0.5
    # self-contained report.html for an evaluation folder (and the training run's plots)
    python scripts/report.py html --eval_dir runs/eval --train_dir runs/train
"""

import json
import sys
from pathlib import Path

import fire
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.metrics import binary_metrics  # noqa: E402
from custom.report_html import build_report  # noqa: E402


def threshold(predictions: str, threshold: float = 0.5, positive: str = "PNEUMONIA") -> None:
    """Prints the binary metrics of a predictions CSV (file, prob_<class>..., true_label) at `threshold`."""
    table = pd.read_csv(predictions)
    if "true_label" not in table:
        raise ValueError(f"{predictions}: no true_label column (unlabelled predictions)")
    if f"prob_{positive}" not in table:
        raise ValueError(f"{predictions}: no prob_{positive} column")
    result = binary_metrics((table["true_label"] == positive).to_numpy(), table[f"prob_{positive}"].to_numpy(), threshold)
    print(json.dumps(result))


def html(eval_dir: str, train_dir: str | None = None, prefix: str | None = None, output: str | None = None) -> None:
    """Writes `report.html` (or `output`) for an evaluation output folder and prints its path."""
    print(build_report(eval_dir, train_dir, prefix, output))


if __name__ == "__main__":
    fire.Fire({"threshold": threshold, "html": html})
