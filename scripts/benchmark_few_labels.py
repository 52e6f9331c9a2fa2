"""Few target labels: the pediatric model fine-tuned on 0, 25, 50, 100, 200 and all adult training labels, side by
side on the adult test part and the pediatric official test, 3 seeds, and the learning-curve plot.

Each budget > 0 is one run of ``configs/train.json`` + ``configs/finetune.json`` per seed: the labelled items are a
stratified subset of the target training part (`custom.data.label_budget`: nested over budgets for one seed, drawn
by the seed), the weights start from `init_ckpt`, and the run sees about ``train_samples`` images whatever the budget
(same compute per point of the curve). Budget 0 is `init_ckpt` evaluated as it is (one row, no seed).

Setting: few labels (issue 12). Adult labels read for choices: the budget's training items, and the adult validation
part (288 images), which picks each run's checkpoint (best validation ROC-AUC) and its threshold, as in every
training run of this bundle. The adult test part and the pediatric official test are reported only. Writes per-run
metrics and mean +- std per budget to `--results_file`, the curve to `--plot_file`, and prints the tables.

    python scripts/benchmark_few_labels.py --dataset_dir ../shared/data --datalist_file data/datalists/adult_split.json \\
        --pediatric_dir ../shared/data/pediatric_cxr --init_ckpt models/model.pt --output_dir runs/few_labels \\
        --results_file docs/results/few_labels_adult.json --plot_file docs/few_labels_adult.png
"""

import json
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.evaluation.benchmark import (  # noqa: E402
    REPORTED,
    config_arg,
    markdown_table,
    mean_std,
    parse_list,
    run_bundle,
    train_and_evaluate,
)
from custom.evaluation.plots import plot_label_curve  # noqa: E402
from custom.evaluation.timing import run_record  # noqa: E402
from custom.io import write_json  # noqa: E402

CONFIGS = ["configs/train.json", "configs/finetune.json"]
PARTS = {"adult_validation": "adult validation part (picks checkpoint and threshold)",
         "adult_test": "adult test part (reported only)", "pediatric_test": "pediatric official test (reported only)"}
RULE = ("none across budgets (each budget is reported); within a run the checkpoint and threshold are picked on the "
        "adult validation part, as the few-label setting allows")


def evaluate(output_dir: Path, ckpt: str, split: str, *args: str) -> dict:
    """Metrics of `ckpt` on `split` by the bundle's own ``run evaluating`` (reused when already written)."""
    metrics_file = output_dir / f"{split}_metrics.json"
    if not metrics_file.exists():
        run_bundle("run", "evaluating", "--config_file", config_arg(["configs/train.json", "configs/evaluate.json"]),
                   "--ckpt_path", ckpt, "--eval_split", split, "--output_dir", str(output_dir),
                   "--train_output_dir", str(output_dir / "no_training_run"), *args)
    metrics = json.loads(metrics_file.read_text())
    return {k: metrics[k] for k in (*REPORTED, "threshold", "n")}


def main(dataset_dir: str, datalist_file: str, pediatric_dir: str, init_ckpt: str = "models/model.pt",
         budgets="0,25,50,100,200,all", seeds="0,1,2", output_dir: str = "runs/few_labels", extra: str = "",
         results_file: str | None = None, plot_file: str | None = None) -> None:
    """budgets: labelled adult training images per run ("all": the whole training part; 0: `init_ckpt` as it is);
    extra: more ``--id value`` overrides for the fine-tuning runs (e.g. "--train_samples 3072")."""
    target = ["--dataset_dir", dataset_dir, "--datalist_file", datalist_file]
    pediatric = ["--dataset_dir", pediatric_dir]
    summary = {**run_record(), "dataset_dir": dataset_dir, "datalist_file": datalist_file,
               "pediatric_dir": pediatric_dir, "init_ckpt": init_ckpt, "configs": CONFIGS, "extra": extra,
               "parts": PARTS, "rule": RULE, "runs": {}, "summary": {}}
    for budget in parse_list(budgets):
        runs = summary["runs"][str(budget)] = {}
        if str(budget) == "0":
            out = Path(output_dir, "labels=0")
            runs["init"] = {"adult_validation": evaluate(out / "adult_validation", init_ckpt, "validation", *target),
                            "adult_test": evaluate(out / "adult_test", init_ckpt, "test", *target),
                            "pediatric_test": evaluate(out / "pediatric_test", init_ckpt, "test", *pediatric)}
        for seed in ([] if str(budget) == "0" else parse_list(seeds, int)):
            run = Path(output_dir, f"labels={budget}", f"seed{seed}")
            args = [*target, "--seed", str(seed), "--ckpt_dir", str(run / "models"), "--init_ckpt", init_ckpt,
                    "--label_budget", "None" if budget == "all" else str(budget), "--make_plots", "False",
                    *extra.split()]
            metrics = train_and_evaluate(run, CONFIGS, args)
            runs[f"seed{seed}"] = {
                "adult_validation": {k: metrics["validation"][k] for k in (*REPORTED, "threshold", "n")},
                "adult_test": {k: metrics["test"][k] for k in (*REPORTED, "threshold", "n")},
                "pediatric_test": evaluate(run / "eval_pediatric", str(run / "models" / "model.pt"), "test", *pediatric)}
        summary["summary"][str(budget)] = {part: mean_std([r[part] for r in runs.values()]) for part in PARTS}
    for part, what in PARTS.items():
        print(f"{what}:")
        print(markdown_table({f"{b} labels": s[part] for b, s in summary["summary"].items()}, len(parse_list(seeds, int))))
    print(f"Rule: {RULE}")
    if plot_file:
        names = list(summary["summary"])
        counts = [_count(name, datalist_file, dataset_dir) for name in names]
        curves = {label: ([summary["summary"][n][part]["roc_auc"]["mean"] for n in names],
                          [summary["summary"][n][part]["roc_auc"]["std"] for n in names])
                  for part, label in (("adult_test", "adult test"), ("pediatric_test", "pediatric official test"))}
        plot_label_curve(counts, curves, plot_file, title="Fine-tuning the pediatric model on adult labels")
    if results_file:
        write_json(summary, results_file)


def _count(budget: str, datalist_file: str, dataset_dir: str) -> int:
    """Number of labelled images a budget name stands for ("all": the datalist's training part)."""
    if budget != "all":
        return int(budget)
    from custom.data import load_datalist

    return len(load_datalist(datalist_file, base_dir=dataset_dir)["training"])


if __name__ == "__main__":
    fire.Fire(main)
