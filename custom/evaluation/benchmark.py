"""Helpers of the seed-sweep benchmark scripts (`scripts/benchmark_cnn.py`, `scripts/benchmark_medsam.py`,
`scripts/benchmark_few_labels.py`, `scripts/benchmark_adaptation.py`).

Protocol: every run is trained with the options' own overrides and one shared ``split_seed``, then evaluated with
its validation-picked checkpoint and threshold on the validation split *and* the test split. Options are compared
on validation only (`pick_on_validation`); test metrics are reported, never used for a choice. A finished run is
reused only if its stored key (merged config hash + datalist hash + code version) equals today's, otherwise it is
run again from scratch.
"""

from __future__ import annotations

import ast
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from monai.bundle import ConfigParser

from custom.io import write_json
from custom.models.provenance import code_version, config_hash, datalist_hash

logger = logging.getLogger(__name__)

REPORTED = ("accuracy", "roc_auc", "sensitivity", "specificity", "f1")
VALIDATION_REPORTED = ("roc_auc", "accuracy", "sensitivity", "specificity", "ece")
SPLITS = ("validation", "test")
EVAL_FOLDERS = {"validation": "eval_validation", "test": "eval"}  # where `train_and_evaluate` evaluates each split
RULE = "highest mean validation ROC-AUC over seeds (ties within 0.001: higher mean validation accuracy)"


def run_bundle(*args: str) -> None:
    """``python -m monai.bundle *args`` in the current directory; raises CalledProcessError when it fails."""
    subprocess.run([sys.executable, "-m", "monai.bundle", *args], check=True)


def parse_list(value, cast=str, sep: str = ",") -> list:
    """`sep`-separated string, or what fire makes of one (a tuple for ``a,b``, an int for ``0``) -> `cast` values."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(sep)
    return [cast(v) for v in items]


def vary_variants(vary: str | None, values) -> dict[str, list[str]]:
    """``--vary ID --values "a;b"`` -> ``{"ID=a": ["--ID", "a"], ...}`` (``{"": []}`` without `vary`). A `values`
    that fire read as one literal (``"[1,2]"`` -> a list, ``"5"`` -> an int) is one value, written back compactly;
    raises ValueError when `vary` has no value."""
    if not vary:
        return {"": []}
    texts = values.split(";") if isinstance(values, str) else [json.dumps(values, separators=(",", ":"))]
    texts = [text.strip() for text in texts if text.strip()]
    if not texts:
        raise ValueError(f"--vary {vary} needs --values (';'-separated), got {values!r}")
    return {f"{vary}={text}": ["--" + vary, text] for text in texts}


def config_arg(files: Sequence[str]) -> str:
    """Config files -> the ``--config_file "['a.json','b.json']"`` value that merges them in order."""
    return "[" + ",".join(f"'{f}'" for f in files) + "]"


def parse_overrides(args: Sequence[str]) -> dict:
    """``["--id", "value", "--flag=value", ...]`` -> ``{id: value}``, values read as Python literals where they
    are one (as fire reads them for ``monai.bundle run``), else kept as strings."""
    overrides, args = {}, list(args)
    while args:
        name = args.pop(0)
        if not name.startswith("--"):
            raise ValueError(f"expected an --id before {name!r} in {args}")
        name, _, value = name[2:].partition("=")
        if not _:
            value = args.pop(0)
        try:
            overrides[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[name] = value
    return overrides


def run_key(configs: Sequence[str], args: Sequence[str], root: str | Path = ".") -> dict:
    """What identifies a run: hash of the merged config with `args` applied, hash of its datalist, code version."""
    parser = ConfigParser()
    parser.read_config(list(configs))
    parser.update(parse_overrides(args))
    key = {"config_hash": config_hash(parser.get()), "datalist_hash": datalist_hash(parser.get_parsed_content("datalist")),
           "code_version": code_version(root)}
    return {**key, "key": "-".join(v[:16] for v in key.values())}


def train_and_evaluate(run_dir: str | Path, configs: Sequence[str], args: Sequence[str]) -> dict:
    """``{"validation": metrics, "test": metrics}`` of one run: ``training`` with `configs` (output
    ``run_dir/train``), then ``evaluating`` with `configs` + ``configs/evaluate.json`` on the validation split
    (``run_dir/eval_validation``) and the test split (``run_dir/eval``), all with the overrides `args`. Stored in
    ``run_dir/run.json`` with the run key; reused while the key matches, rerun from scratch when it does not."""
    run_dir = Path(run_dir)
    record_file = run_dir / "run.json"
    key = run_key(configs, args)
    if record_file.exists():
        record = json.loads(record_file.read_text())
        if record.get("key") == key["key"]:
            return {split: record[split] for split in SPLITS}
        logger.warning("%s: stored run key %s != %s (config, data or code changed): running it again",
                       run_dir, record.get("key"), key["key"])
        shutil.rmtree(run_dir)
    run_bundle("run", "training", "--config_file", config_arg(configs), "--output_dir", str(run_dir / "train"), *args)
    record = {**key, "configs": list(configs), "args": list(args)}
    for split, folder in EVAL_FOLDERS.items():
        run_bundle("run", "evaluating", "--config_file", config_arg([*configs, "configs/evaluate.json"]),
                   "--output_dir", str(run_dir / folder), "--eval_split", split, *args)
        record[split] = json.loads((run_dir / folder / f"{split}_metrics.json").read_text())
    write_json(record, record_file)
    return {split: record[split] for split in SPLITS}


def evaluate_checkpoint(output_dir: str | Path, ckpt: str, split: str, *args: str,
                        configs: Sequence[str] = ("configs/train.json", "configs/evaluate.json")) -> dict:
    """The metrics JSON of `ckpt` on `split` by the bundle's own ``run evaluating`` with `configs` and the overrides
    `args`, written into `output_dir` (reused when already there)."""
    output_dir = Path(output_dir)
    metrics_file = output_dir / f"{split}_metrics.json"
    if not metrics_file.exists():
        run_bundle("run", "evaluating", "--config_file", config_arg(configs), "--ckpt_path", ckpt,
                   "--eval_split", split, "--output_dir", str(output_dir),
                   "--train_output_dir", str(output_dir / "no_training_run"), *args)
    return json.loads(metrics_file.read_text())


def reported(metrics: Mapping) -> dict:
    """The metrics a results file keeps of one evaluation."""
    return {k: metrics[k] for k in (*REPORTED, "threshold", "n")}


def joint_datalist(pediatric_dir: str, datalist_file: str, dataset_dir: str, path: str | Path) -> str:
    """Writes the pediatric (Kermany layout, official test) + adult (`datalist_file`, relative to `dataset_dir`)
    datalist, items tagged by ``domain``, to `path`; returns its path."""
    from custom.data import build_kermany, load_datalist, write_datalist
    from custom.data.domains import combine_datalists

    write_datalist(combine_datalists([build_kermany(pediatric_dir), load_datalist(datalist_file, base_dir=dataset_dir)]),
                   path)
    return str(path)


def predictions_file(run_dir: str | Path, split: str) -> Path:
    """The per-image predictions CSV that `train_and_evaluate` leaves in `run_dir` for `split`."""
    return Path(run_dir, EVAL_FOLDERS[split], f"{split}_predictions.csv")


def spread(values: Sequence[float]) -> dict:
    """``{"mean", "std", "n"}`` of `values` (std: sample standard deviation, 0 for a single value; n: how many)."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values)}


def mean_std(results: Sequence[Mapping[str, float]], keys: Sequence[str] = REPORTED) -> dict:
    """``{key: spread}`` of each key over `results`."""
    return {k: spread([r[k] for r in results]) for k in keys}


def pick_on_validation(validation: Mapping[str, Mapping]) -> str:
    """The winning option under `RULE`, from ``{option: mean_std(validation results)}`` alone."""
    best_auc = max(stats["roc_auc"]["mean"] for stats in validation.values())
    close = [o for o, stats in validation.items() if stats["roc_auc"]["mean"] >= best_auc - 0.001]
    return max(close, key=lambda o: validation[o]["accuracy"]["mean"])


def format_spread(stats: Mapping, runs: int, digits: int = 3) -> str:
    """A `spread` as ``mean ± std``, or the mean alone when one run stands behind it (its count ``n``; `runs` for
    spreads written before they recorded it)."""
    mean = f"{stats['mean']:.{digits}f}"
    return mean if stats.get("n", runs) == 1 else f"{mean} ± {stats['std']:.{digits}f}"


def markdown_table(rows: Mapping[str, Mapping], seeds: int, keys: Sequence[str] = REPORTED) -> str:
    """Markdown table, one row per name: `format_spread` of each key from `mean_std` results, and the number of runs
    behind the row (its `spread` count; `seeds` for results written before spreads recorded it)."""
    lines = [f"| run | seeds | {' | '.join(keys)} |", f"|---|---|{'---|' * len(keys)}"]
    for name, stats in rows.items():
        cells = " | ".join(format_spread(stats[k], seeds) for k in keys)
        lines.append(f"| {name} | {stats[keys[0]].get('n', seeds)} | {cells} |")
    return "\n".join(lines)


def validation_first_report(summary: Mapping, seeds: int) -> str:
    """Validation table, the rule and its winner, then the test table (for reporting only)."""
    return "\n".join([
        "Validation (shared split_seed; decides):", markdown_table(summary["validation"], seeds, VALIDATION_REPORTED),
        f"Rule: {summary['rule']} -> winner: {summary['winner']}", "",
        "Test (reported, never used for a choice):", markdown_table(summary["test"], seeds)])
