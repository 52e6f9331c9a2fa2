"""A checkpoint's decision rule from validation predictions (`custom.evaluation.operating_point`): re-select its
threshold by another rule, or assemble a seed ensemble whose threshold is picked on the members' shared validation
split. Prints one JSON line (operating point, validation metrics there).

    python scripts/operating_point.py reselect --ckpt_path models/model.pt \
        --predictions docs/results/shipped_model_validation/validation_predictions.csv --method platt
    python scripts/operating_point.py ensemble --option_dir "runs/bench_protocol/resnet18/lung_mode=none" \
        --seeds 0,1,2 --method platt --output models/model.pt
    python scripts/operating_point.py ensemble --checkpoints models/model_pediatric.pt \
        --predictions docs/results/shipped_pediatric_224_validation/validation_predictions.csv \
        --option_dir "runs/bench224/resnet18/lung_mode=none" --seeds 1,2 --method platt --output models/ensemble.pt
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


def ensemble(method: str, output: str, option_dir: str | None = None, seeds="0,1,2", checkpoints="",
             predictions="", dtype: str = "float16") -> None:
    """Members -> one `ProbabilityEnsemble` checkpoint at `output`: the comma-separated `checkpoints` with their
    validation `predictions` CSVs (same order), then the `benchmark_cnn.py` runs `<option_dir>/seed<N>` (their
    ``models/model.pt`` and ``eval_validation/validation_predictions.csv``)."""
    checkpoints, predictions = (parse_list(v) if v else [] for v in (checkpoints, predictions))
    if len(checkpoints) != len(predictions):
        raise ValueError(f"{len(checkpoints)} checkpoints but {len(predictions)} predictions files: give one each")
    runs = [Path(option_dir, f"seed{s}") for s in parse_list(seeds, int)] if option_dir else []
    print(json.dumps(operating_point.assemble_ensemble(
        [*checkpoints, *(r / "models" / "model.pt" for r in runs)],
        [*predictions, *(predictions_file(r, "validation") for r in runs)], method, output, dtype)))


if __name__ == "__main__":
    fire.Fire({"reselect": reselect, "ensemble": ensemble})
