"""`LungPreprocessd`: crop a chest radiograph to its lungs, or suppress everything outside them, using the lung UNet."""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.engines import default_prepare_batch
from monai.transforms import Compose, MapTransform
from monai.transforms.utils import generate_spatial_bounding_box
from monai.utils import convert_to_dst_type, convert_to_tensor

from custom.data.transforms import source_file
from custom.io import file_sha256
from custom.lung.segmentation import load_lung_unet, load_lung_unet_openvino, segment_lungs_batch

MODES = ("crop", "mask", "none")
BACKENDS = ("torch", "openvino", "openvino-bf16")  # how the UNet runs: PyTorch on `device`; OpenVINO on the CPU
STATUS_KEY = "lung_crop"  # what the lung step did to an item (crop or mask mode): "applied", "fallback" (implausible mask) or "none"


def lung_bbox(mask: torch.Tensor, margin: float) -> tuple[list[int], list[int]]:
    """Bounding box (start, end) of a (1, W, H) mask, grown by ``margin`` x the image size per side, clipped."""
    size = mask.shape[1:]
    pad = [int(round(margin * s)) for s in size]
    start, end = generate_spatial_bounding_box(mask, margin=pad)
    return [max(0, s) for s in start], [min(e, n) for e, n in zip(end, size)]


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(1, W, H) bool mask dilated by a (2 radius + 1)^2 square, in pixels."""
    if radius <= 0:
        return mask
    grown = F.max_pool2d(mask[None].float(), kernel_size=2 * radius + 1, stride=1, padding=radius)
    return grown[0].bool()


class LungPreprocessd(MapTransform):
    """Segments the lungs of a (C, W, H) image in [0, 1] (C = 1, or identical repeated channels) and

    * ``mode="crop"``: crops every channel to the lung bounding box plus ``margin`` (fraction of the image size per
      side) and resizes back to (W, H) (area interpolation), or
    * ``mode="mask"``: sets every pixel farther than ``dilation`` (fraction of the mean image side) from the lungs to 0,
    * ``mode="none"``: passes the data through untouched (the UNet is never loaded).

    When the postprocessed mask covers less than ``min_area`` or more than ``max_area`` of the image, the image is
    returned unmodified with a `UserWarning` naming the file. What was done is recorded in the item under
    `STATUS_KEY` ("applied", "fallback" or "none"), so that reports can list it per image. The UNet (``model_path``) is
    loaded once per process on first use and runs, by ``backend``, in PyTorch on ``device`` ("torch"), or compiled by
    OpenVINO on the CPU in float32 ("openvino", faster on a CPU) or bfloat16 ("openvino-bf16", needs AMX / AVX-512
    BF16; approximate: agreement of the masks in docs/benchmarks.md). With ``mask_key``, the (1, W, H) bool lung mask
    is stored under that key as well.
    """

    def __init__(self, keys: KeysCollection, model_path: str | os.PathLike, mode: str = "crop", margin: float = 0.05,
                 dilation: float = 0.03, min_area: float = 0.08, max_area: float = 0.75, device: str | torch.device = "cpu",
                 mask_key: str | None = None, backend: str = "torch", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if not 0.0 <= min_area < max_area <= 1.0:
            raise ValueError(f"need 0 <= min_area < max_area <= 1, got {min_area}, {max_area}")
        self.model_path = os.fspath(model_path)
        self.mode, self.margin, self.dilation = mode, margin, dilation
        self.min_area, self.max_area = min_area, max_area
        self.device = str(torch.device(device))
        self.mask_key = mask_key
        self.backend = backend

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        d[STATUS_KEY] = "none"
        if self.mode == "none":
            return d
        for key in self.key_iterator(d):
            image = d[key]
            name = source_file(d, key) or f"<{key}>"
            if not isinstance(image, torch.Tensor) or image.ndim != 3:
                raise ValueError(f"{name}: LungPreprocessd expects a (C, W, H) tensor, got {getattr(image, 'shape', type(image))}")
            out, mask, [status] = self.apply(image[None], [name])
            d[key] = convert_to_dst_type(out[0], image)[0]
            if self.mask_key is not None:
                d[self.mask_key] = mask[0]
            d[STATUS_KEY] = status
        return d

    def apply_batch(self, batch: Mapping[Hashable, object]) -> dict:
        """The transform on a collated batch (each key: a (B, C, W, H) tensor); `STATUS_KEY` becomes a list of B
        statuses, so that decollation gives every item what ``__call__`` would have. Same results as ``__call__`` per
        item: the UNet runs once per batch, the rest of the step is per image as there."""
        d = dict(batch)
        keys = list(self.key_iterator(d))
        size = len(d[keys[0]]) if keys else 0
        d[STATUS_KEY] = ["none"] * size
        if self.mode == "none":
            return d
        for key in keys:
            images = d[key]
            names = [source_file(d, key, i) or f"<{key}>" for i in range(size)]
            out, masks, d[STATUS_KEY] = self.apply(images, names)
            d[key] = convert_to_dst_type(out, images)[0]
            if self.mask_key is not None:
                d[self.mask_key] = masks
        return d

    def apply(self, images: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(B, C, W, H) images in [0, 1] (file names for warnings) -> ((B, C, W, H) processed images (plain tensor),
        (B, 1, W, H) bool lung masks, B statuses "applied" or "fallback")."""
        images = convert_to_tensor(images, track_meta=False)
        masks = segment_lungs_batch(images[:, :1], self.unet())
        areas = masks.flatten(1).float().mean(1).tolist()
        out, statuses = [], []
        for image, mask, area, name in zip(images, masks, areas, names):
            if not self.min_area <= area <= self.max_area:
                warnings.warn(f"{name}: implausible lung mask ({area:.1%} of the image, expected "
                              f"{self.min_area:.0%}-{self.max_area:.0%}); image left unmodified", stacklevel=3)
                out.append(image)
                statuses.append("fallback")
                continue
            out.append(self._crop(image, mask) if self.mode == "crop" else self._mask(image, mask))
            statuses.append("applied")
        return torch.stack(out), masks, statuses

    def fingerprint(self) -> dict:
        """What decides this step's output, for cache keys: mode, margin, dilation, area bounds, UNet backend and the
        sha256 of the UNet file."""
        return {"mode": self.mode, "margin": self.margin, "dilation": self.dilation, "min_area": self.min_area,
                "max_area": self.max_area, "backend": self.backend, "unet_sha256": file_sha256(self.model_path)}

    def unet(self) -> torch.nn.Module:
        """The UNet as `backend` runs it, loaded (and compiled) once per process."""
        if self.backend == "torch":
            return load_lung_unet(self.model_path, self.device)
        return load_lung_unet_openvino(self.model_path, "bf16" if self.backend == "openvino-bf16" else "f32")

    def _crop(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(C, W, H) -> (C, W, H): the lung box (`lung_bbox`) resized back with area interpolation (as MONAI's
        ``Resize(mode="area")`` of ``SpatialCrop``)."""
        (x0, y0), (x1, y1) = lung_bbox(mask, self.margin)
        box = image[None, :, x0:x1, y0:y1].float()
        return box[0] if box.shape[2:] == image.shape[1:] else F.interpolate(box, size=image.shape[1:], mode="area")[0]

    def _mask(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        radius = int(round(self.dilation * sum(image.shape[1:]) / 2))
        return image * dilate(mask, radius).to(image.device, image.dtype)


class BatchedLungStep:
    """Runs the `LungPreprocessd` steps that end a per-image chain on collated batches instead (one UNet forward per
    batch), as the ``prepare_batch`` of a MONAI ``SupervisedEvaluator``.

    `item_transform` is ``preprocessing`` without those trailing steps (the Dataset's transform); calling the
    instance applies them to the evaluator's batch dict (which then carries `STATUS_KEY` per item into the handlers)
    and hands it to `monai.engines.default_prepare_batch`. Without trailing `LungPreprocessd` steps (e.g. another
    step follows the lung step), `item_transform` is ``preprocessing`` itself and batches pass through unchanged.
    """

    def __init__(self, preprocessing: Compose) -> None:
        transforms = list(preprocessing.flatten().transforms)
        split = len(transforms)
        while split and isinstance(transforms[split - 1], LungPreprocessd):
            split -= 1
        self.steps = transforms[split:]
        self.item_transform = Compose(transforms[:split]) if self.steps else preprocessing

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        for step in self.steps:
            batchdata.update(step.apply_batch(batchdata))  # in place: the engine decollates this dict for handlers
        return default_prepare_batch(batchdata, device, non_blocking, **kwargs)

