"""A checkpoint's decision rule from validation predictions (`custom.evaluation.operating_point`): re-select its
threshold by another rule, or assemble a seed ensemble whose threshold is picked on the members' shared validation
split. Prints one JSON line (operating point, validation metrics there).

    python scripts/operating_point.py reselect --ckpt_path models/model.pt \
        --predictions docs/results/shipped_model_validation/validation_predictions.csv --method platt
    python scripts/operating_point.py ensemble --option_dir "runs/bench_protocol/resnet18/lung_mode=none" \
        --seeds 0,1,2 --method platt --output models/model.pt
    # evaluate / serve the ensemble: merge configs/ensemble.json after the other configs
"""

import json
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.evaluation import operating_point  # noqa: E402
from custom.evaluation.benchmark import parse_list, predictions_file  # noqa: E402


def reselect(ckpt_path: str, predictions: str, method: str, output: str | None = None) -> None:
    """The threshold of `ckpt_path` picked again by `method` on its validation `predictions` CSV; in place unless
    `output`."""
    print(json.dumps(operating_point.reselect(ckpt_path, predictions, method, output)))


def ensemble(option_dir: str, method: str, output: str, seeds="0,1,2", dtype: str = "float16") -> None:
    """The `benchmark_cnn.py` runs `<option_dir>/seed<N>` (their ``models/model.pt`` and
    ``eval_validation/validation_predictions.csv``) -> one `ProbabilityEnsemble` checkpoint at `output`."""
    runs = [Path(option_dir, f"seed{s}") for s in parse_list(seeds, int)]
    print(json.dumps(operating_point.assemble_ensemble(
        [r / "models" / "model.pt" for r in runs], [predictions_file(r, "validation") for r in runs],
        method, output, dtype)))


if __name__ == "__main__":
    fire.Fire({"reselect": reselect, "ensemble": ensemble})
