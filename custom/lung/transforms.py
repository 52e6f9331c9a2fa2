"""`LungPreprocessd`: crop a chest radiograph to its lungs, or suppress everything outside them, using the lung UNet."""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Resize, SpatialCrop
from monai.transforms.utils import generate_spatial_bounding_box

from custom.lung.segmentation import load_lung_unet, segment_lungs

MODES = ("crop", "mask", "none")
STATUS_KEY = "lung_preprocessing"  # what the transform did to an item: "applied", "fallback" (implausible mask) or "none"


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
    `STATUS_KEY` ("applied", "fallback" or "none"), so that reports can list it per image. The UNet (``model_path``) is loaded once per process on
    first use and runs on ``device``. With ``mask_key``, the (1, W, H) bool lung mask is stored under that key as well.
    """

    def __init__(self, keys: KeysCollection, model_path: str | os.PathLike, mode: str = "crop", margin: float = 0.05,
                 dilation: float = 0.03, min_area: float = 0.08, max_area: float = 0.75, device: str | torch.device = "cpu",
                 mask_key: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= min_area < max_area <= 1.0:
            raise ValueError(f"need 0 <= min_area < max_area <= 1, got {min_area}, {max_area}")
        self.model_path = os.fspath(model_path)
        self.mode, self.margin, self.dilation = mode, margin, dilation
        self.min_area, self.max_area = min_area, max_area
        self.device = str(torch.device(device))
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        d[STATUS_KEY] = "none"
        if self.mode == "none":
            return d
        net = load_lung_unet(self.model_path, self.device)
        for key in self.key_iterator(d):
            image = d[key]
            name = _file_name(image, key)
            if not isinstance(image, torch.Tensor) or image.ndim != 3:
                raise ValueError(f"{name}: LungPreprocessd expects a (C, W, H) tensor, got {getattr(image, 'shape', type(image))}")
            mask = segment_lungs(image[:1], net)
            area = float(mask.float().mean())
            if self.mask_key is not None:
                d[self.mask_key] = mask
            if not self.min_area <= area <= self.max_area:
                warnings.warn(f"{name}: implausible lung mask ({area:.1%} of the image, expected "
                              f"{self.min_area:.0%}-{self.max_area:.0%}); image left unmodified", stacklevel=2)
                d[STATUS_KEY] = "fallback"
                continue
            d[key] = self._crop(image, mask) if self.mode == "crop" else self._mask(image, mask)
            d[STATUS_KEY] = "applied"
        return d

    def _crop(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        start, end = lung_bbox(mask, self.margin)
        cropped = SpatialCrop(roi_start=start, roi_end=end)(image)
        return Resize(spatial_size=tuple(image.shape[1:]), mode="area")(cropped)

    def _mask(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        radius = int(round(self.dilation * sum(image.shape[1:]) / 2))
        return image * dilate(mask, radius).to(image.device, image.dtype)


def _file_name(image, key: Hashable) -> str:
    meta = getattr(image, "meta", {}) or {}
    return str(meta.get("filename_or_obj", f"<{key}>"))
