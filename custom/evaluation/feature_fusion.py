"""Fusion by concatenated features: the penultimate features of two trained bundle models side by side (e.g. the
CNN's 512-d and the frozen-MedSAM head's 64-d), scored by a linear probe, against the same probe on each model's
features alone.

The probe (standardised features, L2 logistic regression with its strength picked by an inner stratified
cross-validation on ROC-AUC, `probe`) is trained on a validation part, which neither model trained on. Its validation
scores are cross-fitted: patient-grouped stratified folds, each image scored by the probe fitted on the other
folds, so no patient is scored by a probe that saw one of its images. For the test part the probe is refitted on the
whole validation part.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from custom.evaluation.tsne import penultimate_features
from custom.medsam.embedding_cache import cached_embedding_datalist
from custom.models.trained_model import load_bundle

PROBE_STRENGTHS = np.logspace(-4, 2, 7)  # inverse L2 strengths C the inner cross-validation picks from


def bundle_features(bundle_root: str | os.PathLike, config_files: Sequence[str], ckpt_path: str | os.PathLike,
                    items: Sequence[Mapping], batch_size: int = 16, device: str | torch.device = "cpu",
                    **overrides) -> dict[str, np.ndarray]:
    """``{image path: (F,) float32 input of the last linear layer}`` of the bundle model (`load_bundle` of
    `config_files` with `ckpt_path`) for `items`. A config with an ``embedding_cache`` (frozen-MedSAM heads) reads
    the cached encoder maps (computing the missing ones), others preprocess the images with the config's
    ``preprocessing``. Images that cannot be read are logged and left out. `overrides`: config id -> value."""
    model = load_bundle(bundle_root, list(config_files), ckpt_path, device=device, **overrides)
    if "embedding_cache" in model.config:
        cache = model.config.get_parsed_content("embedding_cache")
        items = cached_embedding_datalist(items, cache, batch_size=batch_size, device=device, progress=False)
        features, kept = penultimate_features(model.network, items, lambda item: {"image": item["embedding"]},
                                              batch_size, device)
    else:
        features, kept = penultimate_features(model.network, items, lambda item: model.preprocessing(dict(item)),
                                              batch_size, device)
    return {os.fspath(item["image"]): row for item, row in zip(kept, features)}


def probe(inner_folds: int = 5) -> GridSearchCV:
    """Standardise, then L2 logistic regression, with its C (`PROBE_STRENGTHS`) picked by an `inner_folds`-fold
    stratified cross-validation on ROC-AUC and the winner refitted on all it is given."""
    return GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                        {"logisticregression__C": PROBE_STRENGTHS}, scoring="roc_auc", cv=inner_folds)


def probe_folds(labels: np.ndarray, groups: Sequence[str], folds: int = 5, seed: int = 0) -> np.ndarray:
    """(N,) fold index of each image: stratified by label, all images of one patient (`groups`) in one fold."""
    fold_of = np.empty(len(labels), dtype=int)
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        fold_of[held_out] = fold
    return fold_of


def cross_fitted_scores(features: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, inner_folds: int = 5
                        ) -> np.ndarray:
    """(N,) P(positive) of each image from the probe fitted on the (N, F) `features` of the other folds."""
    scores = np.empty(len(labels))
    for fold in np.unique(fold_of):
        held_out = fold_of == fold
        fitted = probe(inner_folds).fit(features[~held_out], labels[~held_out])
        scores[held_out] = fitted.predict_proba(features[held_out])[:, 1]
    return scores


def refitted_scores(train_features: np.ndarray, train_labels: np.ndarray, features: np.ndarray,
                    inner_folds: int = 5) -> np.ndarray:
    """(M,) P(positive) of (M, F) `features` from the probe fitted on all of (N, F) `train_features`."""
    return probe(inner_folds).fit(train_features, train_labels).predict_proba(features)[:, 1]
