"""Helpers of the seed-sweep benchmark scripts (`scripts/benchmark_cnn.py`, `scripts/benchmark_medsam.py`): run
`python -m monai.bundle` with merged configs, parse list arguments, and summarise metrics over seeds as mean and
sample standard deviation."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

REPORTED = ("accuracy", "roc_auc", "sensitivity", "specificity", "f1")


def run_bundle(*args: str) -> None:
    """``python -m monai.bundle *args`` in the current directory; raises CalledProcessError when it fails."""
    subprocess.run([sys.executable, "-m", "monai.bundle", *args], check=True)


def parse_list(value, cast=str) -> list:
    """Comma-separated string, or what fire makes of one (a tuple for ``a,b``, an int for ``0``) -> `cast` values."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [cast(v) for v in items]


def config_arg(files: Sequence[str]) -> str:
    """Config files -> the ``--config_file "['a.json','b.json']"`` value that merges them in order."""
    return "[" + ",".join(f"'{f}'" for f in files) + "]"


def train_and_evaluate(run_dir: str | Path, configs: Sequence[str], args: Sequence[str]) -> dict:
    """Test metrics of one run: ``training`` with `configs` (output ``run_dir/train``), then ``evaluating`` with
    `configs` + ``configs/evaluate.json`` (``run_dir/eval``), both with the overrides `args`; a run whose
    ``eval/test_metrics.json`` exists is reused, not rerun."""
    run_dir = Path(run_dir)
    metrics_file = run_dir / "eval" / "test_metrics.json"
    if not metrics_file.exists():
        run_bundle("run", "training", "--config_file", config_arg(configs), "--output_dir", str(run_dir / "train"), *args)
        run_bundle("run", "evaluating", "--config_file", config_arg([*configs, "configs/evaluate.json"]),
                   "--output_dir", str(run_dir / "eval"), *args)
    return json.loads(metrics_file.read_text())


def mean_std(results: Sequence[Mapping[str, float]], keys: Sequence[str] = REPORTED) -> dict:
    """``{key: {"mean", "std"}}`` over `results` (std: sample standard deviation, 0 for a single result)."""
    return {k: {"mean": float(np.mean([r[k] for r in results])),
                "std": float(np.std([r[k] for r in results], ddof=1)) if len(results) > 1 else 0.0} for k in keys}


def markdown_table(rows: Mapping[str, Mapping], seeds: int, keys: Sequence[str] = REPORTED) -> str:
    """Markdown table, one row per name: ``mean ± std`` of each key from `mean_std` results."""
    lines = [f"| run | seeds | {' | '.join(keys)} |", f"|---|---|{'---|' * len(keys)}"]
    for name, stats in rows.items():
        cells = " | ".join(f"{stats[k]['mean']:.3f} ± {stats[k]['std']:.3f}" for k in keys)
        lines.append(f"| {name} | {seeds} | {cells} |")
    return "\n".join(lines)
