"""Train + evaluate CNNs over several seeds through the bundle configs and report mean and spread of the official-test
metrics (checkpoint and threshold picked on validation). Finished (model, seed) runs are reused, so an interrupted
benchmark resumes. Writes `<output_dir>/summary.json` and prints a Markdown table.

    python scripts/benchmark_cnn.py --dataset_dir ../shared/data/pediatric_cxr --models resnet18,densenet121 \
        --seeds 0,1,2 --max_epochs 12 [--extra="--batch_size 64"]
"""

import datetime
import json
import subprocess
import sys
from pathlib import Path

import fire
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.io import write_json  # noqa: E402

MODELS = {
    "resnet18": "{'_target_': 'custom.networks.TorchvisionClassifier', 'arch': 'resnet18', 'in_channels': '@in_channels', 'num_classes': '@num_classes'}",
    "densenet121": "{'_target_': 'monai.networks.nets.DenseNet121', 'spatial_dims': 2, 'in_channels': '@in_channels', 'out_channels': '@num_classes'}",
    "small_cnn": "{'_target_': 'custom.networks.SmallCNN', 'in_channels': '@in_channels', 'num_classes': '@num_classes'}",
}
REPORTED = ("accuracy", "roc_auc", "sensitivity", "specificity", "f1")


def bundle(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "monai.bundle", *args], check=True)


def main(dataset_dir: str, models="resnet18,densenet121", seeds="0,1,2", max_epochs: int = 12,
         output_dir: str = "runs/benchmark", extra: str = "") -> None:
    models = models.split(",") if isinstance(models, str) else list(models)
    seeds = [int(s) for s in (seeds.split(",") if isinstance(seeds, str) else seeds)]
    unknown = set(models) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown model(s) {sorted(unknown)}; choose from {sorted(MODELS)}")
    summary = {"date": datetime.date.today().isoformat(), "command": " ".join(["python", *sys.argv]), "runs": {}, "models": {}}
    for model in models:
        results = []
        for seed in seeds:
            run = Path(output_dir, model, f"seed{seed}")
            metrics_file = run / "eval" / "test_metrics.json"
            common = ["--dataset_dir", dataset_dir, "--seed", str(seed), "--network_def", MODELS[model],
                      "--ckpt_dir", str(run / "models"), *extra.split()]
            if not metrics_file.exists():
                bundle("run", "training", "--config_file", "configs/train.json", "--output_dir", str(run / "train"),
                       "--max_epochs", str(max_epochs), *common)
                bundle("run", "evaluating", "--config_file", "['configs/train.json','configs/evaluate.json']",
                       "--output_dir", str(run / "eval"), *common)
            results.append(json.loads(metrics_file.read_text()))
            summary["runs"][f"{model}/seed{seed}"] = {k: results[-1][k] for k in (*REPORTED, "threshold")}
        summary["models"][model] = {k: {"mean": float(np.mean([r[k] for r in results])),
                                        "std": float(np.std([r[k] for r in results], ddof=1)) if len(results) > 1 else 0.0}
                                    for k in REPORTED}
        write_json(summary, Path(output_dir, "summary.json"))
    print(f"| model | seeds | {' | '.join(REPORTED)} |\n|---|---|{'---|' * len(REPORTED)}")
    for model, stats in summary["models"].items():
        cells = " | ".join(f"{stats[k]['mean']:.3f} ± {stats[k]['std']:.3f}" for k in REPORTED)
        print(f"| {model} | {len(seeds)} | {cells} |")


if __name__ == "__main__":
    fire.Fire(main)
