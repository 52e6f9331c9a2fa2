"""Where a trained model came from, and whether two runs are the same run.

A checkpoint's ``provenance`` (`Provenance.state_dict()`) records the bundle name and version, the git commit, the
command line, the merged config with its command-line overrides and its hash, ``seed`` and ``split_seed``, the
datalist hash and split sizes, start / save / resume times, torch / MONAI / Python versions, the device and, for a
fine-tuning run, the checkpoint its weights started from (path and sha256). ``config_hash`` + ``datalist_hash``
identify a run: resuming refuses a checkpoint whose pair differs (`custom.training.prepare_checkpoint_dir`), and the
benchmark scripts rerun a stored run whose key differs.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import inspect
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import monai
import torch
from monai.bundle import ConfigParser

from custom.io import file_sha256
from custom.models.trained_model import bundle_info

# ids that say where a run reads / writes or how fast and how long it runs, not what it learns: left out of the
# config hash (the data itself is covered by the datalist hash; `max_epochs` so a finished run can be extended)
VOLATILE_IDS = ("_meta_", "bundle_root", "dataset_dir", "output_dir", "ckpt_dir", "train_output_dir", "ckpt_path",
                "device", "lung_device", "num_workers", "cache_rate", "progress_bar", "resume", "make_plots",
                "max_epochs", "early_stop_patience", "eval_split")
CODE_DIRS = ("custom", "configs")


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def active_config() -> dict | None:
    """The merged config (overrides applied, expressions unevaluated) of the `ConfigParser` that is resolving the
    caller, found on the call stack: the bundle run's own config whether it came from `python -m monai.bundle`, a
    `ConfigWorkflow` or MONAI Label; None outside a bundle run."""
    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigParser):
            return copy.deepcopy(candidate.get())
        frame = frame.f_back
    return None


def config_hash(config: Mapping) -> str:
    """sha256 of a merged config without its `VOLATILE_IDS`."""
    return _sha256({k: v for k, v in config.items() if k not in VOLATILE_IDS})


def datalist_hash(datalist: Mapping) -> str:
    """sha256 of each split's items as (split, path relative to the items' common folder, label, size in bytes)."""
    splits = {k: v for k, v in datalist.items() if isinstance(v, list) and v and isinstance(v[0], Mapping)}
    paths = [str(item["image"]) for items in splits.values() for item in items]
    root = os.path.commonpath(paths) if paths else ""
    rows = sorted((split, os.path.relpath(str(item["image"]), root), item.get("label"),
                   os.path.getsize(item["image"]) if os.path.isfile(str(item["image"])) else -1)
                  for split, items in splits.items() for item in items)
    return _sha256(rows)


def code_version(root: str | os.PathLike = ".") -> str:
    """sha256 of the bundle's code and configs (`CODE_DIRS`, every .py and .json file): a run made by other code
    is another run."""
    digest = hashlib.sha256()
    for folder in CODE_DIRS:
        for path in sorted(Path(root, folder).rglob("*")):
            if path.suffix in (".py", ".json") and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def git_commit(root: str | os.PathLike = ".") -> dict:
    """``{"commit": HEAD or "unknown", "dirty": bool | None}`` of the checkout at `root`."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def environment() -> dict:
    """Python / torch / MONAI versions and the host (machine, CPU count, GPU name or None)."""
    return {"versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                         "monai": str(monai.__version__)},
            "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}


def build_record(bundle_root: str | os.PathLike, config_file: str | os.PathLike) -> dict:
    """Provenance of a checkpoint assembled from trained ones rather than trained (a seed ensemble): the bundle
    name and version (``configs/metadata.json``), git commit, code version, command, time, environment, and the
    config `config_file` (relative to `bundle_root`) that loads it, so the file says how it was made and how to
    run it."""
    bundle = bundle_info(bundle_root)
    return {"bundle": {"name": bundle["name"], "version": bundle["version"]}, "git": git_commit(bundle_root),
            "code_version": code_version(bundle_root), "command": " ".join(["python", *sys.argv]), "built_at": now(),
            **environment(), "config_file": os.fspath(config_file),
            "config": json.loads(Path(bundle_root, config_file).read_text())}


class Provenance:
    """Checkpointable record of how a model is being trained (module docstring). Put it in the ``save_dict`` of
    every checkpoint saver and in the resume state.

    Args:
        bundle_root: the bundle folder (git commit, code version).
        seed: initialisation / order seed. split_seed: seed of the validation split.
        datalist: the run's datalist (hashed; split sizes recorded).
        device: where the run trains.
        config: the merged config; default: the config of the bundle run that builds this object.
        init_checkpoint: the checkpoint the weights start from (fine-tuning), recorded by path and sha256.
    """

    def __init__(self, bundle_root: str, seed: int, split_seed: int, datalist: Mapping, device=None,
                 config: Mapping | None = None, init_checkpoint: str | os.PathLike | None = None) -> None:
        config = active_config() if config is None else dict(config)
        meta = (config or {}).get("_meta_", {})
        self.record = {
            "bundle": {"name": meta.get("name"), "version": meta.get("version")},
            "git": git_commit(bundle_root),
            "code_version": code_version(bundle_root),
            "command": " ".join(sys.argv),
            "config": {k: v for k, v in config.items() if k != "_meta_"} if config is not None else None,
            "config_hash": config_hash(config) if config is not None else "unknown",
            "seed": int(seed),
            "split_seed": int(split_seed),
            "datalist_hash": datalist_hash(datalist),
            "datalist_sizes": {k: len(v) for k, v in datalist.items() if isinstance(v, list) and k != "class_names"},
            "started_at": now(),
            "saved_at": None,
            "resumed_at": [],
            **environment(),
            "device": str(device) if device is not None else None,
        }
        if init_checkpoint is not None:
            self.record["init_checkpoint"] = {"path": os.fspath(init_checkpoint),
                                              "sha256": file_sha256(init_checkpoint)}

    def state_dict(self) -> dict:
        """The record, stamped with the time of this save."""
        self.record["saved_at"] = now()
        return copy.deepcopy(self.record)

    def load_state_dict(self, state: Mapping) -> None:
        """Resume: the run keeps its original record, plus when and by which command it was resumed."""
        resumed = [*state.get("resumed_at", []), {"time": now(), "command": " ".join(sys.argv)}]
        self.record = {**copy.deepcopy(dict(state)), "resumed_at": resumed}

    def mismatch(self, other: Mapping | None) -> list[str]:
        """Names of the identity fields (config_hash, datalist_hash) where `other` (a saved record) differs."""
        other = other or {}
        return [k for k in ("config_hash", "datalist_hash") if other.get(k) != self.record[k]]
