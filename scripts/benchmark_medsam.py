"""MedSAM-encoder heads over several seeds through the bundle configs: pooling variants (avg, avg+max, attention,
4x4 grid) on the frozen encoder, and source-only / DANN / contrastive / DANN + contrastive (cached embeddings) and
DANN + augmentation (live encoder, GPU) from a labelled source to an unlabelled target domain. All seeds share one
validation split (`split_seed`); the winner is picked on source validation only; then the official source test split
and, for the domain methods, the target's labelled evaluation part (never used in training or for a choice) are
reported. Finished (method, seed) runs are reused while their run key matches, so an interrupted benchmark resumes.
Writes
`<output_dir>/summary.json` and prints Markdown tables.

    python scripts/embed.py --datalist kermany.json --cache_dir runs/embeddings --backend onnxruntime  # fill the cache
    python scripts/benchmark_medsam.py --dataset_dir ../shared/data/pediatric_cxr \
        --target_dataset_dir ../shared/data/adult_cxr --cache_dir runs/embeddings --seeds 0,1,2
"""

import datetime
import json
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.evaluation.benchmark import (  # noqa: E402
    REPORTED,
    RULE,
    SPLITS,
    VALIDATION_REPORTED,
    config_arg,
    markdown_table,
    mean_std,
    parse_list,
    pick_on_validation,
    run_bundle,
    train_and_evaluate,
    validation_first_report,
)
from custom.io import write_json  # noqa: E402

FROZEN = ["configs/train.json", "configs/train_medsam_frozen.json"]
DANN = [*FROZEN, "configs/train_dann.json"]
# method -> (configs, overrides); the domain methods share one architecture (adapter + label head + domain head)
METHODS = {
    "avg": (FROZEN, ["--pooling", "avg"]),
    "avgmax": (FROZEN, ["--pooling", "avgmax"]),
    "attention": (FROZEN, ["--pooling", "attention"]),
    "grid": (FROZEN, ["--pooling", "grid"]),
    "conv": (FROZEN, ["--pooling", "conv"]),
    "source_only": (DANN, ["--domain_weight", "0.0", "--contrastive_weight", "0.0"]),
    "dann": (DANN, ["--domain_weight", "1.0", "--contrastive_weight", "0.0"]),
    "contrastive": (DANN, ["--domain_weight", "0.0", "--contrastive_weight", "0.5"]),
    "dann_contrastive": (DANN, ["--domain_weight", "1.0", "--contrastive_weight", "0.5"]),
    # live encoder on augmented images of both domains (GPU: every epoch re-encodes every image)
    "dann_augment": ([*DANN, "configs/train_dann_augment.json"], ["--domain_weight", "1.0", "--contrastive_weight", "0.0"]),
}
DOMAIN_METHODS = {m for m, (configs, _) in METHODS.items() if "configs/train_dann.json" in configs}


def evaluate_with_backend(run: Path, configs: list[str], args: list[str], backend: str) -> dict:
    """``{split: metrics}`` of a finished run's checkpoint (its validation-picked threshold) on embeddings from another
    encoder `backend` (e.g. exact ``openvino`` for a head trained on ``openvino-bf16`` embeddings); reused when its
    metrics files exist."""
    metrics = {}
    for split in SPLITS:
        folder = run / f"eval_{backend}_{split}"
        if not (folder / f"{split}_metrics.json").is_file():
            run_bundle("run", "evaluating", "--config_file", config_arg([*configs, "configs/evaluate.json"]),
                       "--output_dir", str(folder), "--eval_split", split, *args, "--encoder_backend", backend,
                       "--bootstrap_replicates", "0")
        metrics[split] = json.loads((folder / f"{split}_metrics.json").read_text())
    return metrics


def main(dataset_dir: str, cache_dir: str, target_dataset_dir: str | None = None,
         methods="avg,avgmax,attention,grid,conv,source_only,dann,contrastive,dann_contrastive", seeds="0,1,2",
         output_dir: str = "runs/benchmark_medsam", extra: str = "", compare_backend: str | None = None,
         results_file: str | None = None) -> None:
    """extra: more `monai.bundle` overrides for every run, e.g. ``--extra="--max_epochs 30"``.
    compare_backend: also evaluate every frozen-encoder run on embeddings of this encoder backend (validation and
    test; its cache entries must exist or are computed) and report the change of ROC-AUC from the run's own backend.
    results_file: where the summary JSON goes (default ``<output_dir>/summary.json``)."""
    methods, seeds = parse_list(methods), parse_list(seeds, int)
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; choose from {list(METHODS)}")
    if target_dataset_dir is None and DOMAIN_METHODS & set(methods):
        raise ValueError("the domain methods need --target_dataset_dir (COVID-19 Radiography layout)")
    summary = {"date": datetime.date.today().isoformat(), "command": " ".join(["python", *sys.argv]),
               "seeds": seeds, "rule": RULE, "runs": {}, "validation": {}, "test": {}, "target": {}}
    for method in methods:
        configs, overrides = METHODS[method]
        domain = method in DOMAIN_METHODS
        validation, test, target = [], [], []
        for seed in seeds:
            run = Path(output_dir, method, f"seed{seed}")
            common = ["--dataset_dir", dataset_dir, "--cache_dir", cache_dir, "--seed", str(seed),
                      "--ckpt_dir", str(run / "models"), "--make_plots", "False", *overrides,
                      *(["--target_dataset_dir", target_dataset_dir] if domain else []), *extra.split()]
            metrics = train_and_evaluate(run, configs, common)
            validation.append(metrics["validation"])
            test.append(metrics["test"])
            summary["runs"][f"{method}/seed{seed}"] = {
                "validation": {k: validation[-1][k] for k in (*VALIDATION_REPORTED, "threshold")},
                "test": {k: test[-1][k] for k in (*REPORTED, "threshold")}}
            if compare_backend and not domain:
                other = evaluate_with_backend(run, configs, common, compare_backend)
                summary["runs"][f"{method}/seed{seed}"][compare_backend] = {
                    split: {"roc_auc": other[split]["roc_auc"], "accuracy": other[split]["accuracy"],
                            "roc_auc_change": other[split]["roc_auc"] - metrics[split]["roc_auc"]} for split in SPLITS}
            if domain:
                target.append(json.loads((run / "train" / "target_metrics.json").read_text()))
                summary["runs"][f"{method}/seed{seed}"]["target"] = {k: target[-1][k] for k in REPORTED}
        summary["validation"][method] = mean_std(validation, VALIDATION_REPORTED)
        summary["test"][method] = mean_std(test)
        if domain:
            summary["target"][method] = mean_std(target)
    summary["winner"] = pick_on_validation(summary["validation"])
    if compare_backend:
        changes = {split: [r[compare_backend][split]["roc_auc_change"] for r in summary["runs"].values()
                           if compare_backend in r] for split in SPLITS}
        summary["backend_comparison"] = {"backend": compare_backend, **{
            split: {"max_abs_roc_auc_change": max(map(abs, c)), "mean_roc_auc_change": sum(c) / len(c)}
            for split, c in changes.items() if c}}
    write_json(summary, results_file or Path(output_dir, "summary.json"))
    print(validation_first_report(summary, len(seeds)))
    if summary["target"]:
        print("\nTarget: labelled evaluation part\n" + markdown_table(summary["target"], len(seeds)))
    if "backend_comparison" in summary:
        print(f"\nROC-AUC change on {compare_backend} embeddings: {json.dumps(summary['backend_comparison'])}")


if __name__ == "__main__":
    fire.Fire(main)
