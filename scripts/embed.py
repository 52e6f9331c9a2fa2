"""Precompute the frozen MedSAM encoder embedding cache for a datalist and print hits / misses / failures per split;
the images that could not be embedded are listed in `bad_files.csv` (file, stage, reason) and skipped.

Example (from the repo root):
    python scripts/embed.py --datalist datalists/kermany.json --cache_dir runs/embeddings --variant lite
    python scripts/embed.py --datalist datalists/kermany.json --backend openvino --streams 2   # faster on CPU, same entries
    python scripts/embed.py --datalist datalists/kermany.json --backend openvino-bf16 --streams 2 --map_size 16
    python scripts/embed.py --datalist datalists/kermany.json --backend openvino-int8 --streams 2   # fastest on CPU
    python scripts/embed.py --datalist datalists/kermany.json --backend openvino-bf16 --streams 2 --lung_mode crop
    python scripts/embed.py --datalist datalists/kermany.json --backend openvino-bf16 --streams 2 --feature_stages 1,2
    python scripts/embed.py --datalist datalists/kermany.json --variant vit_b --checkpoint medsam_vit_b.pth \
        --device cuda --splits training,validation
"""

import json
import sys
from dataclasses import asdict
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[1])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import fire  # noqa: E402
import torch  # noqa: E402

from custom.data.checks import write_bad_files  # noqa: E402
from custom.data.datalists import SPLITS, load_datalist  # noqa: E402
from custom.lung.transforms import LungPreprocessd  # noqa: E402
from custom.medsam.embedding_cache import EmbeddingCache, Preprocessing  # noqa: E402
from custom.medsam.encoders import build_encoder, parse_feature_stages  # noqa: E402
from custom.medsam.heads import POOLED_MAP_SIZE  # noqa: E402


def main(datalist: str, cache_dir: str = "runs/embeddings", variant: str = "lite", checkpoint: str | None = None,
         device: str | None = None, splits="training,validation,test", base_dir: str | None = None,
         keep_aspect: bool | None = None, batch_size: int = 8, progress: bool = True, backend: str = "torch",
         streams: int = 1, map_size: int = POOLED_MAP_SIZE, bad_files: str | None = None,
         calibration_dir: str = str(Path(REPO_ROOT) / "data" / "sample" / "train"), lung_mode: str = "none",
         lung_model_path: str = str(Path(REPO_ROOT) / "models" / "lung_unet.pt"), lung_margin: float = 0.05,
         feature_stages=()) -> None:
    """Fill `cache_dir` for the items of `splits` (comma-separated) of the datalist JSON `datalist`.

    variant: "lite" (packaged LiteMedSAM) or "vit_b" (needs --checkpoint medsam_vit_b.pth). device: default cuda
    when available. keep_aspect: default the encoder's MedSAM pipeline (lite: pad, vit_b: plain resize).
    backend: "torch", "onnxruntime" / "openvino" (CPU, exact: share cache entries with torch), "openvino-bf16" (CPU,
    approximate where the CPU has bf16), "openvino-int8" (CPU, int8 matrix products calibrated on images below
    `calibration_dir`, default the bundle's sample: approximate, the fastest) or "onnxruntime-int8" (approximate);
    approximate backends get their own cache entries; see custom.medsam.encoders.build_encoder. streams: concurrent
    ONNX Runtime sessions / OpenVINO requests sharing the threads (2 on a 2-core CPU is faster than 1, same
    embeddings).
    map_size: side of the stored average-pooled map, (256, map_size, map_size) float16 per image (8: 32 KiB, 16:
    128 KiB); part of the cache key.
    lung_mode: "crop" (the encoder sees the lung box plus `lung_margin` of the image side, found by the lung UNet
    `lung_model_path`), "mask" or "none", as train.json's ids of the same names; part of the cache key.
    feature_stages: TinyViT stages stored after the embedding (e.g. "1,2": 736 channels), as train_medsam_frozen.json's
    `encoder_feature_stages`; part of the cache key (through the variant).
    bad_files: CSV of the images that failed (default `<cache_dir>/bad_files.csv`); RuntimeError if no image could be
    embedded.
    """
    names = splits.split(",") if isinstance(splits, str) else list(splits)
    unknown = [s for s in names if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose from {list(SPLITS)}")
    data = load_datalist(datalist, base_dir=base_dir)
    stages = parse_feature_stages(feature_stages)
    encoder = build_encoder(variant, checkpoint, backend, streams=streams, calibration_dir=calibration_dir,
                            feature_stages=stages)
    keep_aspect = encoder.keep_aspect if keep_aspect is None else keep_aspect
    lung_step = LungPreprocessd("image", lung_model_path, mode=lung_mode, margin=lung_margin)
    cache = EmbeddingCache(cache_dir, encoder, encoder.variant, Preprocessing(encoder.input_size, keep_aspect, map_size),
                           lung_step)
    device = device or ("cuda" if torch.cuda.is_available() and backend == "torch" else "cpu")
    summary = {"cache_dir": str(Path(cache_dir).resolve()), "variant": encoder.variant,
               "weights_sha256": cache.fingerprint, "preprocessing": asdict(cache.preprocessing),
               "lung": cache.lung_step.fingerprint() if cache.lung_step else None, "splits": {}}
    bad, total = [], 0
    for name in names:
        items = data.get(name) or []
        hits, misses = cache.hits, cache.misses
        cache.get_or_compute([item["image"] for item in items], batch_size, device, progress)
        summary["splits"][name] = {"images": len(items), "hits": cache.hits - hits, "misses": cache.misses - misses,
                                   "failed": len(cache.failed), "failures": cache.failed,
                                   "lung_fallbacks": cache.lung_fallbacks}
        bad += [(path, stage, reason) for path, (stage, reason) in cache.failed.items()]
        total += len(items)
    bad_files = bad_files or str(Path(cache_dir) / "bad_files.csv")
    write_bad_files(bad_files, bad)
    summary["corrupt_entries_recomputed"] = cache.corrupt
    summary["bad_files"] = bad_files
    print(json.dumps(summary, indent=2))
    if total and len(bad) == total:
        raise RuntimeError(f"none of the {total} image(s) could be embedded; reasons in {bad_files}")


if __name__ == "__main__":
    fire.Fire(main)
