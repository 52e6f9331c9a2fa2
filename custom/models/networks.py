"""CNN classifiers for chest radiographs. Every network maps (B, C, H, W) images in [0, 1] to (B, num_classes) logits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

logger = logging.getLogger(__name__)

TORCHVISION_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V2,
    "vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SmallCNN(nn.Module):
    """A CNN trained from scratch: 3 blocks of (conv3x3, BN, ReLU, conv3x3, BN, ReLU, maxpool 2), global average
    pooling, dropout and a linear layer. (B, in_channels, H, W) -> (B, num_classes)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, widths=(32, 64, 128), dropout: float = 0.3):
        super().__init__()
        blocks, previous = [], in_channels
        for width in widths:
            blocks += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            previous = width
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(previous, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TorchvisionClassifier(nn.Module):
    """ResNet18 / ResNet50 / VGG16 for radiographs, optionally from ImageNet weights (transfer learning).

    Args:
        arch: "resnet18", "resnet50" or "vgg16".
        in_channels: 1 (grey: the first convolution's ImageNet filters are summed over RGB) or 3.
        num_classes: output logits.
        pretrained: None (random init), "imagenet" (torchvision download into the torch hub cache, needs internet
            the first time) or a path to a saved torchvision state dict of the same architecture.
        trainable_layers: train only the last N parameterised units and freeze the rest (None: train all).
            Units, in order: ResNet = stem (conv1+bn1), layer1..layer4, fc; VGG16 = its 13 convolutions and 3
            linear layers; N=1 trains the new classification layer alone.
        normalize: apply ImageNet mean/std inside the network (inputs stay [0, 1] for every model).
    """

    def __init__(self, arch: str = "resnet18", in_channels: int = 1, num_classes: int = 2, pretrained: str | None = None,
                 trainable_layers: int | None = None, normalize: bool | None = None):
        super().__init__()
        if arch not in TORCHVISION_WEIGHTS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(TORCHVISION_WEIGHTS)}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        net = getattr(torchvision.models, arch)(weights=None)
        if pretrained:
            net.load_state_dict(load_torchvision_weights(arch, pretrained))
        if in_channels == 1:
            _to_single_channel_input(net, arch)
        if arch.startswith("resnet"):
            net.fc = nn.Linear(net.fc.in_features, num_classes)
        else:
            net.classifier[-1] = nn.Linear(net.classifier[-1].in_features, num_classes)
        self.net = net
        self.arch = arch
        normalize = bool(pretrained) if normalize is None else normalize
        mean = torch.tensor(IMAGENET_MEAN).mean(0, keepdim=True) if in_channels == 1 else torch.tensor(IMAGENET_MEAN)
        std = torch.tensor(IMAGENET_STD).mean(0, keepdim=True) if in_channels == 1 else torch.tensor(IMAGENET_STD)
        self.register_buffer("mean", mean.view(1, -1, 1, 1) if normalize else torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1) if normalize else torch.ones(1, in_channels, 1, 1))
        if trainable_layers is not None:
            freeze_all_but_last(self.units(), trainable_layers)

    def units(self) -> list[nn.Module]:
        """The parameterised units that `trainable_layers` counts, first to last."""
        if self.arch.startswith("resnet"):
            n = self.net
            return [nn.ModuleList([n.conv1, n.bn1]), n.layer1, n.layer2, n.layer3, n.layer4, n.fc]
        layers = list(self.net.features) + list(self.net.classifier)
        return [m for m in layers if isinstance(m, (nn.Conv2d, nn.Linear))]

    __jit_unused_properties__ = ["label_head", "feature_dim"]  # training-time accessors, not part of the export

    @property
    def label_head(self) -> nn.Linear:
        """The final linear layer: (B, feature_dim) -> (B, num_classes) logits."""
        return self.net.fc if self.arch.startswith("resnet") else self.net.classifier[-1]

    @property
    def feature_dim(self) -> int:
        return self.label_head.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, feature_dim) penultimate features (ResNet: pooled layer4 output;
        VGG16: the second classifier block's output), the input of `label_head`."""
        x = (x - self.mean) / self.std
        n = self.net
        if self.arch.startswith("resnet"):
            x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
            x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
            return torch.flatten(n.avgpool(x), 1)
        return n.classifier[:-1](torch.flatten(n.avgpool(n.features(x)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_classes) logits; equal to ``label_head(forward_features(x))`` (tested), written
        through torchvision's own forward so that TorchScript (``ckpt_export``) compiles it."""
        return self.net((x - self.mean) / self.std)


class ProbabilityEnsemble(nn.Module):
    """Seed ensemble: `size` networks built by `member` (a no-argument factory, e.g. a config item with
    ``"_mode_": "callable"``), whose softmax probabilities are averaged. (B, C, H, W) -> (B, num_classes) log of the
    mean probability, so the bundle's softmax postprocessing returns the mean probability itself. Weights:
    `custom.evaluation.operating_point.assemble_ensemble`."""

    def __init__(self, member: Callable[[], nn.Module], size: int = 3):
        super().__init__()
        if size < 2:
            raise ValueError(f"an ensemble needs two or more members, got size={size}")
        self.members = nn.ModuleList(member() for _ in range(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).softmax(dim=1) for m in self.members]).mean(dim=0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def load_torchvision_weights(arch: str, pretrained: str) -> dict[str, torch.Tensor]:
    """ImageNet weights for `arch`: from torchvision's hub ("imagenet") or a local state-dict file."""
    if pretrained == "imagenet":
        return TORCHVISION_WEIGHTS[arch].get_state_dict(progress=False)
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: pretrained weights not found; pass a torchvision {arch} state dict "
            f"(e.g. {TORCHVISION_WEIGHTS[arch].url}) or 'imagenet' to download it"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


def _to_single_channel_input(net: nn.Module, arch: str) -> None:
    """Replace the first convolution by a 1-channel one whose filters are the sum of the RGB filters."""
    parent, name = (net, "conv1") if arch.startswith("resnet") else (net.features, "0")
    conv: nn.Conv2d = getattr(parent, name)
    grey = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        grey.weight.copy_(conv.weight.sum(1, keepdim=True))
        if conv.bias is not None:
            grey.bias.copy_(conv.bias)
    setattr(parent, name, grey)


def freeze_all_but_last(units: list[nn.Module], trainable: int) -> None:
    """Set requires_grad=False on every unit but the last `trainable` ones (BatchNorm statistics keep updating)."""
    if not 0 <= trainable <= len(units):
        raise ValueError(f"trainable_layers must be in [0, {len(units)}], got {trainable}")
    for i, unit in enumerate(units):
        for p in unit.parameters():
            p.requires_grad = i >= len(units) - trainable
    frozen = sum(p.numel() for u in units for p in u.parameters() if not p.requires_grad)
    logger.info("froze %d of %d units (%d parameters)", len(units) - trainable, len(units), frozen)
