"""Inferers for classifiers: reduced-precision forward (`AutocastInferer`), the network compiled by OpenVINO for the CPU
(`OpenVinoInferer`) and test-time augmentation (`AffineTTAInferer`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.utils import convert_to_tensor
from torch import nn

PRECISIONS = ("float32", "bfloat16", "auto")  # of a float forward; backend "openvino" also runs "int8"
BACKENDS = ("torch", "openvino", "onnxruntime")  # how an inference config runs its classifier


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` runs bfloat16 convolutions and matmuls natively: a CPU with AMX or AVX-512 BF16 (oneDNN), or
    a CUDA device that supports bf16. Elsewhere bf16 is emulated and slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    return False


def forward_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """`precision` ("float32", "bfloat16" or "auto": bfloat16 where `native_bf16(device)`, else float32) -> dtype."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return getattr(torch, precision)


class AutocastInferer(Inferer):
    """The network's forward under ``torch.autocast(<input device type>, dtype)`` (float32: a plain call, exact);
    (B, C, H, W) -> float32 (B, num_classes) logits whatever `dtype`. bfloat16 is approximate: about 2x the images/s
    of float32 on a CPU with AMX (docs/benchmarks.md, "CPU inference throughput", with its agreement with float32)."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dtype = dtype

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        inputs = convert_to_tensor(inputs, track_meta=False)  # a MetaTensor sends every layer's op through Python
        if self.dtype == torch.float32:
            return network(inputs, *args, **kwargs)
        with torch.autocast(inputs.device.type, dtype=self.dtype):
            return network(inputs, *args, **kwargs).float()


class OpenVinoInferer(Inferer):
    """The network compiled by OpenVINO for the CPU (`custom.models.export.OpenVinoModule`, dynamic batch), in
    ``dtype`` float32 (exact up to float32 rounding) or bfloat16 (OpenVINO's bf16 inference precision, approximate;
    needs `native_bf16`): (B, C, H, W) -> float32 (B, num_classes) logits. The network is converted at the first call
    with its weights of that moment and recompiled only when another network object is passed, so it serves
    inference, not training.

    With `int8_file` (an int8 QDQ ONNX model, `custom.models.quantization`) that file is compiled instead, once, and the
    network passed in is not read: int8 convolutions, the other operations in ``dtype``; the caller checks that the
    file belongs to the network's checkpoint (`classifier_inferer` does). Speed and agreement with float32 PyTorch:
    docs/benchmarks.md, "CPU inference throughput".
    """

    def __init__(self, dtype: torch.dtype = torch.float32, int8_file: str | None = None) -> None:
        super().__init__()
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"OpenVinoInferer runs float32 or bfloat16, got {dtype}")
        if dtype == torch.bfloat16 and not native_bf16("cpu"):
            raise ValueError("bfloat16 needs a CPU with AMX or AVX-512 BF16; use precision 'auto' or 'float32'")
        self.dtype = dtype
        self.int8_file = None if int8_file is None else str(int8_file)
        self.source: nn.Module | None = None
        self.compiled: nn.Module | None = None

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        from custom.models.export import OpenVinoModule, openvino_model

        if args or kwargs:
            raise ValueError("OpenVinoInferer compiles the network for one input tensor; it cannot pass further "
                             "forward arguments (use backend 'torch')")
        inputs = convert_to_tensor(inputs, track_meta=False)  # a MetaTensor sends every layer's op through Python
        precision = "bf16" if self.dtype == torch.bfloat16 else "f32"
        if self.int8_file is not None:
            if self.compiled is None:
                self.compiled = OpenVinoModule(self.int8_file, precision)
        elif self.source is not network:
            self.compiled = OpenVinoModule(openvino_model(network, inputs[:1]), precision)
            self.source = network
        return self.compiled(inputs)


def classifier_inferer(backend: str, precision: str, device: torch.device | str,
                       ckpt_path: str | None = None) -> Inferer:
    """The inference configs' `inferer` for their `backend`: "torch" (`AutocastInferer` in `precision` on `device`),
    "openvino" (`OpenVinoInferer` in `precision`, CPU only; precision "int8" runs the int8 model of `ckpt_path`,
    `custom.models.quantization.checked_int8_path`, the rest in bfloat16 where `native_bf16`) or "onnxruntime" (the
    network is an `custom.models.export.OnnxModule`; float32, `precision` ignored)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    if precision == "int8" and backend != "openvino":
        raise ValueError(f"precision 'int8' runs on backend 'openvino' only, got backend {backend!r}")
    if backend == "openvino":
        if torch.device(device).type != "cpu":
            raise ValueError(f"backend 'openvino' runs on the CPU; got device {device} (use backend 'torch')")
        if precision == "int8":
            from custom.models.quantization import checked_int8_path

            if ckpt_path is None:
                raise ValueError("precision 'int8' needs the checkpoint whose int8 model to run (ckpt_path)")
            return OpenVinoInferer(forward_dtype("auto", "cpu"), int8_file=str(checked_int8_path(ckpt_path)))
        return OpenVinoInferer(forward_dtype(precision, "cpu"))
    return AutocastInferer(forward_dtype(precision if backend == "torch" else "float32", device))


class AffineTTAInferer(Inferer):
    """Mean logits over the image itself, shifted by +-`shift` (fraction of the size) along each axis, and
    zoomed by each factor in `zooms`. (B, C, H, W) -> (B, num_classes). The views are cheap deterministic
    affine resamplings, so the result is reproducible."""

    def __init__(self, shift: float = 0.04, zooms: Sequence[float] = (0.92, 1.08)) -> None:
        super().__init__()
        self.views = [(0.0, 0.0, 1.0)]
        self.views += [(dx, dy, 1.0) for dx, dy in ((shift, 0), (-shift, 0), (0, shift), (0, -shift)) if shift]
        self.views += [(0.0, 0.0, float(z)) for z in zooms]

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        logits = [network(self.transform(inputs, *view), *args, **kwargs) for view in self.views]
        return torch.stack(logits).mean(0)

    @staticmethod
    def transform(images: torch.Tensor, dx: float, dy: float, zoom: float) -> torch.Tensor:
        """Shift by (dx, dy) fractions of the image size and zoom by `zoom` (>1 magnifies); zero padding."""
        if (dx, dy, zoom) == (0.0, 0.0, 1.0):
            return images
        theta = torch.tensor([[1 / zoom, 0, -2 * dx], [0, 1 / zoom, -2 * dy]], dtype=images.dtype, device=images.device)
        grid = F.affine_grid(theta.expand(images.shape[0], 2, 3), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
