"""Source-only vs AdaBN (`configs/adabn.json`) of trained CNN checkpoints on a target domain, side by side.

Each checkpoint (one per seed) is evaluated by the bundle's own `run evaluating` on the target datalist's
validation and test parts, once as trained (source-only) and once with its BatchNorm statistics re-estimated on the
target training part's images (AdaBN: no label read). Setting: unsupervised, so nothing here is chosen from target
labels; AdaBN has no option to tune, and both methods are reported on both parts. Writes per-run metrics and
mean +- std per method and part to `--results_file`, and prints the tables.

    python scripts/benchmark_adabn.py --dataset_dir ../shared/data --datalist_file data/datalists/adult_split.json \\
        --checkpoints "runs/bench_protocol/resnet18/max_epochs=5/seed0/models/model.pt,..." \\
        --output_dir runs/adabn --results_file docs/results/adabn_adult.json
"""

import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.evaluation.benchmark import (  # noqa: E402
    SPLITS,
    evaluate_checkpoint,
    markdown_table,
    mean_std,
    parse_list,
    reported,
)
from custom.evaluation.timing import run_record  # noqa: E402
from custom.io import write_json  # noqa: E402

METHODS = ("source", "adabn")
RULE = ("none: unsupervised setting, no choice is made from target labels; both methods reported on the target "
        "validation and test parts")


def main(dataset_dir: str, datalist_file: str, checkpoints: str, output_dir: str = "runs/adabn",
         adabn_domain: str = "adult", extra_configs: str = "", bootstrap_replicates: int = 1000,
         results_file: str | None = None) -> None:
    """checkpoints: comma-separated model.pt paths (one per seed); datalist_file: target datalist with training
    (read by AdaBN without labels), validation and test parts, items of `adabn_domain`; extra_configs: config files
    (comma-separated) merged after evaluate.json, e.g. configs/ensemble.json for an ensemble checkpoint."""
    paths = parse_list(checkpoints)
    base = ["configs/train.json", "configs/evaluate.json", *(parse_list(extra_configs) if extra_configs else [])]
    configs = {"source": base, "adabn": [*base, "configs/adabn.json"]}
    summary = {**run_record(), "dataset_dir": dataset_dir, "datalist_file": datalist_file,
               "checkpoints": paths, "configs": configs, "rule": RULE, "runs": {}, "summary": {}}
    for index, ckpt in enumerate(paths):
        runs = summary["runs"][f"checkpoint{index}"] = {}
        for method in METHODS:
            runs[method] = {}
            for split in SPLITS:
                metrics = evaluate_checkpoint(
                    Path(output_dir, f"checkpoint{index}", method, split), ckpt, split, "--dataset_dir", dataset_dir,
                    "--datalist_file", datalist_file, "--adabn_domain", adabn_domain,
                    "--bootstrap_replicates", str(bootstrap_replicates), configs=configs[method])
                runs[method][split] = reported(metrics)
    for method in METHODS:
        summary["summary"][method] = {split: mean_std([r[method][split] for r in summary["runs"].values()])
                                      for split in SPLITS}
    for split in SPLITS:
        print(f"Target {split} part ({'reported only' if split == 'test' else 'no choice made from it'}):")
        print(markdown_table({m: summary["summary"][m][split] for m in METHODS}, len(paths)))
    print(f"Rule: {RULE}")
    if results_file:
        write_json(summary, results_file)


if __name__ == "__main__":
    fire.Fire(main)
