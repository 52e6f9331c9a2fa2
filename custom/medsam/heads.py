"""Classifiers on MedSAM image embeddings: pooling of a (B, 256, h, w) feature map to a vector, an MLP head to
logits, the end-to-end image classifier (encoder + pooling + head) and its twin that trains on cached feature maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from custom.medsam.encoders import EMBED_DIM

POOLED_MAP_SIZE = 16  # the cache stores (256, 16, 16) maps; MedSAMClassifier pools its (256, 64, 64) map to the same


class AvgPool(nn.Module):
    """Global average pooling: (B, C, h, w) -> (B, C)."""

    def __init__(self, channels: int = EMBED_DIM):
        super().__init__()
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


class AvgMaxPool(nn.Module):
    """Global average and max pooling, concatenated: (B, C, h, w) -> (B, 2C)."""

    def __init__(self, channels: int = EMBED_DIM):
        super().__init__()
        self.out_features = 2 * channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], dim=1)


class AttentionPool(nn.Module):
    """Learned attention pooling: a 1x1 convolution scores each of the h*w positions, a softmax over positions turns
    the scores into weights, and the output is the weighted sum of the feature vectors: (B, C, h, w) -> (B, C)."""

    def __init__(self, channels: int = EMBED_DIM):
        super().__init__()
        self.out_features = channels
        self.score = nn.Conv2d(channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.score(x).flatten(1), dim=1)  # (B, h*w), sums to 1
        return torch.einsum("bcn,bn->bc", x.flatten(2), weights)


class GridPool(nn.Module):
    """Average pooling to a coarse grid, flattened: (B, C, h, w) -> (B, C * grid * grid); keeps where a finding is
    (left / right lung, upper / lower zone) that global pooling discards."""

    def __init__(self, channels: int = EMBED_DIM, grid: int = 4):
        super().__init__()
        self.grid = grid
        self.out_features = channels * grid * grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, self.grid).flatten(1)


class ConvAttentionPool(nn.Module):
    """A small spatial head: two 3x3 convolutions (C -> width -> width, BatchNorm + ReLU each) over the map, then
    `AttentionPool`: (B, C, h, w) -> (B, width). Learns local patterns of the frozen map (e.g. on the cache's 16x16
    grid) that global pooling cannot; 0.44 M parameters at C=256, width=128."""

    def __init__(self, channels: int = EMBED_DIM, width: int = 128):
        super().__init__()
        self.out_features = width
        self.conv = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.pool = AttentionPool(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


POOLINGS = {"avg": AvgPool, "avgmax": AvgMaxPool, "attention": AttentionPool, "grid": GridPool,
            "conv": ConvAttentionPool}


def build_pooling(name: str, channels: int = EMBED_DIM) -> nn.Module:
    """``"avg"`` (B, C), ``"avgmax"`` (B, 2C), ``"attention"`` (B, C), ``"grid"`` (B, 16C, a 4x4 grid) or ``"conv"``
    (B, 128: convolutions + attention); the module's ``out_features`` says which."""
    if name not in POOLINGS:
        raise ValueError(f"unknown pooling {name!r}; choose one of {sorted(POOLINGS)}")
    return POOLINGS[name](channels)


class MLPHead(nn.Sequential):
    """MLP (B, in_features) -> (B, num_classes) logits: Linear + ReLU (+ Dropout when dropout > 0) per hidden width,
    then a Linear. ``num_classes=1``: one logit for sigmoid / BCEWithLogitsLoss; ``>= 2``: logits for softmax / CE.
    The default is the seed's 256 -> 128 -> 64 -> 1."""

    def __init__(self, in_features: int = EMBED_DIM, hidden: Sequence[int] = (128, 64), num_classes: int = 1,
                 dropout: float = 0.0):
        layers, previous = [], in_features
        for width in hidden:
            layers += [nn.Linear(previous, width), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            previous = width
        layers.append(nn.Linear(previous, num_classes))
        super().__init__(*layers)


class EmbeddingClassifier(nn.Module):
    """Pooling + head on feature maps, e.g. the cache's (B, 256, 16, 16) float16 maps -> (B, num_classes) float32 logits.

    Args:
        pooling: a name for `build_pooling` or a pooling module with ``out_features``.
        head: the head on the pooled vector; None = ``MLPHead(pooling.out_features, num_classes=num_classes)``.
        num_classes: logits of the default head (2 fits the bundle's CrossEntropyLoss + softmax).
        channels: C of the maps (256; `custom.medsam.encoders.feature_channels` with TinyViT stage features).
    """

    def __init__(self, pooling: str | nn.Module = "avg", head: nn.Module | None = None, num_classes: int = 2,
                 channels: int = EMBED_DIM):
        super().__init__()
        self.pooling = build_pooling(pooling, channels) if isinstance(pooling, str) else pooling
        self.head = head if head is not None else MLPHead(self.pooling.out_features, num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooling(x.float()))


class MedSAMClassifier(nn.Module):
    """Image classifier: MedSAM encoder -> (B, 256, 64, 64) -> adaptive average pool to map_size -> pooling -> head.

    (B, 3, S, S) images in [0, 1], S = ``encoder.input_size`` -> (B, num_classes) logits.

    Args:
        encoder: e.g. ``custom.medsam.encoders.build_encoder("lite")``.
        pooling, head, num_classes: as in `EmbeddingClassifier` (``self.classifier``, so a head trained on the
            embedding cache loads with ``model.classifier.load_state_dict(...)``).
        freeze_encoder: True keeps the encoder in eval mode (BatchNorm statistics fixed, also under ``.train()``),
            with ``requires_grad=False`` and no autograd graph; settable later (``model.freeze_encoder = False``).
        map_size: side of the grid the 64x64 map is average-pooled to before ``pooling`` (16 = what the cache stores,
            so cache-trained heads see the same input; average pooling is unaffected). None keeps 64x64.

    The pooling takes the encoder's ``out_channels`` (256, more with TinyViT stage features).
    """

    def __init__(self, encoder: nn.Module, pooling: str | nn.Module = "avg", head: nn.Module | None = None,
                 num_classes: int = 2, freeze_encoder: bool = True, map_size: int | None = POOLED_MAP_SIZE):
        super().__init__()
        self.encoder = encoder
        self.classifier = EmbeddingClassifier(pooling, head, num_classes, getattr(encoder, "out_channels", EMBED_DIM))
        self.map_size = map_size
        self.freeze_encoder = freeze_encoder

    @property
    def freeze_encoder(self) -> bool:
        return self._freeze_encoder

    @freeze_encoder.setter
    def freeze_encoder(self, frozen: bool) -> None:
        self._freeze_encoder = bool(frozen)
        for p in self.encoder.parameters():
            p.requires_grad = not frozen
        self.encoder.train(self.training and not frozen)

    def train(self, mode: bool = True) -> MedSAMClassifier:
        super().train(mode)
        self.encoder.train(mode and not self._freeze_encoder)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._freeze_encoder):
            features = self.encoder(x)
            if self.map_size is not None:
                features = F.adaptive_avg_pool2d(features, self.map_size)
        return self.classifier(features)


def finetune_param_groups(model: MedSAMClassifier, encoder_lr: float, head_lr: float) -> list[dict]:
    """Optimizer parameter groups for fine-tuning: the encoder at a lower learning rate than the pooling + head."""
    return [
        {"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": encoder_lr},
        {"params": [p for p in model.classifier.parameters() if p.requires_grad], "lr": head_lr},
    ]
