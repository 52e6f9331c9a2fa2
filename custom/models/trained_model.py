"""What a trained model is, for every consumer (evaluation handlers, scripts, screening, MONAI Label, MONAI Deploy):

- the checkpoint that `configs/train.json` writes, ``{"model": state dict, "operating_point": {...}, "provenance":
  {...}}`` (the "model" weights are a MedSAM head's alone when the config sets ``head_only_checkpoint``), read with
  one policy: `load_checkpoint`, `load_weights`;
- the decision rule at its operating point: `OperatingPoint.decide` (`is_positive` for a binary score);
- the bundle around it: `bundle_info` (``configs/metadata.json``) and `load_bundle` (network, weights, operating
  point, class names, preprocessing).

torch and MONAI are imported where they are used, so that the decision rule loads without them (`custom.evaluation.metrics`,
`custom.evaluation.plots`, `scripts/report.py`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from monai.bundle import ConfigParser
    from torch import nn

DEFAULT_CONFIG = "configs/inference.json"
DEFAULT_CHECKPOINT = "models/model.pt"


def is_positive(scores, threshold: float) -> np.ndarray:
    """(N,) positive-class probabilities -> (N,) bool: the binary decision rule P(positive) >= threshold, compared in
    float64."""
    return np.asarray(scores, dtype=np.float64) >= threshold


class OperatingPoint:
    """The decision threshold on the positive-class probability, chosen on validation; checkpointable (saved by the
    training config as the checkpoint's "operating_point")."""

    def __init__(self, threshold: float = 0.5, method: str = "fixed", positive_index: int = 1) -> None:
        self.threshold, self.method, self.positive_index = float(threshold), method, positive_index

    @classmethod
    def from_checkpoint(cls, checkpoint: dict | None) -> OperatingPoint:
        """The one stored in a `load_checkpoint` dict; threshold 0.5 with method "default" when there is none (no
        checkpoint, or one not written by the training config)."""
        point = cls(method="default")
        if checkpoint and "operating_point" in checkpoint:
            point.load_state_dict(checkpoint["operating_point"])
        return point

    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "method": self.method, "positive_index": self.positive_index}

    def load_state_dict(self, state: dict) -> None:
        self.threshold, self.method = float(state["threshold"]), state["method"]
        self.positive_index = int(state["positive_index"])

    def decide(self, probs) -> np.ndarray:
        """(N, C) class probabilities (array or CPU tensor) -> (N,) class indices: for C = 2 the positive class where
        `is_positive`, else the other one; argmax for C > 2."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2:
            raise ValueError(f"decide expects (N, C) class probabilities, got shape {probs.shape}")
        if probs.shape[1] != 2:
            return probs.argmax(1)
        positive = self.positive_index
        return np.where(is_positive(probs[:, positive], self.threshold), positive, 1 - positive)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict at `path`, tensors on the CPU, read with ``weights_only=True`` (no pickled code runs).
    It must hold "model" weights. Errors name the file: missing, unreadable, or no checkpoint dict."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad files (EOFError, RuntimeError, UnpicklingError...)
        raise ValueError(f"{path}: cannot read checkpoint: {type(err).__name__}: {err}") from err
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path}: not a bundle checkpoint (expected a dict with 'model' weights, got {found})")
    return checkpoint


def check_trained_with(checkpoint: str | os.PathLike | dict, expected: dict | None,
                       source: str | os.PathLike | None = None) -> dict:
    """Checks that the run that trained `checkpoint` used the `expected` config values (config id -> value, e.g.
    ``{"map_size": 16, "encoder_variant": "lite"}``: what the weights' shapes cannot show, as a head trained on 8 x 8
    embedding maps runs on 16 x 16 ones and silently predicts wrong). Values are read from the checkpoint's
    provenance config; ids it lacks, holds as an expression, or a checkpoint without provenance are not checked.
    Returns the checkpoint dict; raises ValueError naming the file, the id and both values."""
    if not isinstance(checkpoint, dict):
        source, checkpoint = checkpoint, load_checkpoint(checkpoint)
    trained = (checkpoint.get("provenance") or {}).get("config") or {}
    for name, value in (expected or {}).items():
        stored = trained.get(name)
        if stored is None or (isinstance(stored, str) and stored[:1] in ("$", "@", "%")):
            continue
        if as_json(stored) != as_json(value):
            raise ValueError(f"{source or 'checkpoint'}: trained with {name} = {stored!r}, but this config has "
                             f"{name} = {value!r}; run it with --{name} {stored!r} (its training setting) or retrain")
    return checkpoint


def as_json(value):
    """A tuple as the list a config read from JSON holds."""
    return list(value) if isinstance(value, tuple) else value


def load_weights(network: nn.Module, checkpoint: str | os.PathLike | dict, key: str = "model",
                 source: str | os.PathLike | None = None, expected: dict | None = None) -> dict:
    """Loads ``checkpoint[key]`` into `network` (strict) and returns the checkpoint dict.

    Args:
        checkpoint: a file (read with `load_checkpoint`) or a dict `load_checkpoint` returned.
        source: the file named in errors when `checkpoint` is a dict.
        expected: config values the training run must have used (`check_trained_with`), e.g. a config's
            ``trained_with``.

    Raises ValueError naming the file and the first parameter that does not fit (absent on one side, or its shape
    in the checkpoint and in the network) when the checkpoint is of another architecture, head or pooling, or the
    `expected` value and the training run's when they differ.
    """
    if not isinstance(checkpoint, dict):
        source, checkpoint = checkpoint, load_checkpoint(checkpoint)
    source = source or "checkpoint"
    check_trained_with(checkpoint, expected, source)
    state = checkpoint.get(key)
    if not isinstance(state, dict):
        raise ValueError(f"{source}: no {key!r} state dict in the checkpoint")
    problem = _first_mismatch(network.state_dict(), state)
    if problem:
        raise ValueError(f"{source}: {key!r} weights do not fit the network {type(network).__name__} (another "
                         f"architecture, head or pooling?): {problem}")
    network.load_state_dict(state)
    return checkpoint


def _first_mismatch(expected: dict, state: dict) -> str | None:
    """The first parameter, in the network's order, that `state` lacks or holds with another shape, else the first one
    `state` has beyond the network's; None when every name and shape fits."""
    for name, tensor in expected.items():
        if name not in state:
            return f"parameter {name!r} {tuple(tensor.shape)} of the network is missing from the checkpoint"
        shape = tuple(getattr(state[name], "shape", ()))
        if shape != tuple(tensor.shape):
            return f"parameter {name!r} has shape {shape} in the checkpoint but {tuple(tensor.shape)} in the network"
    extra = next((name for name in state if name not in expected), None)
    return None if extra is None else f"parameter {extra!r} of the checkpoint is not in the network"


def bundle_info(bundle_root: str | os.PathLike = ".") -> dict:
    """``{"name", "version", "class_names"}`` of a bundle from its ``configs/metadata.json``; the class names, in
    output index order, from ``network_data_format.outputs.pred.channel_def``."""
    path = Path(bundle_root) / "configs" / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bundle metadata not found")
    try:
        meta = json.loads(path.read_text())
        channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        return {"name": meta["name"], "version": meta["version"],
                "class_names": [channel_def[str(i)] for i in range(len(channel_def))]}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: no bundle metadata with name, version and network_data_format.outputs.pred."
                         f"channel_def '0'..'C-1' ({type(err).__name__}: {err})") from err


def bundle_config(bundle_root: str | os.PathLike = ".", config_file: str | os.PathLike | Sequence = DEFAULT_CONFIG,
                  **overrides) -> ConfigParser:
    """`configs/metadata.json` + `config_file` (one or a list merged in order; relative paths from `bundle_root`) in
    a MONAI ConfigParser, with ``bundle_root`` set and the `overrides` (config id -> value) applied."""
    from monai.bundle import ConfigParser

    root = Path(bundle_root)
    files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
    missing = [str(root / f) for f in files if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"config file(s) not found: {missing}")
    parser = ConfigParser()
    parser.read_meta(root / "configs" / "metadata.json")
    parser.read_config([root / f for f in files])
    parser["bundle_root"] = str(root)
    parser.update(overrides)
    return parser


def configured_network(parser: ConfigParser, checkpoint: str | os.PathLike | dict,
                       device: str | torch.device = "cpu", source: str | os.PathLike | None = None) -> nn.Module:
    """The config's ``network_def`` with the checkpoint's "model" weights (`load_weights`; into
    ``network_def.classifier`` when the config sets ``head_only_checkpoint``; checked against the config's
    ``trained_with``), on `device`, eval mode."""
    network = parser.get_parsed_content("network_def")
    head_only = "head_only_checkpoint" in parser and parser.get_parsed_content("head_only_checkpoint")
    expected = parser.get_parsed_content("trained_with") if "trained_with" in parser else None
    load_weights(network.classifier if head_only else network, checkpoint, source=source, expected=expected)
    return network.to(device).eval()


@dataclass
class TrainedModel:
    """A bundle network with its checkpoint, as `load_bundle` returns it.

    network: ``network_def`` with the weights, eval mode; (B, C_in, H, W) images -> (B, C) logits.
    operating_point: the checkpoint's (`OperatingPoint.from_checkpoint`); decide on softmax probabilities with it.
    class_names: the C names from ``configs/metadata.json``.
    preprocessing: the config's ``preprocessing``: {"image": file path} -> {"image": (C_in, H, W) tensor, ...}.
    provenance: how the checkpoint was trained (`custom.models.provenance`); None when not recorded.
    config: the parsed configs, for other ids (``inferer``, ``image_size``...).
    inferer: the config's ``inferer`` (its ``precision``), as `probabilities` and the config's own runs use it.
    """

    network: nn.Module
    operating_point: OperatingPoint
    class_names: list[str]
    preprocessing: Callable
    provenance: dict | None
    config: ConfigParser
    inferer: Callable

    def probabilities(self, images):
        """(B, C_in, H, W) preprocessed images -> (B, C) float32 softmax probabilities, through the config's
        ``inferer`` without gradient: what the config's evaluator computes for the same batch."""
        import torch

        with torch.inference_mode():
            return torch.softmax(self.inferer(images, self.network).float(), 1)


def load_bundle(bundle_root: str | os.PathLike = ".", config_file: str | os.PathLike | Sequence = DEFAULT_CONFIG,
                ckpt_path: str | os.PathLike | None = None, device: str | torch.device | None = "cpu",
                **overrides) -> TrainedModel:
    """The trained model of a bundle: `config_file` (see `bundle_config`) with the weights of `ckpt_path` (default:
    the config's ``ckpt_path``, e.g. ``models/model.pt``, or ``models/medsam_head.pt`` with inference_medsam.json;
    a given path is set as the config's ``ckpt_path``) on `device` (None: the config's ``device``). `overrides`:
    config id -> value, e.g. ``lung_mode="none"``."""
    import torch

    parser = bundle_config(bundle_root, config_file, **overrides)
    ckpt = Path(ckpt_path) if ckpt_path else Path(parser.get_parsed_content("ckpt_path"))
    parser["ckpt_path"] = str(ckpt)
    checkpoint = load_checkpoint(ckpt)
    device = parser.get_parsed_content("device") if device is None else torch.device(device)
    return TrainedModel(network=configured_network(parser, checkpoint, device, source=ckpt),
                        operating_point=OperatingPoint.from_checkpoint(checkpoint),
                        class_names=bundle_info(bundle_root)["class_names"],
                        preprocessing=parser.get_parsed_content("preprocessing"),
                        provenance=checkpoint.get("provenance"), config=parser,
                        inferer=parser.get_parsed_content("inferer"))
