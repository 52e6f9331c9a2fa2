"""Unsupervised adaptation of the pediatric CNN to adult radiographs, end to end on images: source-only, DANN,
CORAL, MMD and domain-generalising augmentation side by side on both domains, 3 seeds.

Each run (``configs/train.json`` + ``configs/adapt_cnn.json`` on the pediatric + adult datalist the script writes
into `output_dir`) starts from `init_ckpt` and trains on the labelled pediatric training part together with the
adult training part's images, labels removed (`custom.data.domain_items(..., labelled=False)`), aligning the two
domains' penultimate features by ``--alignment`` (`custom.adaptation.engines.DANNTrainer`); checkpoint and threshold
are picked on the pediatric validation part. ``dg`` trains the same way with ``configs/augment_domain.json``'s
appearance augmentation (histogram shift, blur, simulated low resolution) and no alignment (``domain_weight`` 0: no
adult image enters the loss), ``dann_dg`` with both. ``source`` is `init_ckpt` as it is (one row, no seed).

Setting: unsupervised (issue 12, setting 1). No adult label is read for any choice: within a run selection uses
pediatric validation; across methods the rule below uses pediatric validation too. The adult validation and test
parts and the pediatric official test are reported only. Writes per-run metrics and mean +- std per method and part
to `--results_file`, and prints the tables and the rule.

    python scripts/benchmark_adaptation.py --dataset_dir ../shared/data --datalist_file data/datalists/adult_split.json \\
        --pediatric_dir ../shared/data/pediatric_cxr --init_ckpt models/model_pediatric.pt --methods source,dann,coral,mmd \\
        --output_dir runs/adaptation --results_file docs/results/adaptation_adult.json
"""

import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.evaluation.benchmark import (  # noqa: E402
    SPLITS,
    evaluate_checkpoint,
    joint_datalist,
    markdown_table,
    mean_std,
    parse_list,
    pick_on_validation,
    reported,
    train_and_evaluate,
)
from custom.evaluation.timing import run_record  # noqa: E402
from custom.io import write_json  # noqa: E402

CONFIGS = ["configs/train.json", "configs/adapt_cnn.json"]
DG = "configs/augment_domain.json"
METHODS = {  # name: (configs, overrides)
    "dann": (CONFIGS, ["--alignment", "adversarial"]),
    "coral": (CONFIGS, ["--alignment", "coral"]),
    "mmd": (CONFIGS, ["--alignment", "mmd"]),
    "dg": ([*CONFIGS, DG], ["--domain_weight", "0"]),
    "dann_dg": ([*CONFIGS, DG], ["--alignment", "adversarial"]),
}
PARTS = {"pediatric_validation": "pediatric validation part (picks checkpoint, threshold and the method)",
         "adult_validation": "adult validation part (reported only: this setting reads no adult label)",
         "adult_test": "adult test part (reported only)",
         "pediatric_test": "pediatric official test (reported only)"}
RULE = ("unsupervised: the method with the highest mean pediatric validation ROC-AUC (ties within 0.001: higher "
        "mean accuracy); no adult label is read for a choice")


def domain_parts(metrics: dict) -> dict:
    """``{"validation": metrics, "test": metrics}`` of a pediatric + adult evaluation -> the four reported parts."""
    return {f"{domain}_{'validation' if split == 'validation' else 'test'}": reported(metrics[split]["domains"][domain])
            for split in SPLITS for domain in ("pediatric", "adult")}


def main(dataset_dir: str, datalist_file: str, pediatric_dir: str, init_ckpt: str = "models/model_pediatric.pt",
         methods="source,dann,coral,mmd", seeds="0,1,2", output_dir: str = "runs/adaptation", extra: str = "",
         results_file: str | None = None) -> None:
    """methods: "source" and any of `METHODS`; extra: more ``--id value`` overrides for the training runs
    (e.g. "--domain_weight 0.3")."""
    methods = parse_list(methods)
    unknown = [m for m in methods if m != "source" and m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {['source', *METHODS]}")
    data = ["--dataset_dir", dataset_dir, "--datalist_file",
            joint_datalist(pediatric_dir, datalist_file, dataset_dir, Path(output_dir, "pediatric_adult.json"))]
    summary = {**run_record(), "dataset_dir": dataset_dir, "datalist_file": datalist_file,
               "pediatric_dir": pediatric_dir, "init_ckpt": init_ckpt, "methods": METHODS, "extra": extra,
               "parts": PARTS, "rule": RULE, "runs": {}, "summary": {}}
    for method in methods:
        runs = summary["runs"][method] = {}
        if method == "source":
            runs["init"] = domain_parts({split: evaluate_checkpoint(Path(output_dir, "source", split), init_ckpt, split,
                                                                    *data) for split in SPLITS})
        for seed in ([] if method == "source" else parse_list(seeds, int)):
            run = Path(output_dir, method, f"seed{seed}")
            configs, overrides = METHODS[method]
            args = [*data, "--seed", str(seed), "--ckpt_dir", str(run / "models"), "--init_ckpt", init_ckpt,
                    *overrides, "--make_plots", "False", *extra.split()]
            runs[f"seed{seed}"] = domain_parts(train_and_evaluate(run, configs, args))
        summary["summary"][method] = {part: mean_std([r[part] for r in runs.values()]) for part in PARTS}
    summary["winner"] = pick_on_validation({m: s["pediatric_validation"] for m, s in summary["summary"].items()})
    for part, what in PARTS.items():
        print(f"{what}:")
        print(markdown_table({m: s[part] for m, s in summary["summary"].items()}, len(parse_list(seeds, int))))
    print(f"Rule: {RULE} -> winner: {summary['winner']}")
    if results_file:
        write_json(summary, results_file)


if __name__ == "__main__":
    fire.Fire(main)
