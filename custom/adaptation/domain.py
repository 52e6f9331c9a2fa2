"""Unsupervised domain adaptation (DANN, Ganin et al., JMLR 2016): gradient reversal, its schedule, a domain
discriminator for any classifier with ``forward_features``, the MedSAM classifier with label and domain heads on
cached maps or behind a live encoder, and the target-domain datalist (unlabelled for adaptation, labelled for
evaluation only)."""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from custom.adaptation.losses import ProjectionHead
from custom.data.checks import require_readable
from custom.data.datalists import build_covid_radiography
from custom.medsam.encoders import EMBED_DIM
from custom.medsam.heads import POOLED_MAP_SIZE, MLPHead, build_pooling


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambda_ * grad, None


class GradientReversal(nn.Module):
    """Identity forward (any shape); backward multiplies the gradient by ``-lambda_`` (settable attribute)."""

    def __init__(self, lambda_: float = 1.0):
        super().__init__()
        self.lambda_ = float(lambda_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReverseGrad.apply(x, self.lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}"


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """DANN schedule ``2 / (1 + exp(-gamma * p)) - 1``: 0 at p = 0, rising to ~1 at p = 1 (p clipped to [0, 1])."""
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class DomainDiscriminator(nn.Module):
    """Gradient reversal + `MLPHead`: (B, in_features) features -> (B, 2) domain logits (source 0, target 1). The
    domain head of a classifier that has none of its own (e.g. `custom.models.networks.TorchvisionClassifier`
    under `custom.adaptation.engines.DANNTrainer`): kept apart from the network, so checkpoints of the adapted
    classifier load wherever the plain one does."""

    def __init__(self, in_features: int, hidden: int = 256):
        super().__init__()
        self.grl = GradientReversal()
        self.head = MLPHead(in_features, hidden=(hidden,), num_classes=2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.grl(features.float()))


class DANNClassifier(nn.Module):
    """Classifier on (B, 256, h, w) feature maps (the cache's float16 (B, 256, 16, 16) is fine) with a domain head.

    ``features``: trainable extractor, 1x1 conv 256 -> 256 + GELU, `custom.medsam.heads.build_pooling`, Linear to
    ``feature_dim`` + GELU: (B, 256, h, w) -> (B, feature_dim). ``label_head``: `MLPHead` -> (B, num_classes) logits.
    ``grl`` + ``domain_head``: gradient reversal, then MLP -> (B, 2) domain logits (source 0, target 1).
    ``projection``: `ProjectionHead` -> (B, projection_dim) for `custom.adaptation.losses.SupConLoss`.

    ``forward`` returns label logits only, so evaluators, inference and MONAI tools use it like any classifier.
    """

    def __init__(self, pooling: str = "avg", num_classes: int = 2, feature_dim: int = 256, projection_dim: int = 128,
                 domain_hidden: int = 64, channels: int = EMBED_DIM):
        super().__init__()
        pool = build_pooling(pooling, channels)
        self.features = nn.Sequential(nn.Conv2d(channels, channels, kernel_size=1), nn.GELU(), pool,
                                      nn.Linear(pool.out_features, feature_dim), nn.GELU())
        self.label_head = MLPHead(feature_dim, num_classes=num_classes)
        self.grl = GradientReversal()
        self.domain_head = MLPHead(feature_dim, hidden=(domain_hidden,), num_classes=2)
        self.projection = ProjectionHead(feature_dim, projection_dim)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, feature_dim) float32."""
        return self.features(x.float())

    def domain_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) -> (B, 2), through the gradient reversal layer."""
        return self.domain_head(self.grl(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, num_classes) label logits."""
        return self.label_head(self.forward_features(x))


def encoder_stages(encoder: nn.Module) -> list[nn.Module]:
    """The stages of a `custom.medsam.encoders` MedSAM encoder in forward order: TinyViT ``layers`` (4) or ViT ``blocks``
    (12), then the ``neck``."""
    net = encoder.net
    stages = getattr(net, "layers", None) or getattr(net, "blocks", None)
    if stages is None or not hasattr(net, "neck"):
        raise ValueError(f"{type(net).__name__} has no 'layers'/'blocks' + 'neck' stages")
    return [*stages, net.neck]


class MedSAMDANNClassifier(DANNClassifier):
    """`DANNClassifier` on images: a MedSAM encoder -> (B, C, 64, 64) (C = its ``out_channels``), average-pooled to
    (B, C, map_size, map_size), then the trainable adapter, label head, gradient reversal + domain head and projection.

    (B, 3, S, S) images in [0, 1] (S = ``encoder.input_size``) -> (B, num_classes) logits. For training on
    augmented images (`configs/train_dann_augment.json`), which the embedding cache cannot serve.

    Args:
        encoder: e.g. ``custom.medsam.encoders.build_encoder("lite")``.
        trainable_stages: how many of the encoder's last stages (`encoder_stages`, the neck counting as one) train
            with the adapter, under the gradient reversal; 0 = frozen encoder (eval mode, no autograd graph).
        map_size: grid the 64x64 map is average-pooled to (16 = the cache's, so weights carry over).
        other args: as `DANNClassifier`.
    """

    def __init__(self, encoder: nn.Module, pooling: str = "avg", num_classes: int = 2, feature_dim: int = 256,
                 trainable_stages: int = 0, map_size: int = POOLED_MAP_SIZE):
        super().__init__(pooling, num_classes, feature_dim, channels=getattr(encoder, "out_channels", EMBED_DIM))
        stages = encoder_stages(encoder)
        if not 0 <= trainable_stages <= len(stages):
            raise ValueError(f"trainable_stages must be in [0, {len(stages)}], got {trainable_stages}")
        self.encoder = encoder
        self.map_size = map_size
        self.trainable_stages = trainable_stages
        self._trainable = stages[len(stages) - trainable_stages:]
        encoder.requires_grad_(False)
        for stage in self._trainable:
            stage.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> MedSAMDANNClassifier:
        """Frozen encoder stages stay in eval mode (normalisation statistics fixed); trainable ones follow `mode`."""
        super().train(mode)
        self.encoder.eval()
        for stage in self._trainable:
            stage.train(mode)
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images -> (B, feature_dim) float32."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable_stages > 0):
            maps = F.adaptive_avg_pool2d(self.encoder(x), self.map_size)
        return super().forward_features(maps)


def target_datalist(dataset_dir: str | os.PathLike | None, class_map: dict[str, str], class_names: list[str],
                    test_fraction: float = 0.15, seed: int = 0) -> dict:
    """Target domain in the COVID-19 Radiography layout (`build_covid_radiography`), split by `seed`:
    ``training``: items WITHOUT ``label`` / ``class_name`` (unlabelled, for the domain loss only);
    ``test``: labelled items for evaluation, never used in training. Every image is checked readable first."""
    if dataset_dir is None:
        raise ValueError("target_dataset_dir is not set: pass --target_dataset_dir with the target-domain images "
                         "(COVID-19 Radiography layout, e.g. ../shared/data/adult_cxr)")
    datalist = build_covid_radiography(dataset_dir, class_map=dict(class_map), val_fraction=0.0,
                                       test_fraction=test_fraction, seed=seed)
    if datalist["class_names"] != list(class_names):
        raise ValueError(f"target classes {datalist['class_names']} differ from the source's {list(class_names)}")
    if not datalist["training"] or not datalist["test"]:
        raise ValueError(f"{dataset_dir}: {len(datalist['training'])} adaptation and {len(datalist['test'])} evaluation "
                         f"images with target_test_fraction={test_fraction}; both must be non-empty")
    require_readable(datalist, splits=("training", "test"), num_classes=len(class_names))
    unlabelled = [{k: v for k, v in item.items() if k not in ("label", "class_name")} for item in datalist["training"]]
    return {"training": unlabelled, "test": datalist["test"], "class_names": datalist["class_names"]}
