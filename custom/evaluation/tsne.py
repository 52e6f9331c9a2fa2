"""t-SNE maps of image embeddings, coloured by class and by domain: pooled MedSAM embeddings from the embedding
cache, or a trained network's penultimate features (the input of its last linear layer); and how separable the
domains are in that feature space (a cross-validated domain classifier's ROC-AUC)."""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from torch import nn  # noqa: E402

from custom.evaluation.plots import save_figure  # noqa: E402
from custom.medsam.embedding_cache import EmbeddingCache  # noqa: E402

logger = logging.getLogger(__name__)


def cached_embeddings(items: Sequence[Mapping], cache: EmbeddingCache, batch_size: int = 8,
                      device: str | torch.device = "cpu") -> tuple[np.ndarray, list[Mapping]]:
    """(N, 256) float32 average-pooled MedSAM embeddings of the items' images (computed and cached when missing),
    and the N items kept (unreadable images are logged and dropped)."""
    maps = cache.get_or_compute([item["image"] for item in items], batch_size, device, progress=False)
    kept = [item for item in items if os.fspath(item["image"]) not in cache.failed]
    return maps.float().mean((2, 3)).numpy(), kept


def last_linear(model: nn.Module) -> nn.Linear:
    """The network's last `nn.Linear` (ResNet fc, VGG's last classifier layer, SmallCNN / DenseNet / MLP head out)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: no penultimate features to take")
    return linears[-1]


def penultimate_features(model: nn.Module, items: Sequence[Mapping], load: Callable[[Mapping], Mapping],
                         batch_size: int = 16, device: str | torch.device = "cpu") -> tuple[np.ndarray, list[Mapping]]:
    """(N, F) float32 inputs of the model's last linear layer (e.g. ResNet18: 512) for the items, each loaded with
    `load` (item -> dict with a preprocessed (C, W, H) "image"), and the N items kept (unreadable ones are logged and
    dropped)."""
    captured: list[torch.Tensor] = []
    hook = last_linear(model).register_forward_pre_hook(lambda _, args: captured.append(args[0].detach().float().cpu()))
    model = model.to(device).eval()
    kept, batch = [], []
    try:
        with torch.no_grad():
            for n, item in enumerate(items):
                try:
                    batch.append(torch.as_tensor(load(item)["image"]))
                    kept.append(item)
                except Exception as err:  # the loaders name the file and the cause; skip that image only
                    logger.warning("t-SNE: skipped %s: %s", item.get("image"), err)
                if batch and (len(batch) == batch_size or n == len(items) - 1):
                    model(torch.stack(batch).to(device))
                    batch = []
    finally:
        hook.remove()
    features = torch.cat(captured).flatten(1).numpy() if captured else np.zeros((0, 0), np.float32)
    return features, kept


def domain_separability(features: np.ndarray, domains: Sequence[str], folds: int = 5, seed: int = 0) -> float:
    """ROC-AUC of a linear domain classifier (standardised features, logistic regression) on (N, F) features of two
    domains, each image scored by the model of the `folds`-fold stratified cross-validation that did not see it:
    0.5 = the domains are indistinguishable in this feature space, 1.0 = linearly separable."""
    from sklearn.metrics import roc_auc_score

    names = sorted(set(domains))
    if len(names) != 2:
        raise ValueError(f"domain separability needs exactly two domains, got {names}")
    target = (np.asarray(domains) == names[1]).astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, np.asarray(features, dtype=np.float64), target, cv=splits,
                               method="predict_proba")[:, 1]
    return float(roc_auc_score(target, scores))


def tsne_2d(features: np.ndarray, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """(N, F) -> (N, 2) t-SNE coordinates (scikit-learn, PCA init). The perplexity is capped at (N - 1) / 3 so that
    small sets (tens of images) work."""
    n = len(features)
    if n < 5:
        raise ValueError(f"t-SNE needs at least 5 embeddings, got {n}")
    perplexity = float(min(perplexity, max(2.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        np.asarray(features, dtype=np.float32))


def plot_tsne(coords: np.ndarray, classes: Sequence[str], domains: Sequence[str], path: str | os.PathLike,
              title: str = "t-SNE") -> None:
    """PNG with two panels of the same (N, 2) points: coloured by class (left) and by domain (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, labels, name in ((axes[0], classes, "class"), (axes[1], domains, "domain")):
        labels = np.asarray(labels)
        for value in sorted(set(labels)):
            chosen = labels == value
            ax.scatter(coords[chosen, 0], coords[chosen, 1], s=12, alpha=0.75, label=f"{value} ({chosen.sum()})")
        ax.set_title(textwrap.fill(f"{title}: by {name}", width=60), fontsize=10)  # long titles wrap, never overlap
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=8, markerscale=1.5)
    save_figure(fig, path)


def item_domain(item: Mapping) -> str:
    """A datalist item's ``domain``, "unknown" when it has none."""
    return str(item.get("domain", "unknown"))


def tsne_plot(features: np.ndarray, items: Sequence[Mapping], path: str | os.PathLike, perplexity: float = 30.0,
              seed: int = 0, title: str = "t-SNE") -> np.ndarray:
    """t-SNE of (N, F) features of N datalist items, plotted by ``class_name`` and ``domain`` (missing: "unknown");
    returns the (N, 2) coordinates."""
    if len(features) != len(items):
        raise ValueError(f"{len(features)} feature rows for {len(items)} items")
    coords = tsne_2d(features, perplexity, seed)
    plot_tsne(coords, [str(it.get("class_name", it.get("label", "unknown"))) for it in items],
              [item_domain(it) for it in items], path, title)
    return coords
