"""Saliency maps of the bundle's classifiers with MONAI's `GradCAM` / `CAM`, and their overlay figures.

Maps are (B, 1, W, H) in [0, 1] (per image min-max scaled, 1 = most salient), in the input's spatial axes (MONAI's
PIL convention, like the images). The feature layer is picked per architecture (`default_target_layer`) and can be
overridden by name (``net.named_modules()``). `custom.medsam.heads.MedSAMClassifier` gets Grad-CAM on the encoder's
(B, 256, 64, 64) embedding: the frozen encoder runs without autograd and only the pooling + head are differentiated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from monai.networks.nets import DenseNet  # noqa: E402
from monai.utils import convert_to_tensor  # noqa: E402
from monai.visualize import CAM, GradCAM  # noqa: E402
from torch import nn  # noqa: E402

from custom.evaluation.plots import as_display, save_figure  # noqa: E402
from custom.medsam.encoders import minmax01  # noqa: E402
from custom.medsam.heads import MedSAMClassifier  # noqa: E402
from custom.models.networks import SmallCNN, TorchvisionClassifier  # noqa: E402

METHODS = ("gradcam", "cam")


class MedSAMFeatureMap(nn.Module):
    """`MedSAMClassifier` with the encoder's (B, 256, 64, 64) embedding exposed as the module ``features``.

    The encoder runs under ``torch.no_grad``; its output becomes a leaf that requires grad, so Grad-CAM's backward
    pass only goes through the pooling and the head (seconds on CPU for LiteMedSAM, no encoder gradients).
    """

    def __init__(self, model: MedSAMClassifier):
        super().__init__()
        self.model = model
        self.features = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, num_classes) logits."""
        with torch.no_grad():
            embedding = self.model.encoder(x)
        features = self.features(embedding.detach().float().requires_grad_(True))
        if self.model.map_size is not None:
            features = F.adaptive_avg_pool2d(features, self.model.map_size)
        return self.model.classifier(features)


def saliency_network(model: nn.Module) -> nn.Module:
    """The module the CAM hooks go on: `MedSAMFeatureMap` for a MedSAM classifier, else `model` itself."""
    return MedSAMFeatureMap(model) if isinstance(model, MedSAMClassifier) else model


def default_target_layer(net: nn.Module) -> str:
    """Name of the last convolutional feature map of `net` (as returned by `saliency_network`)."""
    if isinstance(net, MedSAMFeatureMap):
        return "features"
    if isinstance(net, TorchvisionClassifier):
        return "net.layer4" if net.arch.startswith("resnet") else "net.features"
    if isinstance(net, SmallCNN):
        return "features"
    if isinstance(net, DenseNet):
        return "class_layers.relu"
    raise ValueError(f"no default saliency target layer for {type(net).__name__}; pass target_layers= one of "
                     f"its module names, e.g. {[n for n, _ in net.named_modules()][-5:]}")


def default_fc_layer(net: nn.Module) -> str:
    """Name of the linear layer after global pooling, for CAM (only nets whose head is pool + one linear layer)."""
    if isinstance(net, TorchvisionClassifier) and net.arch.startswith("resnet"):
        return "net.fc"
    if isinstance(net, SmallCNN):
        return "head.3"
    if isinstance(net, DenseNet):
        return "class_layers.out"
    raise ValueError(f"CAM needs a global-pool + linear head; {type(net).__name__} has none: use method='gradcam' "
                     "(or pass fc_layers=)")


class Saliency:
    """Saliency of a classifier: ``Saliency(model)(images, class_idx)`` -> (B, 1, W, H) maps in [0, 1].

    Args:
        model: a network from `custom.models.networks`, MONAI DenseNet121 or `custom.medsam.heads.MedSAMClassifier`; the hooks
            stay registered on it (they keep a reference to the latest feature map, nothing else).
        method: "gradcam" (any of them) or "cam" (ResNet, SmallCNN, DenseNet: pool + linear head).
        target_layers: module name of the feature map; None = `default_target_layer`.
        fc_layers: CAM's linear layer name; None = `default_fc_layer`.

    Works inside an evaluator's ``no_grad`` / ``inference_mode``: gradients are switched on locally.
    """

    def __init__(self, model: nn.Module, method: str = "gradcam", target_layers: str | None = None,
                 fc_layers: str | None = None):
        if method not in METHODS:
            raise ValueError(f"unknown saliency method {method!r}; choose one of {METHODS}")
        net = saliency_network(model)
        self.method = method
        self.target_layers = target_layers or default_target_layer(net)
        if self.target_layers not in dict(net.named_modules()):
            raise ValueError(f"target layer {self.target_layers!r} not found in {type(net).__name__}")
        if method == "cam":
            self.fc_layers = fc_layers or default_fc_layer(net)
            self.cam = CAM(net, self.target_layers, fc_layers=self.fc_layers, postprocessing=minmax01)
        else:
            self.cam = GradCAM(net, self.target_layers, postprocessing=minmax01)

    def __call__(self, images: torch.Tensor, class_idx: int | Sequence[int]) -> torch.Tensor:
        """(B, C, W, H) network inputs, the class to explain (one for all, or one per image) -> (B, 1, W, H)."""
        indices = [int(class_idx)] * len(images) if isinstance(class_idx, int) else [int(c) for c in class_idx]
        if len(indices) != len(images):
            raise ValueError(f"{len(indices)} class indices for {len(images)} images")
        with torch.inference_mode(False), torch.enable_grad():
            maps = []
            for image, index in zip(images, indices):  # one at a time: MONAI's GradCAM takes one class per call
                x = convert_to_tensor(image, dtype=torch.float32, track_meta=False).detach().clone()[None]
                x.requires_grad_()  # a leaf outside inference mode, so hooks fire even with frozen layers
                maps.append(self.cam(x, class_idx=index if self.method == "gradcam" else [index]).detach())
        return torch.cat(maps).clamp(0, 1)


def _draw(ax, image, saliency, title: str, alpha: float = 0.45) -> None:
    ax.imshow(as_display(image[:1]), cmap="gray")
    ax.imshow(as_display(saliency), cmap="jet", alpha=alpha, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def saliency_title(predicted: str, true: str | None, probability: float) -> str:
    """"pred PNEUMONIA (p=0.93) / true NORMAL": the predicted class, its probability and the true class."""
    return f"pred {predicted} (p={probability:.2f})" + (f"\ntrue {true}" if true is not None else "")


def plot_saliency_overlay(image, saliency, title: str, path: str | os.PathLike) -> None:
    """PNG of the grey image (C, W, H; channel 0 shown) under the jet heat map (1, W, H) in [0, 1], titled."""
    fig, ax = plt.subplots(figsize=(3.2, 3.5))
    _draw(ax, image, saliency, title)
    save_figure(fig, path)


def plot_saliency_gallery(rows: dict[str, Sequence[tuple]], path: str | os.PathLike, ncols: int = 4) -> None:
    """Gallery PNG: one row per {row name: [(image, saliency, title), ...]} (empty rows say so)."""
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.6 * ncols, 2.9 * len(rows)), squeeze=False)
    for (name, tiles), row in zip(rows.items(), axes):
        for ax in row:
            ax.axis("off")
        for ax, (image, saliency, title) in zip(row, tiles):
            _draw(ax, image, saliency, title)
        row[0].text(-0.08, 0.5, f"{name} ({len(tiles)})" if tiles else f"{name}: none", transform=row[0].transAxes,
                    rotation=90, ha="right", va="center", fontsize=11, fontweight="bold")
    save_figure(fig, path)


def as_numpy(x) -> np.ndarray:
    """Tensor or array -> float32 numpy on the CPU (for figures kept after the batch is gone)."""
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float32)
