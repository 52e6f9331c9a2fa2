"""Export of bundle networks: TorchScript that records its source checkpoint, ONNX, and ONNX Runtime / OpenVINO (CPU)
modules that stand in for the PyTorch network.

`export_torchscript` writes ``models/model.ts`` with the sha256 of the checkpoint it was made from; `bundle_weights`
prefers that file to ``models/model.pt`` only while the two still match. `export_onnx` writes a single-file ``.onnx``
atomically (TorchScript-based ``torch.onnx.export``, input ``image``, output ``output``; dynamic batch axis, or a fixed
batch for models whose graph bakes the batch size in, such as LiteMedSAM's TinyViT). `OnnxModule` runs such a file in
an ``onnxruntime.InferenceSession`` on CPU behind the usual ``nn.Module`` call, so MONAI inferers, evaluators and
handlers work unchanged; `OpenVinoModule` does the same with OpenVINO, from such a file or from a PyTorch module
converted in memory (`openvino_model`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from custom.io import atomic_path, file_sha256

INPUT_NAME = "image"
OUTPUT_NAME = "output"
OPSET = 17
SOURCE_KEY = "source_checkpoint"  # in the TorchScript archive's extra/metadata.json: {"file", "sha256"}

logger = logging.getLogger(__name__)


def export_torchscript(bundle_root: str | os.PathLike = ".", ckpt_file: str | os.PathLike | None = None,
                       filepath: str | os.PathLike | None = None) -> Path:
    """`monai.bundle ckpt_export` of `network_def` (``configs/inference.json``) with the "model" weights of
    `ckpt_file` (default ``models/model.pt``) into `filepath` (default ``models/model.ts``), written atomically.

    The checkpoint's name and sha256 go into the archive's ``metadata.json`` as ``_meta_.source_checkpoint`` (the same
    as ``ckpt_export ... --_meta_#source_checkpoint "{'file': 'model.pt', 'sha256': '<hex>'}"``), for `bundle_weights`.
    """
    from monai.bundle import ckpt_export

    root = Path(bundle_root)
    ckpt = Path(ckpt_file) if ckpt_file else root / "models" / "model.pt"
    path = Path(filepath) if filepath else root / "models" / "model.ts"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: checkpoint to export not found")
    record = {"file": ckpt.name, "sha256": file_sha256(ckpt)}
    with atomic_path(path) as tmp:
        ckpt_export(net_id="network_def", filepath=str(tmp), ckpt_file=str(ckpt), key_in_ckpt="model",
                    meta_file=str(root / "configs" / "metadata.json"),
                    config_file=str(root / "configs" / "inference.json"), bundle_root=str(root),
                    **{f"_meta_#{SOURCE_KEY}": record})
    return path


def torchscript_source(path: str | os.PathLike) -> dict | None:
    """The ``source_checkpoint`` record `export_torchscript` put into a TorchScript file; None when the file has
    none or is no readable TorchScript archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/extra/metadata.json")), None)
            record = json.loads(archive.read(name)).get(SOURCE_KEY) if name else None
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def bundle_weights(models_dir: str | os.PathLike) -> Path:
    """The weights file to load from a bundle's ``models/``: ``model.ts`` when its recorded source checkpoint has the
    sha256 of the current ``model.pt`` (or there is no ``model.pt``), else ``model.pt``. Passing over a ``model.ts``
    (no record, or made from other weights) logs a warning naming both files."""
    models = Path(models_dir)
    ts, pt = models / "model.ts", models / "model.pt"
    if not pt.is_file():
        if ts.is_file():
            return ts
        raise FileNotFoundError(f"{models}: neither model.ts nor model.pt found")
    if not ts.is_file():
        return pt
    record = torchscript_source(ts)
    if record is None:
        logger.warning("%s has no source-checkpoint record (re-export it with `python scripts/export.py torchscript`);"
                       " using %s instead", ts, pt)
        return pt
    current = file_sha256(pt)
    if record.get("sha256") != current:
        logger.warning("%s was exported from a checkpoint with sha256 %s, but %s now has sha256 %s: the TorchScript "
                       "file is stale, using %s instead", ts, record.get("sha256"), pt, current, pt)
        return pt
    return ts


def export_onnx(model: nn.Module, filepath: str | os.PathLike, input_shape: Sequence[int],
                dynamic_batch: bool = True, opset: int = OPSET) -> Path:
    """Trace `model` (eval mode, CPU, float32) on a random (B, C, H, W) input of `input_shape` and write ``.onnx``.

    dynamic_batch: the batch axis of input and output is symbolic; False fixes it to ``input_shape[0]``
    (`OnnxModule` then feeds larger batches in chunks of that size). Returns the path written.
    """
    model = model.eval().cpu().float()
    example = torch.rand(*input_shape)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    path = Path(filepath)
    with atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(model, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    return path


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """ONNX Runtime dynamic int8 quantisation (weights int8, activations quantised per call) of `src` into `dst`.
    Approximate: outputs differ from fp32 (measure the cosine / metric change before use)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    with atomic_path(dst) as tmp:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
    return dst


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """CPU ``onnxruntime.InferenceSession`` with all graph optimisations; threads: intra-op threads (None = torch's
    ``get_num_threads()``, so ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` apply to both backends)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX model not found (export it with scripts/export.py)")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable / invalid models
        raise ValueError(f"{path}: not a valid ONNX model for onnxruntime ({e})") from e


class OnnxModule(nn.Module):
    """An exported network run by ONNX Runtime on CPU: (B, C, H, W) tensor -> float32 output tensor on the input's
    device. Batches larger than a fixed exported batch size are run in chunks. No parameters, no autograd.

    Args:
        path: ``.onnx`` file with one input and one output (as `export_onnx` writes).
        threads: intra-op threads in all (None = ``torch.get_num_threads()``).
        streams: sessions that run chunks of a batch concurrently, each with ``threads // streams`` intra-op threads
            (at least 1). Same graph, same outputs; on a 2-core CPU two 1-thread streams embed LiteMedSAM images
            faster than one 2-thread session (docs/benchmarks.md). A dynamic-batch model's batch is split into
            ``streams`` chunks.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, streams: int = 1):
        super().__init__()
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self.path = str(Path(path).resolve())
        per_stream = max(1, (threads or torch.get_num_threads()) // streams)
        self.sessions = [ort_session(path, per_stream) for _ in range(streams)]
        inputs = self.sessions[0].get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{path}: expected one input, the model has {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape  # ints for fixed axes, str / None for symbolic ones
        batch = self.input_shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = torch.as_tensor(x).detach().cpu().float().numpy()
        expected = self.input_shape[1:]
        if array.ndim != len(self.input_shape) or any(
                isinstance(e, int) and e != a for e, a in zip(expected, array.shape[1:])):
            raise ValueError(f"{self.path} expects input shape {self.input_shape}, got {tuple(array.shape)}")
        if not len(array):
            raise ValueError(f"{self.path}: empty batch")
        step = self.fixed_batch or max(1, -(-len(array) // len(self.sessions)))
        if len(array) % step and self.fixed_batch:
            raise ValueError(f"{self.path} has a fixed batch of {step}; got a batch of {len(array)}")
        chunks = [np.ascontiguousarray(array[i:i + step]) for i in range(0, len(array), step)]
        streams = min(len(self.sessions), len(chunks))

        def run_stream(k: int) -> list[np.ndarray]:  # chunks k, k + streams, ... on session k
            return [self.sessions[k].run(None, {self.input_name: c})[0] for c in chunks[k::streams]]

        if streams == 1:
            by_stream = [run_stream(0)]
        else:  # onnxruntime releases the GIL while it runs
            with ThreadPoolExecutor(streams) as pool:
                by_stream = list(pool.map(run_stream, range(streams)))
        outputs = [by_stream[i % streams][i // streams] for i in range(len(chunks))]
        return torch.from_numpy(np.concatenate(outputs)).to(x.device)


def openvino_supports_bf16() -> bool:
    """True when OpenVINO's CPU plugin reports native bfloat16 (AVX-512 BF16 or AMX), so a bf16 hint is honoured."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoModule(nn.Module):
    """A network compiled by OpenVINO for the CPU: (B, C, H, W) tensor -> float32 output on the input's device, the
    batch split into `streams` requests in flight (one image per request for a model with a fixed batch of 1, as the
    LiteMedSAM export). No autograd.

    Args:
        model: ``.onnx`` file with one input and one output (as `export_onnx` writes), or an ``openvino.Model`` (as
            `openvino_model` converts from a PyTorch module).
        precision: ``"f32"`` (exact up to float32 rounding) or ``"bf16"`` (OpenVINO's bfloat16 inference
            precision, approximate; needs `openvino_supports_bf16`, else ValueError: callers decide the fallback).
        threads: CPU threads in all (None = ``torch.get_num_threads()``).
        streams: OpenVINO CPU streams (concurrent requests, threads split between them).
    """

    def __init__(self, model, precision: str = "f32", threads: int | None = None, streams: int = 1):
        super().__init__()
        import openvino as ov

        if precision not in ("f32", "bf16"):
            raise ValueError(f"precision must be 'f32' or 'bf16', got {precision!r}")
        if precision == "bf16" and not openvino_supports_bf16():
            raise ValueError("this CPU has no native bfloat16 (AVX-512 BF16 / AMX) for OpenVINO; use precision='f32'")
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: ONNX model not found (export it with scripts/export.py)")
            self.path, model = str(path.resolve()), str(path)
        else:
            self.path = f"<{model.get_friendly_name()}>"
        self.precision = precision
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
                  "NUM_STREAMS": streams}
        try:
            self.compiled = ov.Core().compile_model(model, "CPU", config)
        except RuntimeError as e:
            raise ValueError(f"{self.path}: OpenVINO cannot compile this model ({' '.join(str(e).split())[:300]})") from e
        if len(self.compiled.inputs) != 1:
            raise ValueError(f"{self.path}: expected one input, the model has {len(self.compiled.inputs)}")
        shape = self.compiled.input(0).get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else -1 for d in shape)  # -1: dynamic axis
        self.streams = streams
        self.requests = ov.AsyncInferQueue(self.compiled, streams)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = torch.as_tensor(x).detach().cpu().float().numpy()
        if array.ndim != len(self.input_shape) or not len(array) or any(
                e not in (-1, a) for e, a in zip(self.input_shape[1:], array.shape[1:])):
            shape = ", ".join("?" if e == -1 else str(e) for e in self.input_shape[1:])
            raise ValueError(f"{self.path} expects input shape (B>=1, {shape}), got {tuple(array.shape)}")
        step = 1 if self.input_shape[0] == 1 else max(1, -(-len(array) // self.streams))
        chunks = [np.ascontiguousarray(array[i:i + step]) for i in range(0, len(array), step)]
        outputs = [None] * len(chunks)

        def keep(request, index):
            outputs[index] = request.get_output_tensor(0).data.copy()

        self.requests.set_callback(keep)
        for i, chunk in enumerate(chunks):
            self.requests.start_async({0: chunk}, userdata=i)
        self.requests.wait_all()
        return torch.from_numpy(np.concatenate(outputs)).to(x.device)


def openvino_model(module: nn.Module, example: torch.Tensor):
    """``openvino.Model`` of a PyTorch `module` (a float32 copy in eval mode, its current weights; the caller's
    module is left as it is), traced on `example`, a (B, C, H, W) input; the batch axis is left dynamic."""
    import openvino as ov

    module = copy.deepcopy(module).eval().cpu().float()
    example = torch.as_tensor(example).detach().cpu().float().contiguous()
    with torch.no_grad():
        model = ov.convert_model(module, example_input=example)
    model.reshape({model.input(0): ov.PartialShape([-1, *example.shape[1:]])})
    model.set_friendly_name(type(module).__name__)
    return model
