"""CPU/GPU inference throughput of the bundle (images/s, ms per image), in one run:

* ``end-to-end``: the bundle's own `run` of configs/inference.json over the first `limit` files of `images` (decode,
  preprocessing, lung step, classifier forward, the predictions report), once per lung_mode (and, for crop and mask,
  per lung UNet of `lung_models`: the shipped 128 px `models/lung_unet.pt`, the 64 px `models/lung_unet_64.pt`), for
  the `paths`:
  ``batched`` (the config as shipped: the item chain with MONAI's metadata tracking off, the lung UNet once per
  batch via `BatchedLungStep`, channels-last classifier), ``tracked`` (the same with metadata tracking on, as before
  0.9.1) and ``per-item`` (the old path: tracked, the lung step per image in the Dataset, NCHW classifier, PyTorch
  float32);
* ``forward``: the classifier forward alone (as the config's inferer runs it) at each batch size, on the preprocessed
  images;
* ``backend`` x ``precision``: the batched end-to-end and forward rows run once per `backends` value (the config's
  `backend`: PyTorch, or the networks compiled by OpenVINO: classifier and lung UNet, `lung_backend`) and per
  `precisions` value (the config's `precision`: float32, or bfloat16: autocast in PyTorch, OpenVINO's bf16 inference
  precision, or int8: OpenVINO only, the static int8 model beside the checkpoint, `custom.models.quantization`, with
  the lung UNet in bf16 where the CPU has it), and ``agreement`` compares every other combination with PyTorch float32
  (with the first of `lung_models`) on every image of
  `agreement_images` (in the docs: the whole official train folder, never the test split, since the result informs
  the config defaults), per `agreement_lung_modes`: max |delta P(positive)| and the decisions that flip at the
  checkpoint's threshold, and the ROC-AUC of both against the images' class folders.

End-to-end time: from the evaluator's first epoch start to its end (checkpoint loading, config parsing and the
OpenVINO compilation at the first batch excluded: the warm-up run), best of `repeats` after one warm-up run. Prints
one JSON line: date, command, device, versions and the rows; `--results_file` also writes it.

    OMP_NUM_THREADS=2 python scripts/benchmark_inference.py --images ../shared/data/pediatric_cxr/test --limit 256 \
        --lung_modes crop,mask,none --lung_models models/lung_unet.pt,models/lung_unet_64.pt \
        --backends torch,openvino --precisions float32,bfloat16,int8 \
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

# the item chain with MONAI's metadata tracking on (the config before 0.9.1 untracked it)
TRACKED = {"dataset#track_meta": True}
# the old per-item path: the whole chain (lung step included) in the Dataset, tracked, default batch preparation,
# NCHW network
PER_ITEM = {"dataset#transform": "@preprocessing", "evaluator#prepare_batch": "$monai.engines.default_prepare_batch",
            "network": "$@network_def.to(@device)", **TRACKED}


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
    return {"scores": dict(zip(table["file"], table[f"prob_{positive}"])), "threshold": threshold, "positive": positive}


def lung_variants(mode: str, lung_paths: list[str]) -> list[tuple[str, str | None]]:
    """(the config's `lung_model_path`, the `lung_model` a row records) for each lung UNet that `mode` runs: every one
    of `lung_paths` for crop and mask; for `none`, which runs no UNet, one entry recorded as None."""
    return [(path, path) for path in lung_paths] if mode != "none" else [(lung_paths[0], None)]


def backend_overrides(backend: str, precision: str) -> dict:
    """Config overrides that run the classifier and the lung UNet by `backend` ("torch" or "openvino") in
    `precision` (the UNet follows the classifier: OpenVINO bf16 where `precision` resolves to bfloat16, or is int8
    on a CPU with native bf16: the UNet has no int8 model, an int8 UNet measured slower than bf16)."""
    from custom.models.inferers import forward_dtype, native_bf16

    lung = "torch"
    if backend == "openvino":
        bf16 = native_bf16("cpu") if precision == "int8" else forward_dtype(precision, "cpu") == torch.bfloat16
        lung = "openvino-bf16" if bf16 else "openvino"
    return {"backend": backend, "precision": precision, "lung_backend": lung}


def agreement(reference: dict, other: dict, backend: str, precision: str, lung_mode: str, lung_model: str,
              positive_folders: list[str]) -> dict:
    """`other` predictions (`backend` in `precision`, lung UNet `lung_model`) against PyTorch float32 `reference` ones
    (with the reference lung UNet): max and mean
    |delta P(positive)|, decisions flipped at the threshold, and the ROC-AUC of both against the images' class
    folders (an image is positive when its folder is one of `positive_folders`)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from custom.models.trained_model import is_positive

    names = sorted(reference["scores"])
    a, b = (np.array([run["scores"][n] for n in names]) for run in (reference, other))
    t = reference["threshold"]
    truth = [Path(n).parent.name in positive_folders for n in names]
    return {"backend": backend, "precision": precision, "lung_mode": lung_mode, "lung_model": lung_model,
            "images": len(names), "threshold": t,
            "max_abs_diff": round(float(np.abs(a - b).max()), 6), "mean_abs_diff": round(float(np.abs(a - b).mean()), 6),
            "decisions_flipped": int((is_positive(a, t) != is_positive(b, t)).sum()),
            "roc_auc_reference": round(float(roc_auc_score(truth, a)), 6),
            "roc_auc": round(float(roc_auc_score(truth, b)), 6)}


def main(images: str = "data/sample/test", config: str = "configs/inference.json", ckpt_path: str = "models/model.pt",
         lung_modes="crop,mask,none", lung_models="models/lung_unet.pt", paths="per-item,tracked,batched",
         batch_sizes="1,32", backends="torch", precisions="float32", limit: int = 256, repeats: int = 3,
         agreement_images: str | None = None, agreement_lung_modes="none", positive_folders=None,
         num_workers: int | None = None, results_file: str | None = None) -> None:
    """Times the first `limit` files of `images`; lung_modes: the config's `lung_mode` values to run end to end;
    lung_models: the lung UNets (the config's `lung_model_path`) of the crop and mask rows, the first also the
    agreement reference; paths: the end-to-end paths to time (module docstring); batch_sizes: of the classifier-only
    forward rows; backends, precisions: the config's `backend` ("torch",
    "openvino") and `precision` values of the batched and forward rows; agreement_images: folder whose every image
    compares each other backend / precision with PyTorch float32, once per agreement_lung_modes value;
    num_workers: DataLoader workers (None: the config's); results_file: JSON path written atomically with what is
    printed."""
    from custom.data import inference_items
    from custom.evaluation.benchmark import parse_list
    from custom.evaluation.timing import best_seconds, run_record
    from custom.io import write_json
    from custom.models.inferers import classifier_inferer, native_bf16
    from custom.models.trained_model import load_bundle

    files = [item["image"] for item in inference_items(images)[:limit]]
    common = {"ckpt_path": ckpt_path, **({} if num_workers is None else {"num_workers": num_workers})}
    combos = [(b, p) for b in parse_list(backends, str) for p in parse_list(precisions, str)
              if p != "int8" or b == "openvino"]  # int8: OpenVINO only
    lung_paths = parse_list(lung_models, str)
    timed = parse_list(paths, str)
    rows = []
    for mode in parse_list(lung_modes, str):
        candidates = [("per-item", "torch", "float32", PER_ITEM), *(("tracked", b, p, TRACKED) for b, p in combos),
                      *(("batched", b, p, {}) for b, p in combos)]
        for lung_model, recorded in lung_variants(mode, lung_paths):
            for path, backend, precision, overrides in (c for c in candidates if c[0] in timed):
                settings = {**common, "lung_mode": mode, "lung_model_path": lung_model,
                            **backend_overrides(backend, precision), **overrides}
                seconds = end_to_end_seconds(config, files, settings, repeats)
                rows.append(_row("end-to-end", len(files), seconds, path=path, lung_mode=mode, lung_model=recorded,
                                 backend=backend, precision=precision))

    trained = load_bundle(".", config, ckpt_path, device=None, lung_mode="none")
    parser = trained.config
    device = parser.get_parsed_content("device")
    net = parser.get_parsed_content("network").eval()  # as the config builds it (memory format included)
    net.load_state_dict(trained.network.state_dict())
    batch = torch.stack([trained.preprocessing({"image": f})["image"].as_tensor() for f in files]).to(device)
    with torch.inference_mode():
        for backend, precision in combos:
            inferer = classifier_inferer(backend, precision, device, ckpt_path)
            for bs in parse_list(batch_sizes, int):
                best = best_seconds(lambda: [inferer(batch[i:i + bs], net) for i in range(0, len(batch), bs)],
                                    repeats, device)
                rows.append(_row("forward", len(batch), best, batch=bs, backend=backend, precision=precision))
    agreements = []
    if agreement_images:
        every = [item["image"] for item in inference_items(agreement_images)]
        for mode in parse_list(agreement_lung_modes, str):
            overrides = {**common, "lung_mode": mode, "lung_model_path": lung_paths[0]}
            reference = predictions(config, every, {**overrides, **backend_overrides("torch", "float32")})
            positive = parse_list(positive_folders, str) if positive_folders else [reference["positive"]]
            for lung_model, recorded in lung_variants(mode, lung_paths):
                for b, p in combos:
                    if (b, p, lung_model) == ("torch", "float32", lung_paths[0]):
                        continue  # the reference itself
                    other = predictions(config, every, {**overrides, "lung_model_path": lung_model,
                                                        **backend_overrides(b, p)})
                    agreements.append(agreement(reference, other, b, p, mode, recorded, positive))
    workers = parser.get_parsed_content("num_workers") if num_workers is None else num_workers
    result = {**run_record(device, packages=("monai", "openvino")), "images": len(files), "input_shape": list(batch.shape[1:]),
              "batch_size": parser["batch_size"], "num_workers": workers, "repeats": repeats,
              "native_bf16": native_bf16(device), "rows": rows, "agreement": agreements}
    print(json.dumps(result))
    if results_file:
        write_json(result, results_file)


if __name__ == "__main__":
    fire.Fire(main)
