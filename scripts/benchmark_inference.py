"""Inference throughput of a bundle network (images/s, ms per image): decode + preprocess over real images (one at a
time, the lung segmenter included when the config's `lung_mode` uses it), then the model forward alone at several
batch sizes. Prints one JSON line: date, command, device, versions and the rows; `--results_file` also writes it.

    python scripts/benchmark_inference.py --images ../shared/data/pediatric_cxr/test --limit 256 \
        --results_file docs/results/inference_cpu.json
    # the lung segmenter's share of preprocessing: the same with --lung_mode none (and crop / mask)
"""

import json
import sys
import time
from pathlib import Path

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _row(stage: str, batch: int | None, images: int, seconds: float) -> dict:
    return {"stage": stage, "batch": batch, "images_per_s": round(images / seconds, 1),
            "ms_per_image": round(1000.0 * seconds / images, 2)}


def main(images: str = "data/sample/test", config: str = "configs/inference.json", ckpt_path: str = "models/model.pt",
         batch_sizes="1,32", limit: int = 256, repeats: int = 3, lung_mode: str | None = None,
         results_file: str | None = None) -> None:
    """Times the first `limit` files of `images`; lung_mode: overrides the config's (crop | mask | none);
    results_file: JSON path written atomically with what is printed."""
    from custom.data import inference_items
    from custom.evaluation.benchmark import parse_list
    from custom.evaluation.timing import best_seconds, run_record
    from custom.io import write_json
    from custom.models.trained_model import load_bundle

    overrides = {} if lung_mode is None else {"lung_mode": lung_mode}
    trained = load_bundle(".", config, ckpt_path, device=None, **overrides)  # device: the config's
    net, preprocessing, parser = trained.network, trained.preprocessing, trained.config
    device = parser.get_parsed_content("device")
    items = inference_items(images)[:limit]

    start = time.perf_counter()
    batch = torch.stack([preprocessing(dict(it))["image"].as_tensor() for it in items]).to(device)
    rows = [_row("decode + preprocess", None, len(items), time.perf_counter() - start)]
    with torch.inference_mode():
        for bs in parse_list(batch_sizes, int):
            best = best_seconds(lambda: [net(batch[i:i + bs]) for i in range(0, len(batch), bs)], repeats, device)
            rows.append(_row("forward", bs, len(batch), best))
    result = {**run_record(device), "images": len(items), "input_shape": list(batch.shape[1:]),
              "lung_mode": parser.get("lung_mode"), "repeats": repeats, "rows": rows}
    print(json.dumps(result))
    if results_file:
        write_json(result, results_file)


if __name__ == "__main__":
    fire.Fire(main)
