"""AdaBN (Li et al., "Adaptive Batch Normalization for practical domain adaptation", Pattern Recognition 2018):
a trained CNN's BatchNorm running statistics re-estimated on unlabelled images of the target domain. No weight and no
label is touched: the adapted network is the source network with the target domain's feature statistics."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from custom.data.domains import domain_items


def unlabelled_images(datalist: Mapping, split: str, domain: str | None = None) -> list[dict]:
    """The items of ``datalist[split]`` (of `domain` only, when given: `custom.data.domain_items`, whose error names
    the domains found) reduced to ``{"image": path}``: what AdaBN reads of the target domain, labels removed. Raises
    ValueError when nothing is left."""
    if domain is not None:
        return domain_items(datalist, split, domain, labelled=False)
    items = datalist.get(split) or []
    if not items:
        raise ValueError(f"AdaBN has no target images: no '{split}' items in the datalist")
    return [{"image": item["image"]} for item in items]


def batchnorm_layers(network: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def adapt_batchnorm(network: nn.Module, batches: Iterable, device: torch.device | str, image_key: str = "image") -> int:
    """Replaces every BatchNorm layer's running mean / variance by the plain average over `batches` (dicts with
    (B, C, H, W) `image_key` tensors, e.g. a DataLoader of the target images; any other key is ignored), computed
    with the rest of the network in eval mode and no gradient. Weights, biases and the network's mode are kept.
    Returns the number of images seen; ValueError if the network has no BatchNorm or `batches` is empty."""
    layers = batchnorm_layers(network)
    if not layers:
        raise ValueError(f"{type(network).__name__} has no BatchNorm layer: AdaBN has nothing to adapt")
    was_training, momenta = network.training, [bn.momentum for bn in layers]
    network.eval()
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches, not an exponential one
        bn.train()
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                if not batch:  # a batch whose items all failed (IsolatedDataLoader)
                    continue
                images = batch[image_key]
                network(torch.as_tensor(images).to(device))
                seen += len(images)
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        network.train(was_training)
    if not seen:
        raise ValueError("AdaBN saw no target image: every batch was empty")
    return seen
