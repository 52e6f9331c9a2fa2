"""Embedding-extraction speed of the MedSAM encoders (images/s) in eager PyTorch, fp32 and bf16 autocast, at several
batch sizes, with FLOPs per image (torch's FLOP counter) and the achieved TFLOP/s. Prints one JSON line (date,
command, device, versions, rows); `--results_file` also writes it.

    python scripts/benchmark_encoders.py --variants lite,vit_b --vit_b_checkpoint /path/medsam_vit_b.pth \
        --batch_sizes 1,32,128 --device cuda --results_file docs/results/encoders_h100.json
ViT-B without a checkpoint is timed with random weights (speed does not depend on the weights values).
"""

import json
import sys
from pathlib import Path

import fire
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.evaluation.timing import best_seconds, run_record  # noqa: E402
from custom.io import write_json  # noqa: E402
from custom.medsam.encoders import build_encoder  # noqa: E402


def _encoder(variant: str, vit_b_checkpoint: str | None) -> torch.nn.Module:
    if variant == "vit_b" and vit_b_checkpoint is None:
        from segment_anything import sam_model_registry

        net = sam_model_registry["vit_b"]().image_encoder
        net.input_size = 1024
        return net.eval()
    return build_encoder(variant, vit_b_checkpoint if variant == "vit_b" else None)


def _list(value) -> list:
    """Fire gives "a,b" as a str, "1,32" as a tuple and "1" as an int."""
    return value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]


def main(variants="lite", vit_b_checkpoint: str | None = None, batch_sizes="1", dtypes="fp32,bf16",
         device: str | None = None, repeats: int = 3, results_file: str | None = None) -> None:
    """Random [0, 1] inputs; best of `repeats` after a warm-up. results_file: JSON path written atomically."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for variant in _list(variants):
        encoder = _encoder(variant, vit_b_checkpoint).to(device)
        size = encoder.input_size
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            encoder(torch.rand(1, 3, size, size, device=device))
        flops = counter.get_total_flops()
        for dtype in _list(dtypes):
            for batch in [int(b) for b in _list(batch_sizes)]:
                images = torch.rand(batch, 3, size, size, device=device)

                def run():
                    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=dtype == "bf16"):
                        encoder(images)

                seconds = best_seconds(run, repeats, device)
                rows.append({"variant": variant, "dtype": dtype, "batch": batch, "input": size,
                             "gflop_per_image": round(flops / 1e9, 1), "images_per_s": round(batch / seconds, 2),
                             "tflop_per_s": round(flops * batch / seconds / 1e12, 3)})
    result = {**run_record(device), "repeats": repeats, "rows": rows}
    print(json.dumps(result))
    if results_file:
        write_json(result, results_file)


if __name__ == "__main__":
    fire.Fire(main)
