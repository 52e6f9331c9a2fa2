"""Metrics of a predictions CSV (as written by the evaluate config) at any decision threshold, e.g. to compare the
validation-picked threshold with 0.5:

    python scripts/report.py --predictions runs/eval/test_predictions.csv --threshold 0.5
"""

import json
import sys
from pathlib import Path

import fire
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.metrics import binary_metrics  # noqa: E402


def main(predictions: str, threshold: float = 0.5, positive: str = "PNEUMONIA") -> None:
    table = pd.read_csv(predictions)
    if "true_label" not in table:
        raise ValueError(f"{predictions}: no true_label column (unlabelled predictions)")
    result = binary_metrics((table["true_label"] == positive).to_numpy(), table[f"prob_{positive}"].to_numpy(), threshold)
    print(json.dumps(result))


if __name__ == "__main__":
    fire.Fire(main)
