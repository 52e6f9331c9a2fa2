"""A shipped model's decision rule from validation predictions: re-select the threshold of a checkpoint by another
rule, or assemble a seed ensemble (`custom.models.networks.ProbabilityEnsemble`) and select its threshold on the
members' shared validation split. Both write the checkpoint atomically and record what they did in its provenance."""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from custom.evaluation.metrics import binary_metrics, select_threshold
from custom.io import atomic_path, file_sha256
from custom.models.provenance import build_record
from custom.models.trained_model import OperatingPoint, as_json, load_checkpoint

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
ENSEMBLE_CONFIG = "configs/ensemble.json"  # the config that loads an assembled ensemble (recorded in its provenance)


def labelled_predictions(path: str | os.PathLike, positive: str = "PNEUMONIA", domain: str | None = None
                         ) -> pd.DataFrame:
    """A predictions CSV (`custom.evaluation.report.ClassificationReport`: file, prob_<class>..., true_label) as
    written, checked for the columns a labelled binary reading needs; with `domain`, only its rows (the ``domain``
    column of a two-domain evaluation). ValueError naming the file for a missing column or a domain without rows."""
    table = pd.read_csv(path)
    missing = {"file", "true_label", f"prob_{positive}"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: not a labelled predictions CSV (missing columns {sorted(missing)})")
    if domain is None:
        return table
    if "domain" not in table:
        raise ValueError(f"{path}: no domain column (not a two-domain evaluation)")
    rows = table[table["domain"] == domain].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"{path}: no rows of domain {domain!r} (its domains: "
                         f"{sorted(table['domain'].astype(str).unique())})")
    return rows


def read_predictions(path: str | os.PathLike, positive: str = "PNEUMONIA", domain: str | None = None
                     ) -> pd.DataFrame:
    """`labelled_predictions` -> columns file, label (1 = `positive`), score (P(positive)), sorted by file."""
    table = labelled_predictions(path, positive, domain)
    return pd.DataFrame({"file": table["file"], "label": (table["true_label"] == positive).astype(int),
                         "score": table[f"prob_{positive}"]}).sort_values("file", ignore_index=True)


def average_predictions(frames: Sequence[pd.DataFrame], paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Per-image mean P(positive) of the `read_predictions` tables `frames` (read from `paths`); they must have
    scored the same images with the same labels (one `split_seed`), else ValueError naming the odd file."""
    for path, frame in zip(paths[1:], frames[1:]):
        if not frame["file"].equals(frames[0]["file"]) or not frame["label"].equals(frames[0]["label"]):
            raise ValueError(f"{path}: other images than {paths[0]}: averaged predictions must come from one "
                             "validation split")
    return frames[0].assign(score=np.mean([f["score"] for f in frames], axis=0))


def mean_of_members(paths: Sequence[str | os.PathLike], positive: str = "PNEUMONIA", domain: str | None = None
                    ) -> pd.DataFrame:
    """The members' predictions averaged per image (the ensemble's P(positive)), as `average_predictions`.
    `domain`: as `read_predictions`."""
    return average_predictions([read_predictions(p, positive, domain) for p in paths], paths)


def members_trained_with(paths: Sequence[str | os.PathLike], members: Sequence[dict]) -> dict:
    """The config values the ensemble members were trained with that a config's ``trained_with`` checks (the ids
    their own training configs list there, e.g. ``image_size``) -> one dict for the ensemble's provenance config.
    Members without provenance add nothing; two members trained with different values raise ValueError naming
    both files, the id and both values."""
    agreed, first = {}, {}
    for path, member in zip(paths, members):
        config = (member.get("provenance") or {}).get("config") or {}
        for name in config.get("trained_with") or {}:
            value = config.get(name)
            if name in agreed and as_json(agreed[name]) != as_json(value):
                raise ValueError(f"{path}: trained with {name} = {value!r}, but {first[name]} with {agreed[name]!r}: "
                                 "ensemble members must share every trained_with value")
            agreed.setdefault(name, value)
            first.setdefault(name, path)
    return agreed


def _record(path: Path, checkpoint: dict, operating_point: OperatingPoint, predictions: Sequence, **what) -> dict:
    """Saves `checkpoint` with `operating_point` at `path` (atomic); its provenance gains an `operating_point_history`
    entry: the rule, threshold, the predictions files and their sha256, the command and the time."""
    provenance = dict(checkpoint.get("provenance") or {})
    provenance["operating_point_history"] = [*provenance.get("operating_point_history", []), {
        **operating_point.state_dict(), **what,
        "predictions": {str(p): file_sha256(p) for p in predictions},
        "command": " ".join(["python", *sys.argv]), "at": datetime.datetime.now(datetime.timezone.utc).isoformat()}]
    checkpoint = {**checkpoint, "operating_point": operating_point.state_dict(), "provenance": provenance}
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return checkpoint


def reselect(ckpt_path: str | os.PathLike, predictions: str | os.PathLike, method: str,
             output: str | os.PathLike | None = None, positive: str = "PNEUMONIA") -> dict:
    """Re-selects the threshold of `ckpt_path` by `method` (`custom.evaluation.metrics.THRESHOLD_METHODS`) on its
    validation `predictions` CSV; writes `output` (default: in place). Returns the new operating point and the
    validation metrics there."""
    validation = read_predictions(predictions, positive)
    checkpoint = load_checkpoint(ckpt_path)
    previous = OperatingPoint.from_checkpoint(checkpoint)
    point = OperatingPoint(select_threshold(validation["label"], validation["score"], method), method,
                           previous.positive_index)
    _record(Path(output or ckpt_path), checkpoint, point, [predictions], previous=previous.state_dict())
    return {"operating_point": point.state_dict(), "previous": previous.state_dict(),
            "validation": binary_metrics(validation["label"], validation["score"], point.threshold)}


def assemble_ensemble(member_checkpoints: Sequence[str | os.PathLike], member_predictions: Sequence[str | os.PathLike],
                      method: str, output: str | os.PathLike, dtype: str = "float16", positive: str = "PNEUMONIA") -> dict:
    """One checkpoint for `ProbabilityEnsemble`: member i's "model" weights under ``members.i.`` (floating tensors
    stored as `dtype` to halve the file; they load into the float32 network), the threshold picked by `method` on the
    mean of the members' validation `member_predictions`, the members' provenance and how the ensemble was built
    (`custom.models.provenance.build_record`: commit, command, time, versions, ``configs/ensemble.json``, whose
    config is recorded with the members' shared `members_trained_with` values, so a config run at another image
    size is refused). Returns the operating point and the ensemble's validation metrics."""
    if len(member_checkpoints) != len(member_predictions) or len(member_checkpoints) < 2:
        raise ValueError("give two or more member checkpoints, each with its validation predictions CSV")
    validation = mean_of_members(member_predictions, positive)
    members = [load_checkpoint(p) for p in member_checkpoints]
    cast = getattr(torch, dtype)
    state = {f"members.{i}.{name}": (t.to(cast) if t.is_floating_point() else t)
             for i, member in enumerate(members) for name, t in member["model"].items()}
    point = OperatingPoint(select_threshold(validation["label"], validation["score"], method), method,
                           OperatingPoint.from_checkpoint(members[0]).positive_index)
    record = build_record(BUNDLE_ROOT, ENSEMBLE_CONFIG)
    record["config"] = {**record["config"], **members_trained_with(member_checkpoints, members)}
    checkpoint = {"model": state, "provenance": {
        **record,
        "ensemble_of": [{"checkpoint": str(p), "sha256": file_sha256(p), "provenance": m.get("provenance")}
                        for p, m in zip(member_checkpoints, members)], "weights_dtype": dtype}}
    _record(Path(output), checkpoint, point, member_predictions)
    return {"operating_point": point.state_dict(),
            "validation": binary_metrics(validation["label"], validation["score"], point.threshold)}
