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


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL (Sun & Saenko, ECCV-W 2016): ``||C_s - C_t||_F^2 / (4 d^2)`` between the (d, d) feature
    covariances of (B_s, d) source and (B_t, d) target features (each B >= 2) -> scalar."""
    d = source.shape[1]
    return (torch.cov(source.float().T) - torch.cov(target.float().T)).pow(2).sum() / (4 * d * d)


def mmd_loss(source: torch.Tensor, target: torch.Tensor, scales=(0.25, 0.5, 1.0, 2.0, 4.0)) -> torch.Tensor:
    """Squared maximum mean discrepancy (biased estimate, Gretton et al. JMLR 2012; multi-kernel as in DAN, Long et
    al. ICML 2015) between (B_s, d) source and (B_t, d) target features -> scalar: the sum of Gaussian kernels
    ``exp(-||x - y||^2 / (s * m))`` over `scales` s, m = the mean pairwise squared distance of the pooled batch
    (detached: the bandwidth follows the features without being trained)."""
    x = torch.cat([source, target]).float()
    sq = torch.cdist(x, x).pow(2)
    base = sq.detach().sum() / (len(x) * (len(x) - 1))
    kernel = sum(torch.exp(-sq / (s * base)) for s in scales)
    n = len(source)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()
