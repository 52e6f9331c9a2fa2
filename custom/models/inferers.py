"""Test-time augmentation for classifiers: average the logits of small geometric variants of each image."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.inferers import Inferer


class AffineTTAInferer(Inferer):
    """Mean logits over the image itself, shifted by +-`shift` (fraction of the size) along each axis, and
    zoomed by each factor in `zooms`. (B, C, H, W) -> (B, num_classes). The views are cheap deterministic
    affine resamplings, so the result is reproducible."""

    def __init__(self, shift: float = 0.04, zooms: Sequence[float] = (0.92, 1.08)) -> None:
        super().__init__()
        self.views = [(0.0, 0.0, 1.0)]
        self.views += [(dx, dy, 1.0) for dx, dy in ((shift, 0), (-shift, 0), (0, shift), (0, -shift)) if shift]
        self.views += [(0.0, 0.0, float(z)) for z in zooms]

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        logits = [network(self.transform(inputs, *view), *args, **kwargs) for view in self.views]
        return torch.stack(logits).mean(0)

    @staticmethod
    def transform(images: torch.Tensor, dx: float, dy: float, zoom: float) -> torch.Tensor:
        """Shift by (dx, dy) fractions of the image size and zoom by `zoom` (>1 magnifies); zero padding."""
        if (dx, dy, zoom) == (0.0, 0.0, 1.0):
            return images
        theta = torch.tensor([[1 / zoom, 0, -2 * dx], [0, 1 / zoom, -2 * dy]], dtype=images.dtype, device=images.device)
        grid = F.affine_grid(theta.expand(images.shape[0], 2, 3), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
