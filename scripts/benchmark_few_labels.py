"""Few target labels: the pediatric model adapted with 0, 25, 50, 100, 200 and all adult training labels, side by
side on the adult test part and the pediatric official test, 3 seeds, and the learning-curve plot.

Methods (`--method`), each run starting from `init_ckpt` and seeing about ``train_samples`` images whatever the
budget (same compute per point of the curve):

* ``finetune`` (``configs/train.json`` + ``configs/finetune.json`` on the adult datalist): the labelled items are a
  stratified subset of the adult training part (`custom.data.label_budget`: nested over budgets for one seed, drawn
  by the seed); checkpoint and threshold picked on the adult validation part.
* ``joint`` (+ ``configs/finetune_joint.json`` on the pediatric + adult datalist the script writes into
  `output_dir`): the same adult items trained together with ``replay_items`` pediatric training images
  (`custom.data.joint_label_budget`), so that the model keeps rehearsing children; checkpoint and threshold picked on
  the pooled pediatric + adult validation parts.

Budget 0 is `init_ckpt` evaluated as it is (one row, no seed). Setting: few labels (issue 12): the adult labels read
for choices are the budget's training items and the adult validation part (288 images); the adult test part and the
pediatric official test are reported only. Writes per-run metrics and mean +- std per budget to `--results_file`,
the curve to `--plot_file` (and, with budget 0, into that evaluation's adult-test folder, whose report.html is rebuilt
to show it), and prints the tables.

    python scripts/benchmark_few_labels.py --dataset_dir ../shared/data --datalist_file data/datalists/adult_split.json \\
        --pediatric_dir ../shared/data/pediatric_cxr --init_ckpt models/model_pediatric.pt --method finetune \\
        --output_dir runs/few_labels --results_file docs/results/few_labels_adult.json --plot_file docs/few_labels_adult.png
"""

import shutil
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.evaluation.benchmark import (  # noqa: E402
    evaluate_checkpoint,
    joint_datalist,
    markdown_table,
    mean_std,
    parse_list,
    reported,
    train_and_evaluate,
)
from custom.evaluation.plots import plot_label_curve  # noqa: E402
from custom.evaluation.report_html import build_report  # noqa: E402
from custom.evaluation.timing import run_record  # noqa: E402
from custom.io import write_json  # noqa: E402

METHODS = {"finetune": ["configs/train.json", "configs/finetune.json"],
           "joint": ["configs/train.json", "configs/finetune.json", "configs/finetune_joint.json"]}
SELECTED_ON = {"finetune": "the adult validation part", "joint": "the pooled pediatric + adult validation parts"}
PARTS = {"adult_validation": "adult validation part (picks checkpoint and threshold)",
         "adult_test": "adult test part (reported only)", "pediatric_test": "pediatric official test (reported only)"}
RULE = ("none across budgets (each budget is reported); within a run the checkpoint and threshold are picked on "
        "{selected_on}, as the few-label setting allows")


def main(dataset_dir: str, datalist_file: str, pediatric_dir: str, init_ckpt: str = "models/model_pediatric.pt",
         method: str = "finetune", budgets="0,25,50,100,200,all", seeds="0,1,2", output_dir: str = "runs/few_labels",
         extra: str = "", results_file: str | None = None, plot_file: str | None = None) -> None:
    """budgets: labelled adult training images per run ("all": the whole training part; 0: `init_ckpt` as it is);
    method: "finetune" or "joint" (see above); extra: more ``--id value`` overrides for the runs (e.g.
    "--train_samples 3072")."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    configs = METHODS[method]
    target = ["--dataset_dir", dataset_dir, "--datalist_file", datalist_file]
    pediatric = ["--dataset_dir", pediatric_dir]
    training = target if method == "finetune" else ["--dataset_dir", dataset_dir, "--datalist_file", joint_datalist(
        pediatric_dir, datalist_file, dataset_dir, Path(output_dir, "pediatric_adult.json"))]
    rule = RULE.format(selected_on=SELECTED_ON[method])
    summary = {**run_record(), "method": method, "dataset_dir": dataset_dir, "datalist_file": datalist_file,
               "pediatric_dir": pediatric_dir, "init_ckpt": init_ckpt, "configs": configs, "extra": extra,
               "parts": PARTS, "rule": rule, "runs": {}, "summary": {}}
    for budget in parse_list(budgets):
        runs = summary["runs"][str(budget)] = {}
        if str(budget) == "0":
            out = Path(output_dir, "labels=0")
            parts = {"adult_validation": evaluate_checkpoint(out / "adult_validation", init_ckpt, "validation", *target),
                     "adult_test": evaluate_checkpoint(out / "adult_test", init_ckpt, "test", *target),
                     "pediatric_test": evaluate_checkpoint(out / "pediatric_test", init_ckpt, "test", *pediatric)}
            runs["init"] = {part: reported(metrics) for part, metrics in parts.items()}
        for seed in ([] if str(budget) == "0" else parse_list(seeds, int)):
            run = Path(output_dir, f"labels={budget}", f"seed{seed}")
            args = [*training, "--seed", str(seed), "--ckpt_dir", str(run / "models"), "--init_ckpt", init_ckpt,
                    "--label_budget", "None" if budget == "all" else str(budget), "--make_plots", "False",
                    *extra.split()]
            metrics = train_and_evaluate(run, configs, args)
            if method == "finetune":
                parts = {"adult_validation": metrics["validation"], "adult_test": metrics["test"],
                         "pediatric_test": evaluate_checkpoint(run / "eval_pediatric", str(run / "models" / "model.pt"), "test",
                                                    *pediatric)}
            else:  # one evaluation per split covers both domains
                parts = {"adult_validation": metrics["validation"]["domains"]["adult"],
                         "adult_test": metrics["test"]["domains"]["adult"],
                         "pediatric_test": metrics["test"]["domains"]["pediatric"]}
            runs[f"seed{seed}"] = {part: reported(metrics) for part, metrics in parts.items()}
        summary["summary"][str(budget)] = {part: mean_std([r[part] for r in runs.values()]) for part in PARTS}
    for part, what in PARTS.items():
        print(f"{what}:")
        print(markdown_table({f"{b} labels": s[part] for b, s in summary["summary"].items()}, len(parse_list(seeds, int))))
    print(f"Rule: {rule}")
    if plot_file:
        count = {name: _count(name, datalist_file, dataset_dir) for name in summary["summary"]}
        names = sorted(count, key=count.get)
        counts = [count[name] for name in names]
        curves = {label: ([summary["summary"][n][part]["roc_auc"]["mean"] for n in names],
                          [summary["summary"][n][part]["roc_auc"]["std"] for n in names])
                  for part, label in (("adult_test", "adult test"), ("pediatric_test", "pediatric official test"))}
        title = {"finetune": "Fine-tuning", "joint": "Joint training (pediatric replay)"}[method]
        plot_label_curve(counts, curves, plot_file, title=f"{title}: pediatric model + adult labels")
        baseline = Path(output_dir, "labels=0", "adult_test")
        if baseline.is_dir():  # the report of the model before adaptation shows the curve as a gallery
            shutil.copyfile(plot_file, baseline / f"few_labels_{method}.png")
            build_report(baseline)
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
