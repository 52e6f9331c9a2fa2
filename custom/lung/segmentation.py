"""Lung segmentation of chest radiographs: paired datalist, the UNet, inference with postprocessing, overlay plots.

Images are (1, W, H) tensors in [0, 1] in MONAI's PIL axis convention (see `custom.data.transforms`); masks are
(1, W, H) bool tensors, True = lung. The network sees the image resized to its own grid (`LungUNet.input_size`,
aspect ratio not kept): `SEG_SIZE` (128 x 128 px, chosen so that training fits in ~15 min on 2 CPU cores) for the
shipped `models/lung_unet.pt`, 64 x 64 px for the faster `models/lung_unet_64.pt`; its probabilities are resized
back.
"""

from __future__ import annotations

import functools
import os
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.networks.nets import UNet
from monai.utils import convert_to_tensor
from scipy import ndimage

from custom.data.datalists import _image_files

SEG_SIZE = (128, 128)
UNET_CHANNELS = (16, 32, 64, 128, 256)
UNET_STRIDES = (2, 2, 2, 2)

# Suffixes that mark sub-panels / time points of one published figure (same patient): stripped to form split groups.
_PANEL_SUFFIX = re.compile(
    r"(-main\.pdf-.*|_HTML\.webp-.*|-day\d+|-[a-f]\d?|-(left|right|PA|l)|_f\d+[a-z]?|-g\d+|\.fig\d+[a-z]?|_lrg|-fig-\d+-m)$",
    re.IGNORECASE,
)


class LungUNet(UNet):
    """2D MONAI UNet, (B, 1, W, H) image in [0, 1] -> (B, 2, W, H) logits (background, lung), that keeps the (W, H) grid
    it is trained on in its state dict (buffer ``grid``), so that a checkpoint says which input size it expects."""

    def __init__(self, input_size: Sequence[int] = SEG_SIZE, **unet_args) -> None:
        super().__init__(spatial_dims=2, in_channels=1, out_channels=2, **unet_args)
        self.register_buffer("grid", torch.tensor([int(s) for s in input_size], dtype=torch.int64))

    @property
    def input_size(self) -> tuple[int, int]:
        """The (W, H) grid in px that the network runs at."""
        return tuple(int(s) for s in self.grid)


def build_lung_unet(input_size: Sequence[int] = SEG_SIZE, channels: Sequence[int] = UNET_CHANNELS,
                    strides: Sequence[int] = UNET_STRIDES, num_res_units: int = 1, dropout: float = 0.1) -> LungUNet:
    """The lung UNet for a (W, H) = ``input_size`` grid: (B, 1, W, H) image in [0, 1] -> (B, 2, W, H) logits."""
    return LungUNet(input_size, channels=tuple(channels), strides=tuple(strides), num_res_units=num_res_units,
                    dropout=dropout)


def figure_group(stem: str) -> str:
    """Group key of a lung-mask image: sub-panels a/b/c, days and sides of one figure share a key."""
    key = re.sub(r"^auntminnie-[a-z]-", "auntminnie-", stem)
    while (shorter := _PANEL_SUFFIX.sub("", key)) != key:
        key = shorter
    return key


def lung_mask_pairs(root: str | os.PathLike) -> list[dict]:
    """All ``{"image", "label", "group"}`` pairs under ``root/<source>/{images,masks}/`` (mask = same stem, .png).

    Raises a `FileNotFoundError` naming the folder when it holds no pair, and the image when its mask is missing.
    """
    root = Path(root)
    sources = sorted(p for p in root.glob("*/images") if p.is_dir())
    if not sources:
        raise FileNotFoundError(f"{root}: no <source>/images folder with lung-mask pairs")
    pairs = []
    for images in sources:
        for image in _image_files(images):
            mask = images.parent / "masks" / f"{image.stem}.png"
            if not mask.is_file():
                raise FileNotFoundError(f"{image}: mask not found (expected {mask})")
            pairs.append({"image": str(image.resolve()), "label": str(mask.resolve()),
                          "group": f"{images.parent.name}/{figure_group(image.stem)}"})
    return pairs


def split_lung_pairs(root: str | os.PathLike, num_holdout: int = 15, seed: int = 0) -> dict[str, list[dict]]:
    """Seeded split into ``{"training", "validation"}`` (validation = the held-out pairs, never trained on).

    Whole figure groups go to one side, so sub-panels of one patient never straddle the split; the held-out part
    has at least ``num_holdout`` pairs.
    """
    pairs = lung_mask_pairs(root)
    groups = defaultdict(list)
    for pair in pairs:
        groups[pair["group"]].append(pair)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    holdout = []
    while len(holdout) < num_holdout and keys:
        holdout += groups[keys.pop()]
    if not keys:
        raise ValueError(f"{root}: only {len(pairs)} pairs, cannot hold out {num_holdout} and still train")
    return {"training": [p for k in sorted(keys) for p in groups[k]], "validation": holdout}


@functools.lru_cache(maxsize=4)
def load_lung_unet(path: str, device: str = "cpu") -> LungUNet:
    """A lung UNet in eval mode, loaded once per (path, device). Accepts a state dict or ``{"model": ...}`` (as
    training saves it); a state dict without ``grid`` (checkpoints before 0.11.0) is a `SEG_SIZE` network."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: lung UNet weights not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    net = build_lung_unet(input_size=state["grid"].tolist() if "grid" in state else SEG_SIZE)
    net.load_state_dict({"grid": net.grid, **state})
    return net.to(torch.device(device)).eval()


@functools.lru_cache(maxsize=4)
def load_lung_unet_openvino(path: str, precision: str = "f32") -> torch.nn.Module:
    """`load_lung_unet` compiled by OpenVINO for the CPU (``precision`` "f32" or "bf16", see
    `custom.models.export.OpenVinoModule`), once per (path, precision): (B, 1, W, H) -> (B, 2, W, H) logits on the
    UNet's grid, which it keeps as ``input_size``."""
    from custom.models.export import OpenVinoModule, openvino_model

    unet = load_lung_unet(path, "cpu")
    module = OpenVinoModule(openvino_model(unet, torch.zeros(1, 1, *unet.input_size)), precision)
    module.input_size = unet.input_size
    return module


_FULL_CONNECTIVITY = ndimage.generate_binary_structure(2, 2)  # 8-neighbourhood, as MONAI's default


def postprocess_mask(mask: torch.Tensor) -> torch.Tensor:
    """(1, W, H) binary mask -> (1, W, H) bool: the 2 largest 8-connected components, holes filled.

    Same result as MONAI's ``KeepLargestConnectedComponent(applied_labels=[1], num_components=2)`` then
    ``FillHoles(applied_labels=[1])`` (a hole: an 8-connected background region that does not touch the border), at
    about a sixth of their cost.
    """
    lung = np.asarray(mask[0].cpu(), dtype=bool)
    labels, count = ndimage.label(lung, structure=_FULL_CONNECTIVITY)
    if count > 2:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        keep = np.zeros(sizes.shape[0], dtype=bool)
        keep[np.argsort(sizes)[::-1][:2]] = True  # the ranking MONAI uses, ties included
        lung = keep[labels]
    background, _ = ndimage.label(~lung, structure=_FULL_CONNECTIVITY)
    open_regions = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    hole = np.ones(background.max() + 1, dtype=bool)
    hole[open_regions] = False
    return torch.from_numpy(lung | hole[background])[None]


@torch.inference_mode()
def lung_probability(images: torch.Tensor, net: torch.nn.Module) -> torch.Tensor:
    """(B, 1, W, H) images in [0, 1] -> (B, 1, W, H) P(lung) at the input resolution: the images area-resized to the
    network's grid (``net.input_size``), one forward for the batch, the softmax lung channel resized back (bilinear).
    `net`: a `LungUNet` or its OpenVINO module (which runs on the CPU)."""
    device = next(net.parameters(), torch.empty(0)).device
    x = convert_to_tensor(images, dtype=torch.float32, device=device, track_meta=False)
    x = F.interpolate(x, size=net.input_size, mode="area")
    lung = torch.softmax(net(x), dim=1)[:, 1:]
    return F.interpolate(lung, size=tuple(images.shape[2:]), mode="bilinear", align_corners=False)


class LungInferer(Inferer):
    """MONAI inferer of `lung_probability` -> (B, 2, W, H) (background, lung) probabilities on the data's grid, so that
    an evaluator scores a UNet of any grid on one grid (argmax: lung where P(lung) > 0.5, as `segment_lungs_batch`)."""

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        lung = lung_probability(inputs, network)
        return torch.cat([1.0 - lung, lung], dim=1)  # made outside inference mode: postprocessing may work in place


def segment_lungs_batch(images: torch.Tensor, net: torch.nn.Module) -> torch.Tensor:
    """(B, 1, W, H) images in [0, 1] -> (B, 1, W, H) bool lung masks at the input resolution (postprocessed), one
    UNet forward for the whole batch (`lung_probability`)."""
    return torch.stack([postprocess_mask(p) for p in (lung_probability(images, net) > 0.5).cpu()])


def segment_lungs(image: torch.Tensor, net: torch.nn.Module) -> torch.Tensor:
    """(1, W, H) image in [0, 1] -> (1, W, H) bool lung mask at the input resolution (postprocessed)."""
    return segment_lungs_batch(image[None], net)[0]


def mask_to_png_array(mask: torch.Tensor) -> np.ndarray:
    """(1, W, H) bool mask -> (H, W) uint8 array, 255 = lung, ready for `PIL.Image.fromarray`."""
    return (np.asarray(mask[0].cpu(), dtype=np.uint8) * 255).T.copy()
