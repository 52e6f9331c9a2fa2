"""Representation losses on feature projections: supervised contrastive loss (Khosla et al., NeurIPS 2020) and the
projection head it is applied to (never to class probabilities)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Sequential):
    """MLP (B, in_features) -> (B, out_features): Linear + ReLU + Linear (SimCLR / SupCon style); unnormalised,
    `SupConLoss` L2-normalises."""

    def __init__(self, in_features: int, out_features: int = 128, hidden: int | None = None):
        hidden = hidden or in_features
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features))


class SupConLoss(nn.Module):
    """Supervised contrastive loss: (B, D) projections (L2-normalised here, so input scale does not matter) and (B,)
    integer labels -> scalar.

    For each anchor i with at least one positive (another sample with its label), the loss is
    ``-mean_{p in P(i)} log(exp(z_i.z_p / T) / sum_{a != i} exp(z_i.z_a / T))``, averaged over those anchors
    ("L_out" of the paper). A batch without any positive pair gives 0 (still attached to the graph).
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, projections: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = F.normalize(projections.float(), dim=1)
        labels = labels.reshape(-1)
        self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
        logits = (z @ z.T / self.temperature).masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (B, B); -inf on the diagonal
        positives = (labels[:, None] == labels[None, :]) & ~self_mask
        counts = positives.sum(1)
        anchors = counts > 0
        if not anchors.any():
            return z.sum() * 0.0
        per_anchor = log_prob.masked_fill(~positives, 0.0).sum(1)[anchors] / counts[anchors]
        return -per_anchor.mean()
