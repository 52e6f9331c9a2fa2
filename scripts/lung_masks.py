"""Segment the lungs of every image in a folder, an image file or a datalist JSON; write masks and an overlay plot.

Writes `<output_dir>/masks/<relative path>.png` (0/255, input resolution), `<output_dir>/overlay.png` (the first
`overlay_count` images with their lung contours) and `<output_dir>/bad_files.csv` (file, reason) for unreadable inputs,
which are reported and skipped. Example (from the repo root):
    python scripts/lung_masks.py /work/shared/data/pediatric_cxr/test/NORMAL runs/lung_masks --overlay_count 16
"""

import csv
import json
import os
import sys
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import fire  # noqa: E402
import torch  # noqa: E402
from monai.transforms import Resize, ScaleIntensity  # noqa: E402
from PIL import Image  # noqa: E402

from custom.data.checks import inference_items  # noqa: E402
from custom.data.transforms import LoadCXR  # noqa: E402
from custom.evaluation.plots import plot_mask_overlays  # noqa: E402
from custom.io import atomic_path  # noqa: E402
from custom.lung.segmentation import load_lung_unet, mask_to_png_array, segment_lungs  # noqa: E402

DISPLAY_SIZE = 256


def main(input_path: str, output_dir: str = "runs/lung_masks", model_path: str = f"{REPO_ROOT}/models/lung_unet.pt",
         device: str = "cpu", datalist_key: str = "test", overlay_count: int = 16, num_threads: int = 1) -> None:
    """Masks for `input_path` (folder, image or datalist JSON, its `datalist_key` split); prints a JSON summary."""
    torch.set_num_threads(num_threads)
    items = inference_items(input_path, datalist_key)
    paths = [os.path.abspath(it["image"]) for it in items]
    base = Path(input_path).resolve() if Path(input_path).is_dir() else Path(os.path.commonpath(paths)).parent
    net = load_lung_unet(str(model_path), device)
    load, scale = LoadCXR(), ScaleIntensity(minv=0.0, maxv=1.0)
    out = Path(output_dir)
    bad, shown, written = [], [], 0
    for path in paths:
        try:
            image = scale(load(path))
        except (OSError, ValueError) as err:
            print(f"skipping: {err}", file=sys.stderr)
            bad.append((path, str(err)))
            continue
        mask = segment_lungs(image, net)
        with atomic_path(out / "masks" / Path(path).relative_to(base).with_suffix(".png")) as tmp:
            Image.fromarray(mask_to_png_array(mask)).save(tmp, format="PNG")
        written += 1
        if len(shown) < overlay_count:
            scale_factor = DISPLAY_SIZE / max(image.shape[1:])
            size = [max(1, round(s * scale_factor)) for s in image.shape[1:]]
            shown.append((Resize(size, mode="area")(image), Resize(size, mode="nearest")(mask.float()) > 0.5, Path(path).name))
    with atomic_path(out / "bad_files.csv") as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([("file", "reason"), *bad])
    if shown:
        plot_mask_overlays(*zip(*shown), out / "overlay.png")
    summary = {"masks": written, "skipped": len(bad), "masks_dir": str(out / "masks"),
               "overlay": str(out / "overlay.png") if shown else None, "bad_files": str(out / "bad_files.csv")}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    fire.Fire(main)
