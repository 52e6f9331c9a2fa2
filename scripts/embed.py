"""Precompute the frozen MedSAM encoder embedding cache for a datalist and print hits / misses / failures per split;
the images that could not be embedded are listed in `bad_files.csv` (file, stage, reason) and skipped.

The encoder, preprocessing, lung step and cache folder are the `embedding_cache` of the bundle config
(`configs/train.json` + `--config_file`, default `configs/train_medsam_frozen.json`), so by default the entries are
exactly those that training with that config reads; each flag below overrides the config id named beside it.

Example (from the repo root):
    python scripts/embed.py --datalist datalists/kermany.json   # the frozen-MedSAM default: openvino-bf16, stages 1-2
    python scripts/embed.py --datalist datalists/kermany.json --feature_stages ""   # the embedding alone (DANN)
    python scripts/embed.py --datalist datalists/kermany.json --backend openvino-int8   # fastest on an AVX-512 CPU
    python scripts/embed.py --datalist datalists/kermany.json --backend openvino --lung_mode crop   # exact, lung box
    python scripts/embed.py --datalist datalists/kermany.json --variant vit_b --checkpoint medsam_vit_b.pth \
        --backend torch --feature_stages "" --device cuda --splits training,validation
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
from custom.evaluation.benchmark import parse_list  # noqa: E402
from custom.medsam.encoders import parse_feature_stages  # noqa: E402
from custom.models.trained_model import bundle_config  # noqa: E402

# command-line flag -> the config id it overrides
CONFIG_IDS = {"cache_dir": "cache_dir", "variant": "encoder_variant", "checkpoint": "encoder_checkpoint",
              "keep_aspect": "encoder_keep_aspect", "backend": "encoder_backend", "streams": "encoder_streams",
              "calibration_dir": "encoder_calibration_dir", "map_size": "map_size", "lung_mode": "lung_mode",
              "lung_model_path": "lung_model_path", "lung_margin": "lung_margin"}


def main(datalist: str, config_file="configs/train_medsam_frozen.json", cache_dir: str | None = None,
         variant: str | None = None, checkpoint: str | None = None, device: str | None = None,
         splits="training,validation,test", base_dir: str | None = None, keep_aspect: bool | None = None,
         batch_size: int = 8, progress: bool = True, backend: str | None = None, streams: int | None = None,
         map_size: int | None = None, bad_files: str | None = None, calibration_dir: str | None = None,
         lung_mode: str | None = None, lung_model_path: str | None = None, lung_margin: float | None = None,
         feature_stages=None) -> None:
    """Fill the cache for the items of `splits` (comma-separated) of the datalist JSON `datalist`.

    config_file: config(s) merged over `configs/train.json` (comma-separated, paths from the repo root) whose
    `embedding_cache` is filled. Each flag left out keeps the config's value; given, it overrides:
    cache_dir (`cache_dir`, default `runs/embeddings` under the repo); variant (`encoder_variant`: "lite", the
    packaged LiteMedSAM, or "vit_b", which needs --checkpoint medsam_vit_b.pth); keep_aspect
    (`encoder_keep_aspect`: the encoder's MedSAM pipeline, lite: pad, vit_b: plain resize); backend
    (`encoder_backend`: "torch", "onnxruntime" / "openvino" (CPU, exact: they share entries with torch),
    "openvino-bf16" (approximate where the CPU has bf16), "openvino-int8" (int8 matrix products calibrated on images
    below `calibration_dir`, `encoder_calibration_dir`) or "onnxruntime-int8"; approximate backends get entries of
    their own; see custom.medsam.encoders.build_encoder); streams (`encoder_streams`: concurrent ONNX Runtime sessions
    / OpenVINO requests sharing the threads); map_size (`map_size`: side of the stored average-pooled map,
    (C, map_size, map_size) float16 per image); feature_stages (`encoder_feature_stages`: TinyViT stages stored
    after the embedding, "1,2" gives 736 channels, "" the embedding alone); lung_mode / lung_model_path / lung_margin
    ("crop": the encoder sees the lung box found by the lung UNet, "mask", or "none"). All of them key the cache.
    device: default cuda when available and the backend is torch, else cpu.
    bad_files: CSV of the images that failed (default `<cache_dir>/bad_files.csv`); RuntimeError if no image could be
    embedded.
    """
    overrides = {CONFIG_IDS[flag]: value for flag, value in locals().items() if flag in CONFIG_IDS and value is not None}
    names = parse_list(splits)
    unknown = [s for s in names if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose from {list(SPLITS)}")
    data = load_datalist(datalist, base_dir=base_dir)
    if feature_stages is not None:
        overrides["encoder_feature_stages"] = parse_feature_stages(feature_stages)
    parser = bundle_config(REPO_ROOT, ["configs/train.json", *parse_list(config_file)], **overrides)
    cache = parser.get_parsed_content("embedding_cache")
    backend = parser.get_parsed_content("encoder_backend")
    device = device or ("cuda" if torch.cuda.is_available() and backend == "torch" else "cpu")
    summary = {"cache_dir": str(cache.cache_dir.resolve()), "variant": cache.variant, "backend": backend,
               "feature_stages": parser.get_parsed_content("encoder_feature_stages"),
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
    bad_files = bad_files or str(cache.cache_dir / "bad_files.csv")
    write_bad_files(bad_files, bad)
    summary["corrupt_entries_recomputed"] = cache.corrupt
    summary["bad_files"] = bad_files
    print(json.dumps(summary, indent=2))
    if total and len(bad) == total:
        raise RuntimeError(f"none of the {total} image(s) could be embedded; reasons in {bad_files}")


if __name__ == "__main__":
    fire.Fire(main)
