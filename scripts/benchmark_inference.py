"""CPU/GPU inference throughput of the bundle (images/s, ms per image), in one run:

* ``end-to-end``: the bundle's own `run` of configs/inference.json over the first `limit` files of `images` (decode,
  preprocessing, lung step, classifier forward, the predictions report), once per lung_mode, for two paths:
  ``batched`` (the config as shipped: the lung UNet once per batch via `BatchedLungStep`, channels-last classifier)
  and ``per-item`` (the old path: the lung step per image in the Dataset, NCHW classifier);
* ``forward``: the classifier forward alone (as the config builds it) at each batch size, on the preprocessed images.

End-to-end time: from the evaluator's first epoch start to its end (checkpoint loading and config parsing excluded),
best of `repeats` after one warm-up run. Prints one JSON line: date, command, device, versions and the rows;
`--results_file` also writes it.

    OMP_NUM_THREADS=2 python scripts/benchmark_inference.py --images ../shared/data/pediatric_cxr/test --limit 256 \
        --lung_modes crop,mask,none --results_file docs/results/inference_cpu.json
"""

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


def end_to_end_seconds(config: str, files: list[str], overrides: dict, repeats: int) -> float:
    """Best wall-clock seconds of one epoch of the bundle's evaluator over `files` (after a warm-up epoch)."""
    from ignite.engine import Events

    from custom.models.trained_model import bundle_config

    with tempfile.TemporaryDirectory() as out:
        parser = bundle_config(".", config, output_dir=out, datalist=[{"image": f} for f in files], **overrides)
        parser.get_parsed_content("initialize")
        evaluator = parser.get_parsed_content("evaluator")
        times = []
        evaluator.add_event_handler(Events.EPOCH_STARTED, lambda _: times.append(time.perf_counter()))
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda _: times.append(time.perf_counter() - times.pop()))
        for _ in range(repeats + 1):
            evaluator.run()
    return min(times[1:])


def main(images: str = "data/sample/test", config: str = "configs/inference.json", ckpt_path: str = "models/model.pt",
         lung_modes="crop,mask,none", batch_sizes="1,32", limit: int = 256, repeats: int = 3,
         num_workers: int | None = None, results_file: str | None = None) -> None:
    """Times the first `limit` files of `images`; lung_modes: the config's `lung_mode` values to run end to end;
    batch_sizes: of the classifier-only forward rows; num_workers: DataLoader workers (None: the config's);
    results_file: JSON path written atomically with what is printed."""
    from custom.data import inference_items
    from custom.evaluation.benchmark import parse_list
    from custom.evaluation.timing import best_seconds, run_record
    from custom.io import write_json
    from custom.models.trained_model import load_bundle

    files = [item["image"] for item in inference_items(images)[:limit]]
    common = {"ckpt_path": ckpt_path, **({} if num_workers is None else {"num_workers": num_workers})}
    rows = []
    for mode in parse_list(lung_modes, str):
        for path, overrides in (("per-item", PER_ITEM), ("batched", {})):
            seconds = end_to_end_seconds(config, files, {**common, "lung_mode": mode, **overrides}, repeats)
            rows.append(_row("end-to-end", len(files), seconds, path=path, lung_mode=mode))

    trained = load_bundle(".", config, ckpt_path, device=None, lung_mode="none")
    parser = trained.config
    device = parser.get_parsed_content("device")
    net = parser.get_parsed_content("network").eval()  # as the config builds it (memory format included)
    net.load_state_dict(trained.network.state_dict())
    batch = torch.stack([trained.preprocessing({"image": f})["image"].as_tensor() for f in files]).to(device)
    with torch.inference_mode():
        for bs in parse_list(batch_sizes, int):
            best = best_seconds(lambda: [net(batch[i:i + bs]) for i in range(0, len(batch), bs)], repeats, device)
            rows.append(_row("forward", len(batch), best, batch=bs))
    workers = parser.get_parsed_content("num_workers") if num_workers is None else num_workers
    result = {**run_record(device), "images": len(files), "input_shape": list(batch.shape[1:]),
              "batch_size": parser["batch_size"], "num_workers": workers, "repeats": repeats, "rows": rows}
    print(json.dumps(result))
    if results_file:
        write_json(result, results_file)


if __name__ == "__main__":
    fire.Fire(main)
