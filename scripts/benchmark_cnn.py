"""Train + evaluate CNNs over several seeds through the bundle configs and report mean and spread of the official-test
metrics (checkpoint and threshold picked on validation). Finished (model, seed) runs are reused, so an interrupted
benchmark resumes. Writes `<output_dir>/summary.json` and prints a Markdown table.

    python scripts/benchmark_cnn.py --dataset_dir ../shared/data/pediatric_cxr --models resnet18,densenet121 \
        --seeds 0,1,2 --max_epochs 12 [--extra="--batch_size 64 --lung_mode none"]
"""

import datetime
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.benchmark import REPORTED, markdown_table, mean_std, parse_list, train_and_evaluate  # noqa: E402
from custom.io import write_json  # noqa: E402

MODELS = {
    "resnet18": "{'_target_': 'custom.networks.TorchvisionClassifier', 'arch': 'resnet18', 'in_channels': '@in_channels', 'num_classes': '@num_classes'}",
    "densenet121": "{'_target_': 'monai.networks.nets.DenseNet121', 'spatial_dims': 2, 'in_channels': '@in_channels', 'out_channels': '@num_classes'}",
    "small_cnn": "{'_target_': 'custom.networks.SmallCNN', 'in_channels': '@in_channels', 'num_classes': '@num_classes'}",
}


def main(dataset_dir: str, models="resnet18,densenet121", seeds="0,1,2", max_epochs: int = 12,
         output_dir: str = "runs/benchmark", extra: str = "", extra_configs: str = "") -> None:
    """extra: more `monai.bundle` overrides for every run, e.g. ``--lung_mode none``; extra_configs: config files
    (comma-separated) merged after train.json."""
    models, seeds = parse_list(models), parse_list(seeds, int)
    configs = ["configs/train.json", *(parse_list(extra_configs) if extra_configs else [])]
    unknown = set(models) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown model(s) {sorted(unknown)}; choose from {sorted(MODELS)}")
    summary = {"date": datetime.date.today().isoformat(), "command": " ".join(["python", *sys.argv]), "runs": {}, "models": {}}
    for model in models:
        results = []
        for seed in seeds:
            run = Path(output_dir, model, f"seed{seed}")
            args = ["--dataset_dir", dataset_dir, "--seed", str(seed), "--network_def", MODELS[model],
                    "--ckpt_dir", str(run / "models"), "--max_epochs", str(max_epochs), *extra.split()]
            results.append(train_and_evaluate(run, configs, args))
            summary["runs"][f"{model}/seed{seed}"] = {k: results[-1][k] for k in (*REPORTED, "threshold")}
        summary["models"][model] = mean_std(results)
        write_json(summary, Path(output_dir, "summary.json"))
    print(markdown_table(summary["models"], len(seeds)))


if __name__ == "__main__":
    fire.Fire(main)
