"""MedSAM-encoder heads over several seeds through the bundle configs: pooling variants (avg, avg+max, attention,
4x4 grid) on the frozen encoder, and source-only / DANN / contrastive / DANN + contrastive (cached embeddings) and
DANN + augmentation (live encoder, GPU) from a labelled source to an unlabelled target domain. All seeds share one
validation split (`split_seed`); the winner is picked on source validation only; then the official source test split
and, for the domain methods, the target's labelled evaluation part (never used in training or for a choice) are
reported. `--vary ID --values "a;b"` compares values of one config id for every method (e.g. the lung crop of the
encoder input, `--vary lung_mode --values "none;crop"`); `--domains_datalist` also scores each frozen-encoder run on
the test part of every domain of a datalist with a `domain` field (reported, never used for a choice). Finished
(method, variant, seed) runs are reused while their run key matches, so an interrupted benchmark resumes. Writes
`<output_dir>/summary.json` and prints Markdown tables.

    python scripts/embed.py --datalist kermany.json   # fill the cache the frozen heads read (train_medsam_frozen.json)
    python scripts/embed.py --datalist kermany.json --feature_stages ""   # and the one DANN reads (the embedding)
    python scripts/benchmark_medsam.py --dataset_dir ../shared/data/pediatric_cxr \
        --target_dataset_dir ../shared/data/adult_cxr --cache_dir runs/embeddings --seeds 0,1,2
    python scripts/benchmark_medsam.py --dataset_dir ../shared/data/pediatric_cxr --cache_dir runs/embeddings \
        --methods conv --vary lung_mode --values "none;crop" --output_dir runs/benchmark_medsam_lung \
        --domains_dir ../shared/data --domains_datalist runs/datalists/pediatric_adult.json
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
    vary_variants,
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


def evaluate_on_domains(run: Path, configs: list[str], args: list[str], domains_dir: str, datalist: str) -> dict:
    """``{domain: metrics}`` of a finished run's checkpoint (its validation-picked threshold) on the test split of
    `datalist` (paths under `domains_dir`), one entry per domain; reused when its metrics file exists. `args`: the
    run's overrides but its dataset."""
    folder = run / "eval_domains"
    if not (folder / "test_metrics.json").is_file():
        run_bundle("run", "evaluating", "--config_file", config_arg([*configs, "configs/evaluate.json"]),
                   "--output_dir", str(folder), "--eval_split", "test", *args, "--dataset_dir", domains_dir,
                   "--datalist_file", datalist, "--bootstrap_replicates", "0")
    return json.loads((folder / "test_metrics.json").read_text())["domains"]


def main(dataset_dir: str, cache_dir: str, target_dataset_dir: str | None = None,
         methods="avg,avgmax,attention,grid,conv,source_only,dann,contrastive,dann_contrastive", seeds="0,1,2",
         output_dir: str = "runs/benchmark_medsam", extra: str = "", compare_backend: str | None = None,
         results_file: str | None = None, vary: str | None = None, values: str = "",
         domains_dir: str | None = None, domains_datalist: str | None = None) -> None:
    """extra: more `monai.bundle` overrides for every run, e.g. ``--extra="--max_epochs 30"``.
    vary / values: a config id and its values (`;`-separated) to compare for every method.
    domains_dir / domains_datalist: a datalist JSON with a `domain` field per item (paths under `domains_dir`), whose
    test part every frozen-encoder run is also scored on, per domain.
    compare_backend: also evaluate every frozen-encoder run on embeddings of this encoder backend (validation and
    test; its cache entries must exist or are computed) and report the change of ROC-AUC from the run's own backend.
    results_file: where the summary JSON goes (default ``<output_dir>/summary.json``)."""
    methods, seeds = parse_list(methods), parse_list(seeds, int)
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown method(s) {sorted(unknown)}; choose from {list(METHODS)}")
    if target_dataset_dir is None and DOMAIN_METHODS & set(methods):
        raise ValueError("the domain methods need --target_dataset_dir (COVID-19 Radiography layout)")
    if (domains_dir is None) != (domains_datalist is None):
        raise ValueError("--domains_dir and --domains_datalist go together")
    variants = vary_variants(vary, values)
    summary = {"date": datetime.date.today().isoformat(), "command": " ".join(["python", *sys.argv]),
               "seeds": seeds, "rule": RULE, "runs": {}, "validation": {}, "test": {}, "target": {}, "domains": {}}
    for method in methods:
        configs, overrides = METHODS[method]
        domain = method in DOMAIN_METHODS
        for variant, variant_args in variants.items():
            option = "/".join(filter(None, (method, variant)))
            validation, test, target, domains = [], [], [], []
            for seed in seeds:
                run = Path(output_dir, *option.split("/"), f"seed{seed}")
                run_args = ["--cache_dir", cache_dir, "--seed", str(seed), "--ckpt_dir", str(run / "models"),
                            "--make_plots", "False", *overrides, *variant_args,
                            *(["--target_dataset_dir", target_dataset_dir] if domain else []), *extra.split()]
                common = ["--dataset_dir", dataset_dir, *run_args]
                metrics = train_and_evaluate(run, configs, common)
                validation.append(metrics["validation"])
                test.append(metrics["test"])
                record = summary["runs"][f"{option}/seed{seed}"] = {
                    "validation": {k: validation[-1][k] for k in (*VALIDATION_REPORTED, "threshold")},
                    "test": {k: test[-1][k] for k in (*REPORTED, "threshold")}}
                if compare_backend and not domain:
                    other = evaluate_with_backend(run, configs, common, compare_backend)
                    record[compare_backend] = {
                        split: {"roc_auc": other[split]["roc_auc"], "accuracy": other[split]["accuracy"],
                                "roc_auc_change": other[split]["roc_auc"] - metrics[split]["roc_auc"]}
                        for split in SPLITS}
                if domain:
                    target.append(json.loads((run / "train" / "target_metrics.json").read_text()))
                    record["target"] = {k: target[-1][k] for k in REPORTED}
                elif domains_datalist:
                    domains.append(evaluate_on_domains(run, configs, run_args, domains_dir, domains_datalist))
                    record["domains"] = {name: {k: m[k] for k in REPORTED} for name, m in domains[-1].items()}
            summary["validation"][option] = mean_std(validation, VALIDATION_REPORTED)
            summary["test"][option] = mean_std(test)
            if domain:
                summary["target"][option] = mean_std(target)
            if domains:
                summary["domains"][option] = {name: mean_std([d[name] for d in domains]) for name in domains[0]}
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
    for name in sorted({name for per_domain in summary["domains"].values() for name in per_domain}):
        table = {option: per_domain[name] for option, per_domain in summary["domains"].items() if name in per_domain}
        print(f"\nTest part of domain {name} (reported, not used for a choice)\n" + markdown_table(table, len(seeds)))
    if "backend_comparison" in summary:
        print(f"\nROC-AUC change on {compare_backend} embeddings: {json.dumps(summary['backend_comparison'])}")


if __name__ == "__main__":
    fire.Fire(main)
