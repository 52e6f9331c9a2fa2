"""Train + evaluate CNN options over several seeds through the bundle configs, all seeds on one shared validation split
(`split_seed`, the config default), and pick the winning option on validation only; test metrics are reported after.
Options are models x values of one config id (`--vary lung_mode --values "crop;none;mask"`). Finished runs are
reused while their run key (config, data, code) matches, so an interrupted benchmark resumes. Writes
`<output_dir>/summary.json` (or `--results_file`) with per-run validation and test metrics, and prints the tables.

    python scripts/benchmark_cnn.py --dataset_dir ../shared/data/pediatric_cxr --models resnet18 --seeds 0,1,2 \
        --vary lung_mode --values "crop;none" --results_file docs/results/lung_crop_vs_none.json
"""

import datetime
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.evaluation.benchmark import (  # noqa: E402
    REPORTED,
    RULE,
    SPLITS,
    VALIDATION_REPORTED,
    mean_std,
    parse_list,
    pick_on_validation,
    train_and_evaluate,
    validation_first_report,
    vary_variants,
)
from custom.io import write_json  # noqa: E402

# model -> network_def override (None: the config's own network_def, so the default recipe runs unchanged)
MODELS = {
    "resnet18": None,
    "densenet121": "{'_target_': 'monai.networks.nets.DenseNet121', 'spatial_dims': 2, 'in_channels': '@in_channels', 'out_channels': '@num_classes'}",
    "small_cnn": "{'_target_': 'custom.models.networks.SmallCNN', 'in_channels': '@in_channels', 'num_classes': '@num_classes'}",
}
RUN_FIELDS = (*dict.fromkeys((*REPORTED, *VALIDATION_REPORTED)), "threshold")


def main(dataset_dir: str, models="resnet18", seeds="0,1,2", max_epochs: int | None = None,
         output_dir: str = "runs/benchmark", vary: str | None = None, values: str = "", extra: str = "",
         extra_configs: str = "", results_file: str | None = None) -> None:
    """vary / values: a config id and its values (`;`-separated) to compare; max_epochs: None keeps the config's;
    extra: more `monai.bundle` overrides for every run, e.g. ``--image_size [64,64]``; extra_configs: config files
    (comma-separated) merged after train.json."""
    models, seeds = parse_list(models), parse_list(seeds, int)
    configs = ["configs/train.json", *(parse_list(extra_configs) if extra_configs else [])]
    unknown = set(models) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown model(s) {sorted(unknown)}; choose from {sorted(MODELS)}")
    variants = vary_variants(vary, values)
    summary = {"date": datetime.date.today().isoformat(), "command": " ".join(["python", *sys.argv]),
               "dataset_dir": dataset_dir, "seeds": seeds, "rule": RULE, "runs": {}, "validation": {}, "test": {}}
    for model in models:
        for variant, variant_args in variants.items():
            option = "/".join(filter(None, (model, variant)))
            results = {split: [] for split in SPLITS}
            for seed in seeds:
                run = Path(output_dir, *option.split("/"), f"seed{seed}")
                args = ["--dataset_dir", dataset_dir, "--seed", str(seed), "--ckpt_dir", str(run / "models"),
                        *(["--network_def", MODELS[model]] if MODELS[model] else []),
                        *(["--max_epochs", str(max_epochs)] if max_epochs else []), *variant_args, *extra.split()]
                metrics = train_and_evaluate(run, configs, args)
                summary["runs"][f"{option}/seed{seed}"] = {
                    "dir": str(run), **{s: {k: metrics[s][k] for k in RUN_FIELDS} for s in SPLITS}}
                for split in SPLITS:
                    results[split].append(metrics[split])
            summary["validation"][option] = mean_std(results["validation"], VALIDATION_REPORTED)
            summary["test"][option] = mean_std(results["test"])
    summary["winner"] = pick_on_validation(summary["validation"])
    write_json(summary, results_file or Path(output_dir, "summary.json"))
    print(validation_first_report(summary, len(seeds)))


if __name__ == "__main__":
    fire.Fire(main)
