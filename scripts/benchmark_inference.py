"""Inference throughput of a bundle network (images/s): model forward alone at several batch sizes, and end to end
(decode + preprocess + forward) over real images. Prints one JSON line with device, date and command.

    python scripts/benchmark_inference.py --images ../shared/data/pediatric_cxr/test --limit 256
"""

import datetime
import json
import platform
import sys
import time
from pathlib import Path

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(images: str = "data/sample/test", config: str = "configs/inference.json", ckpt_path: str = "models/model.pt",
         batch_sizes=(1, 32), limit: int = 256, repeats: int = 3) -> None:
    from monai.bundle import ConfigParser

    from custom.data import inference_items
    from custom.timing import best_seconds

    parser = ConfigParser()
    parser.read_config(config)
    parser["ckpt_path"] = ckpt_path
    device = parser.get_parsed_content("device")
    net = parser.get_parsed_content("network")
    net.load_state_dict(torch.load(ckpt_path, map_location=device, weights_only=False)["model"])
    net.eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    items = inference_items(images)[:limit]

    start = time.perf_counter()
    batch = torch.stack([preprocessing(dict(it))["image"].as_tensor() for it in items]).to(device)
    preprocess_s = time.perf_counter() - start
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "date": datetime.date.today().isoformat(), "command": " ".join(["python", *sys.argv]),
              "images": len(items), "input_shape": list(batch.shape[1:]),
              "preprocess_images_per_s": round(len(items) / preprocess_s, 1)}
    with torch.inference_mode():
        for bs in batch_sizes:
            best = best_seconds(lambda: [net(batch[i:i + bs]) for i in range(0, len(batch), bs)], repeats, device)
            result[f"forward_images_per_s_batch{bs}"] = round(len(batch) / best, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    fire.Fire(main)
