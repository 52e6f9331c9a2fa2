"""Static int8 quantisation of a bundle network for the CPU, and the guard that runs a quantised file only with the
checkpoint it was made from.

`quantize_static_int8` exports a PyTorch network to ONNX, calibrates activation ranges on real preprocessed images
and writes a QDQ model (ONNX Runtime's static quantisation: int8 weights per output channel, uint8 activations,
min-max ranges), which OpenVINO compiles to int8 kernels (`custom.models.export.OpenVinoModule`). The file records
the sha256 of its source checkpoint and how it was calibrated in the ONNX metadata (`QUANTIZED_KEY`).

A quantised file lives beside its checkpoint under one name (`int8_path`: ``models/model.pt`` ->
``models/model_int8.onnx``); `checked_int8_path` refuses one whose recorded source is not that checkpoint, naming
both hashes and the command that rebuilds it. int8 is approximate: agreement with float32 in docs/benchmarks.md.

`quantize_openvino_int8` is the transformer counterpart (NNCF post-training quantisation of an OpenVINO-readable
model, used for the LiteMedSAM encoder): int8 matrix products, chosen operator types left in floating point.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from custom.io import atomic_path, file_sha256

QUANTIZED_KEY = "int8_quantization"  # ONNX metadata_props key: JSON {"source_checkpoint": {...}, "calibration": {...}}
REBUILD = "python scripts/export.py int8"


def int8_path(checkpoint: str | os.PathLike) -> Path:
    """Where the int8 model of `checkpoint` lives: ``<dir>/<stem>_int8.onnx``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}_int8.onnx")


def int8_record(path: str | os.PathLike) -> dict | None:
    """The `QUANTIZED_KEY` record of an int8 ONNX file; None when it has none or is no readable ONNX model."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx raises DecodeError / OSError / ValueError for files it cannot parse
        return None
    props = {p.key: p.value for p in model.metadata_props}
    try:
        record = json.loads(props[QUANTIZED_KEY])
    except (KeyError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def checked_int8_path(checkpoint: str | os.PathLike) -> Path:
    """`int8_path(checkpoint)` after checking that it exists and was quantised from `checkpoint` (sha256); else a
    `FileNotFoundError` / `ValueError` naming both files and `REBUILD`."""
    checkpoint, path = Path(checkpoint), int8_path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no int8 model of {checkpoint} (build it with `{REBUILD}`)")
    record = int8_record(path)
    if record is None:
        raise ValueError(f"{path}: no readable int8 model with a {QUANTIZED_KEY!r} record; rebuild it with `{REBUILD}`")
    source = record.get("source_checkpoint", {}).get("sha256")
    current = file_sha256(checkpoint)
    if source != current:
        raise ValueError(f"{path} was quantised from a checkpoint with sha256 {source}, but {checkpoint} has sha256 "
                         f"{current}: rebuild it with `{REBUILD}`")
    return path


def quantize_static_int8(network: nn.Module, batches: Iterable[torch.Tensor], dst: str | os.PathLike,
                         record: dict) -> Path:
    """`network` (eval, float32, CPU; (B, C, H, W) -> outputs) -> int8 QDQ ONNX file `dst`, written atomically, with
    activation ranges calibrated on `batches` ((B, C, H, W) float32 tensors, as the network sees them) and `record`
    (e.g. ``{"source_checkpoint": {"file", "sha256"}, "calibration": {...}}``) stored under `QUANTIZED_KEY`."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from custom.models.export import INPUT_NAME, export_onnx

    batches = [torch.as_tensor(b).detach().cpu().float() for b in batches]
    if not batches:
        raise ValueError("int8 calibration needs at least one batch of images")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(batches)

        def get_next(self):
            batch = next(self.remaining, None)
            return None if batch is None else {INPUT_NAME: batch.numpy()}

    dst = Path(dst)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared, quantized = (Path(tmp) / n for n in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        export_onnx(network, fp32, [1, *batches[0].shape[1:]])
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        model = onnx.load(str(quantized))
        onnx.helper.set_model_props(model, {QUANTIZED_KEY: json.dumps(record, sort_keys=True)})
        with atomic_path(dst) as out:
            onnx.save(model, str(out))
    return dst


def quantize_openvino_int8(model: str | os.PathLike, batches: Iterable[np.ndarray], dst: str | os.PathLike,
                           float_types: Sequence[str] = ()) -> Path:
    """NNCF static int8 of `model` (``.onnx`` or OpenVINO IR ``.xml``) -> OpenVINO IR `dst` (``.xml`` + ``.bin``).

    Transformer preset: SmoothQuant, int8 weights per output channel, symmetric int8 activations with ranges
    calibrated on `batches` (float32 arrays, each one model input as the model sees it), fast bias correction.
    Operators of `float_types` (OpenVINO type names) keep the compiled model's floating-point precision. Both files
    are written in a temporary folder beside `dst` and moved in ``.bin`` first, so an existing ``.xml`` always has
    its weights. Approximate: measure the agreement before use.
    """
    import nncf
    import openvino as ov

    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches]
    if not batches:
        raise ValueError("int8 calibration needs at least one batch of images")
    nncf.set_log_level(logging.WARNING)  # its INFO lists every operator left in floating point
    dst = Path(dst)
    quantized = nncf.quantize(ov.Core().read_model(str(model)), nncf.Dataset(batches), subset_size=len(batches),
                              model_type=nncf.ModelType.TRANSFORMER,
                              ignored_scope=nncf.IgnoredScope(types=list(float_types), validate=False))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=f".{dst.stem}.") as tmp:
        ov.save_model(quantized, str(Path(tmp) / dst.name), compress_to_fp16=False)
        os.replace(Path(tmp) / dst.with_suffix(".bin").name, dst.with_suffix(".bin"))
        os.replace(Path(tmp) / dst.name, dst)
    return dst


def calibration_record(files: list[str]) -> dict:
    """How a calibration set was drawn, for `quantize_static_int8`'s record: image count and the sha256 of the
    sorted file names (relative names, so that the record does not depend on where the data lives)."""
    names = "\n".join(sorted(files)).encode()
    return {"images": len(files), "files_sha256": hashlib.sha256(names).hexdigest()}
