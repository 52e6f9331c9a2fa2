"""CPU/GPU inference throughput of the bundle (images/s, ms per image), in one run:

* ``end-to-end``: the bundle's own `run` of configs/inference.json over the first `limit` files of `images` (decode,
  preprocessing, lung step, classifier forward, the predictions report), once per lung_mode, for two paths:
  ``batched`` (the config as shipped: the lung UNet once per batch via `BatchedLungStep`, channels-last classifier)
  and ``per-item`` (the old path: the lung step per image in the Dataset, NCHW classifier);
* ``forward``: the classifier forward alone (as the config builds it) at each batch size, on the preprocessed images;
* ``precision``: the batched end-to-end and forward rows run once per `precisions` value (the config's `precision`:
  float32, or bfloat16 autocast via `custom.models.inferers.AutocastInferer`), and ``agreement`` compares the
  bfloat16 predictions with float32 on every image of `agreement_images` (in the docs: the whole official train
  folder, never the test split, since the result informs the config default): max |delta P(positive)| and the
  decisions that flip at the checkpoint's threshold.

End-to-end time: from the evaluator's first epoch start to its end (checkpoint loading and config parsing excluded),
best of `repeats` after one warm-up run. Prints one JSON line: date, command, device, versions and the rows;
`--results_file` also writes it.

    OMP_NUM_THREADS=2 python scripts/benchmark_inference.py --images ../shared/data/pediatric_cxr/test --limit 256 \
        --lung_modes crop,mask,none --precisions float32,bfloat16 \
        --agreement_images ../shared/data/pediatric_cxr/train --results_file docs/results/inference_cpu.json
"""

import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the old per-item path: the whole chain (lung step included) in the Dataset, default batch preparation, NCHW network
PER_ITEM = {"dataset#transform": "@preprocessing", "evaluator#prepare_batch": "$monai.engines.default_prepare_batch",
            "network": "$@network_def.to(@device)"}


def _row(stage: str, images: int, seconds: float, **extra) -> dict:
    return {"stage": stage, **extra, "images_per_s": round(images / seconds, 1),
            "ms_per_image": round(1000.0 * seconds / images, 2)}


@contextlib.contextmanager
def bundle_evaluator(config: str, files: list[str], overrides: dict):
    """(parser, evaluator, output dir) of `config` over `files`, initialised, writing into a temporary folder."""
    from custom.models.trained_model import bundle_config

    with tempfile.TemporaryDirectory() as out:
        parser = bundle_config(".", config, output_dir=out, datalist=[{"image": f} for f in files], **overrides)
        parser.get_parsed_content("initialize")
        yield parser, parser.get_parsed_content("evaluator"), out


def end_to_end_seconds(config: str, files: list[str], overrides: dict, repeats: int) -> float:
    """Best wall-clock seconds of one epoch of the bundle's evaluator over `files` (after a warm-up epoch)."""
    from ignite.engine import Events

    with bundle_evaluator(config, files, overrides) as (_, evaluator, _):
        times = []
        evaluator.add_event_handler(Events.EPOCH_STARTED, lambda _: times.append(time.perf_counter()))
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda _: times.append(time.perf_counter() - times.pop()))
        for _ in range(repeats + 1):
            evaluator.run()
    return min(times[1:])


def predictions(config: str, files: list[str], overrides: dict) -> dict[str, float]:
    """file -> P(positive) from the bundle's own run of `config` over `files`, and the threshold it applied."""
    import pandas as pd

    with bundle_evaluator(config, files, overrides) as (parser, evaluator, out):
        evaluator.run()
        table = pd.read_csv(Path(out, "predictions.csv"))
        threshold = parser.get_parsed_content("operating_point").threshold
    positive = parser["class_names"][-1]
    return {"scores": dict(zip(table["file"], table[f"prob_{positive}"])), "threshold": threshold}


def agreement(config: str, files: list[str], overrides: dict, precision: str) -> dict:
    """`precision` against float32 on `files`: max and mean |delta P(positive)|, decisions flipped at the threshold."""
    import numpy as np

    from custom.models.trained_model import is_positive

    ref, other = (predictions(config, files, {**overrides, "precision": p}) for p in ("float32", precision))
    names = sorted(ref["scores"])
    a, b = (np.array([run["scores"][n] for n in names]) for run in (ref, other))
    t = ref["threshold"]
    return {"precision": precision, "images": len(names), "threshold": t,
            "max_abs_diff": round(float(np.abs(a - b).max()), 6), "mean_abs_diff": round(float(np.abs(a - b).mean()), 6),
            "decisions_flipped": int((is_positive(a, t) != is_positive(b, t)).sum())}


def main(images: str = "data/sample/test", config: str = "configs/inference.json", ckpt_path: str = "models/model.pt",
         lung_modes="crop,mask,none", batch_sizes="1,32", precisions="float32", limit: int = 256, repeats: int = 3,
         agreement_images: str | None = None, num_workers: int | None = None,
         results_file: str | None = None) -> None:
    """Times the first `limit` files of `images`; lung_modes: the config's `lung_mode` values to run end to end;
    batch_sizes: of the classifier-only forward rows; precisions: the config's `precision` values of the batched and
    forward rows; agreement_images: folder whose every image compares each non-float32 precision with float32
    (lung_mode none); num_workers: DataLoader workers (None: the config's); results_file: JSON path written
    atomically with what is printed."""
    from custom.data import inference_items
    from custom.evaluation.benchmark import parse_list
    from custom.evaluation.timing import best_seconds, run_record
    from custom.io import write_json
    from custom.models.inferers import AutocastInferer, forward_dtype, native_bf16
    from custom.models.trained_model import load_bundle

    files = [item["image"] for item in inference_items(images)[:limit]]
    common = {"ckpt_path": ckpt_path, **({} if num_workers is None else {"num_workers": num_workers})}
    precisions = parse_list(precisions, str)
    rows = []
    for mode in parse_list(lung_modes, str):
        paths = [("per-item", "float32", PER_ITEM), *(("batched", p, {}) for p in precisions)]
        for path, precision, overrides in paths:
            seconds = end_to_end_seconds(config, files, {**common, "lung_mode": mode, "precision": precision,
                                                         **overrides}, repeats)
            rows.append(_row("end-to-end", len(files), seconds, path=path, lung_mode=mode, precision=precision))

    trained = load_bundle(".", config, ckpt_path, device=None, lung_mode="none")
    parser = trained.config
    device = parser.get_parsed_content("device")
    net = parser.get_parsed_content("network").eval()  # as the config builds it (memory format included)
    net.load_state_dict(trained.network.state_dict())
    batch = torch.stack([trained.preprocessing({"image": f})["image"].as_tensor() for f in files]).to(device)
    with torch.inference_mode():
        for precision in precisions:
            inferer = AutocastInferer(forward_dtype(precision, device))
            for bs in parse_list(batch_sizes, int):
                best = best_seconds(lambda: [inferer(batch[i:i + bs], net) for i in range(0, len(batch), bs)],
                                    repeats, device)
                rows.append(_row("forward", len(batch), best, batch=bs, precision=precision))
    agreements = []
    if agreement_images:
        every = [item["image"] for item in inference_items(agreement_images)]
        agreements = [agreement(config, every, {**common, "lung_mode": "none"}, p) for p in precisions
                      if p != "float32"]
    workers = parser.get_parsed_content("num_workers") if num_workers is None else num_workers
    result = {**run_record(device), "images": len(files), "input_shape": list(batch.shape[1:]),
              "batch_size": parser["batch_size"], "num_workers": workers, "repeats": repeats,
              "native_bf16": native_bf16(device), "rows": rows, "agreement": agreements}
    print(json.dumps(result))
    if results_file:
        write_json(result, results_file)


if __name__ == "__main__":
    fire.Fire(main)
