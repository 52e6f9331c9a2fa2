"""MONAI datalist builders for chest X-ray classification.

An item is ``{"image": abs path, "label": int, "class_name": str, "patient_id": str, "domain": str}``;
a datalist is ``{"training": [...], "validation": [...], "test": [...], "class_names": [...]}``; the builders that
scan folders add ``"skipped_files"``: the number of files left out because their suffix is not in
``custom.data.transforms.IMAGE_SUFFIXES`` (each such folder is named in one warning). All splits are patient-aware: no
``patient_id`` appears in two splits of one datalist.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from custom.data.transforms import IMAGE_SUFFIXES
from custom.io import write_json

LABEL_SCHEMES = {"binary": ["NORMAL", "PNEUMONIA"], "three_class": ["NORMAL", "BACTERIAL", "VIRAL"]}
SPLITS = ("training", "validation", "test")
COVID_CLASS_MAPS = {
    "binary": {"Normal": "NORMAL", "COVID": "PNEUMONIA", "Viral Pneumonia": "PNEUMONIA", "Lung_Opacity": "PNEUMONIA"},
    "multiclass": {"Normal": "NORMAL", "COVID": "COVID", "Viral Pneumonia": "Viral Pneumonia", "Lung_Opacity": "Lung_Opacity"},
}
CSV_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation", "test": "test"}

_KERMANY_ID = re.compile(r"^(person\d+|(?:NORMAL2-)?IM-\d+)[_-]")

logger = logging.getLogger(__name__)


def _stem(name: str) -> str:
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def _image_files(folder: Path, skipped: list[Path] | None = None) -> list[Path]:
    """The non-hidden files of `folder` with a suffix in `IMAGE_SUFFIXES`. The other non-hidden files are named
    (a few) in one warning and appended to `skipped` when given."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.name.lower().endswith(IMAGE_SUFFIXES)]
    others = [p for p in files if not p.name.lower().endswith(IMAGE_SUFFIXES)]
    if others:
        logger.warning("%s: %d file(s) left out, suffix not one of %s: e.g. %s", folder, len(others),
                       " ".join(IMAGE_SUFFIXES), ", ".join(p.name for p in others[:5]))
    if skipped is not None:
        skipped += others
    return images


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {path}")
    return path


def _require_columns(df: pd.DataFrame, columns: Sequence[str], csv_path: Path) -> None:
    for column in columns:
        if column not in df.columns:
            raise ValueError(f"{csv_path}: missing column '{column}' (found {list(df.columns)})")


def _normal_first(names) -> list[str]:
    return sorted(set(names), key=lambda n: (n != "NORMAL", n))


def _item(path: Path, class_names: Sequence[str], class_name: str, patient_id: str, domain: str) -> dict:
    return {
        "image": os.path.abspath(path),
        "label": class_names.index(class_name),
        "class_name": class_name,
        "patient_id": patient_id,
        "domain": domain,
    }


def _missing_error(missing: list[str], source: Path, limit: int = 10) -> ValueError:
    return ValueError(f"{source}: {len(missing)} image file(s) missing, e.g. {missing[:limit]}")


def three_way_split(items: list[dict], class_names: Sequence[str], val_fraction: float, test_fraction: float,
                    seed: int) -> dict:
    """Seeded, stratified, patient-aware training / validation / test datalist (test carved first)."""
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    rest, test = patient_split(items, test_fraction, seed)
    training, validation = patient_split(rest, val_fraction / (1 - test_fraction), seed)
    return {"training": training, "validation": validation, "test": test, "class_names": list(class_names)}


def kermany_patient_id(filename: str) -> str:
    """Patient id from a Kermany file name (``person1000``, ``IM-0115``, ``NORMAL2-IM-0173``); else the stem."""
    name = Path(filename).name
    match = _KERMANY_ID.match(name)
    return match.group(1) if match else _stem(name)


def kermany_items(root: str | os.PathLike, split: str, scheme: str = "binary", domain: str = "pediatric",
                  skipped: list[Path] | None = None) -> list[dict]:
    """Items of ``root/split/{NORMAL,PNEUMONIA}``; ``three_class`` splits PNEUMONIA by ``_bacteria_``/``_virus_``.
    Files that are no image by their suffix are warned about and appended to `skipped` when given."""
    if scheme not in LABEL_SCHEMES:
        raise ValueError(f"unknown scheme '{scheme}', expected one of {list(LABEL_SCHEMES)}")
    class_names = LABEL_SCHEMES[scheme]
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        return []
    items = []
    for folder in _subdirs(split_dir):
        if folder.name not in LABEL_SCHEMES["binary"]:
            raise ValueError(f"unknown class folder '{folder}', allowed: {LABEL_SCHEMES['binary']}")
        for path in _image_files(folder, skipped):
            class_name = folder.name
            if scheme == "three_class" and class_name == "PNEUMONIA":
                kinds = [kind for kind in ("bacteria", "virus") if f"_{kind}_" in path.name]
                if len(kinds) != 1:
                    raise ValueError(f"cannot tell bacterial from viral pneumonia for '{path}'")
                class_name = "BACTERIAL" if kinds[0] == "bacteria" else "VIRAL"
            items.append(_item(path, class_names, class_name, kermany_patient_id(path.name), domain))
    return items


def patient_split(items: Sequence[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded patient-aware split stratified by label: each label set keeps about ``val_fraction`` in validation."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    items = list(items)
    if val_fraction == 0:
        return items, []
    patient_labels = defaultdict(list)
    for item in items:
        patient_labels[item["patient_id"]].append(item["label"])
    strata = defaultdict(list)
    for patient_id, labels in patient_labels.items():
        strata[tuple(sorted(set(labels)))].append(patient_id)
    rng = random.Random(seed)
    val_ids = set()
    for key in sorted(strata):
        patient_ids = sorted(strata[key])
        rng.shuffle(patient_ids)
        target = val_fraction * sum(len(patient_labels[p]) for p in patient_ids)
        taken = 0
        for patient_id in patient_ids:
            size = len(patient_labels[patient_id])
            if taken + size / 2 <= target:  # only add a patient if it brings the count closer to the target
                val_ids.add(patient_id)
                taken += size
    return ([i for i in items if i["patient_id"] not in val_ids], [i for i in items if i["patient_id"] in val_ids])


def build_kermany(root: str | os.PathLike, val_fraction: float = 0.15, seed: int = 0, scheme: str = "binary",
                  domain: str = "pediatric", test_fraction: float = 0.0) -> dict:
    """Kermany layout: training/validation carved from ``train`` (+ official ``val``), ``test`` = ``root/test``.

    test_fraction > 0 is for copies without a ``test`` folder (e.g. a train-only subset): the test split is then
    carved from the same pool, patient-aware and seeded like validation. A root that has ``test`` refuses it.
    """
    root = _require_dir(root)
    skipped = []
    pool = kermany_items(root, "train", scheme, domain, skipped) + kermany_items(root, "val", scheme, domain, skipped)
    if test_fraction > 0:
        if (root / "test").is_dir():
            raise ValueError(f"{root}: has an official test split; test_fraction={test_fraction} would replace it")
        return {**three_way_split(pool, LABEL_SCHEMES[scheme], val_fraction, test_fraction, seed),
                "skipped_files": len(skipped)}
    training, validation = patient_split(pool, val_fraction, seed)
    return {
        "training": training,
        "validation": validation,
        "test": kermany_items(root, "test", scheme, domain, skipped),
        "class_names": list(LABEL_SCHEMES[scheme]),
        "skipped_files": len(skipped),
    }


def build_rsna(root: str | os.PathLike, labels_csv: str | os.PathLike | None = None, val_fraction: float = 0.15,
               test_fraction: float = 0.15, seed: int = 0, domain: str = "rsna") -> dict:
    """RSNA Pneumonia Detection layout: one item per patient, label = max ``Target`` over its box rows."""
    root = _require_dir(root)
    csv_path = Path(labels_csv) if labels_csv is not None else root / "stage_2_train_labels.csv"
    df = pd.read_csv(csv_path, dtype={"patientId": str})
    _require_columns(df, ("patientId", "Target"), csv_path)
    targets = df.groupby("patientId", sort=True)["Target"].max()
    if not targets.isin([0, 1]).all():
        raise ValueError(f"{csv_path}: 'Target' must be 0 or 1")
    paths = {pid: root / "stage_2_train_images" / f"{pid}.dcm" for pid in targets.index}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise _missing_error(missing, csv_path, limit=5)
    class_names = LABEL_SCHEMES["binary"]
    items = [_item(paths[pid], class_names, class_names[int(t)], pid, domain) for pid, t in targets.items()]
    return three_way_split(items, class_names, val_fraction, test_fraction, seed)


def build_covid_radiography(root: str | os.PathLike, scheme: str = "binary", class_map: dict[str, str] | None = None,
                            val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                            domain: str = "adult") -> dict:
    """COVID-19 Radiography Database layout: class folders holding images directly or in ``images/``.

    ``masks/`` folders are ignored. The database has no patient ids, so each file stem is its own patient
    (near-duplicates of one patient may straddle splits). Our shared ``adult_cxr`` copy needs
    ``class_map={"NORMAL": "NORMAL", "OTHER_COVID": "PNEUMONIA"}``.
    """
    if scheme not in COVID_CLASS_MAPS:
        raise ValueError(f"unknown scheme '{scheme}', expected one of {list(COVID_CLASS_MAPS)}")
    root = _require_dir(root)
    class_map = COVID_CLASS_MAPS[scheme] if class_map is None else class_map
    folders = _subdirs(root)
    unknown = [f.name for f in folders if f.name not in class_map]
    if unknown:
        raise ValueError(f"{root}: class folders {unknown} not in class_map {sorted(class_map)}")
    if scheme == "binary":
        class_names = LABEL_SCHEMES["binary"]
        unknown = set(class_map.values()) - set(class_names)
        if unknown:
            raise ValueError(f"binary class_map values must be in {class_names}, got {sorted(unknown)}")
    else:
        class_names = _normal_first(class_map[f.name] for f in folders)
    items, skipped = [], []
    for folder in folders:
        image_dir = folder / "images" if (folder / "images").is_dir() else folder
        items += [_item(p, class_names, class_map[folder.name], _stem(p.name), domain)
                  for p in _image_files(image_dir, skipped)]
    return {**three_way_split(items, class_names, val_fraction, test_fraction, seed), "skipped_files": len(skipped)}


def build_csv(csv_path: str | os.PathLike, base_dir: str | os.PathLike | None = None,
              class_names: Sequence[str] | None = None, val_fraction: float = 0.15, test_fraction: float = 0.0,
              seed: int = 0) -> dict:
    """Datalist from a CSV ``path,label[,patient_id][,domain][,split]``.

    ``label`` is a class name or an index into ``class_names`` (default: the names in the column, NORMAL first,
    or the binary scheme when all labels are integers). Without ``patient_id`` each image is its own patient;
    ``domain`` defaults to the CSV stem; a ``split`` column (train/val/test) overrides the seeded split.
    """
    csv_path = Path(csv_path)
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    _require_columns(df, ("path", "label"), csv_path)
    base = Path(base_dir) if base_dir is not None else csv_path.parent
    labels = df["label"].str.strip()
    if class_names is None:
        names = [label for label in labels if not label.isdigit()]
        class_names = _normal_first(names) if names else LABEL_SCHEMES["binary"]
    class_names = list(class_names)

    def class_of(label: str) -> str | None:
        if label in class_names:
            return label
        return class_names[int(label)] if label.isdigit() and int(label) < len(class_names) else None

    bad = sorted({label for label in labels if class_of(label) is None})
    if bad:
        raise ValueError(f"{csv_path}: labels {bad} are neither in {class_names} nor valid indices")
    paths = [base / p for p in df["path"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise _missing_error(missing, csv_path)
    patient_ids = df["patient_id"] if "patient_id" in df else [_stem(p.name) for p in paths]
    domains = df["domain"] if "domain" in df else [csv_path.stem] * len(df)
    items = [
        _item(path, class_names, class_of(label), str(pid), str(domain))
        for path, label, pid, domain in zip(paths, labels, patient_ids, domains)
    ]
    if "split" not in df:
        return three_way_split(items, class_names, val_fraction, test_fraction, seed)
    splits = df["split"].str.strip().str.lower()
    bad = sorted(set(splits) - set(CSV_SPLITS))
    if bad:
        raise ValueError(f"{csv_path}: unknown split values {bad}, expected {sorted(CSV_SPLITS)}")
    datalist = {key: [] for key in SPLITS}
    for item, split in zip(items, splits):
        datalist[CSV_SPLITS[split]].append(item)
    return {**datalist, "class_names": class_names}


def write_datalist(datalist: dict, path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> None:
    """Write a datalist JSON atomically; image paths are made relative to ``base_dir`` when given."""
    path = Path(path)
    out = dict(datalist)
    if base_dir is not None:
        for key in SPLITS:
            out[key] = [{**item, "image": os.path.relpath(item["image"], base_dir)} for item in datalist.get(key, [])]
    write_json(out, path)


def load_datalist(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> dict:
    """Read a datalist JSON with absolute image paths (relative ones resolved against ``base_dir``/the JSON folder)."""
    path = Path(path)
    with open(path) as f:
        datalist = json.load(f)
    base = Path(base_dir) if base_dir is not None else path.parent
    for key in SPLITS:
        items = datalist.get(key) or []
        for index, item in enumerate(items):
            if not isinstance(item, dict) or "image" not in item or "label" not in item:
                raise ValueError(f"{path}: item {index} of '{key}' needs 'image' and 'label', got {item!r}")
            item["image"] = os.path.abspath(base / item["image"])
        datalist[key] = items
    return datalist


def resolve_datalist(dataset_dir: str | os.PathLike, datalist_file: str | os.PathLike | None = None,
                     layout: str = "kermany", scheme: str = "binary", val_fraction: float = 0.15,
                     seed: int = 0) -> dict:
    """Load ``datalist_file`` (paths relative to ``dataset_dir``) or build from ``dataset_dir`` by ``layout``."""
    _require_dir(dataset_dir)
    if datalist_file:
        return load_datalist(datalist_file, base_dir=dataset_dir)
    if layout == "kermany":
        return build_kermany(dataset_dir, val_fraction, seed, scheme)
    if layout == "covid_radiography":
        return build_covid_radiography(dataset_dir, scheme, val_fraction=val_fraction, seed=seed)
    if layout == "rsna":
        if scheme != "binary":
            raise ValueError(f"rsna layout is binary only, got scheme '{scheme}'")
        return build_rsna(dataset_dir, val_fraction=val_fraction, seed=seed)
    raise ValueError(f"unknown layout '{layout}', expected kermany, rsna or covid_radiography")


def class_counts(items: Sequence[dict], num_classes: int) -> list[int]:
    """Number of items per label index."""
    counts = [0] * num_classes
    for item in items:
        if not 0 <= item["label"] < num_classes:
            raise ValueError(f"label {item['label']} of {item['image']} out of range for {num_classes} classes")
        counts[item["label"]] += 1
    return counts


def class_weights(items: Sequence[dict], num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights (float32) normalised to average 1 over classes."""
    counts = class_counts(items, num_classes)
    empty = [c for c, n in enumerate(counts) if n == 0]
    if empty:
        raise ValueError(f"classes {empty} have no items; cannot compute class weights")
    inverse = 1.0 / torch.tensor(counts, dtype=torch.float64)
    return (inverse * num_classes / inverse.sum()).float()


def split_summary(datalist: dict) -> dict:
    """Per split: number of items and patients, and item counts per class name; ``skipped_files`` as the builder
    recorded it (files left out for their suffix; 0 for datalists not built from folders)."""
    class_names = datalist["class_names"]
    summary = {}
    for key in SPLITS:
        items = datalist.get(key, [])
        summary[key] = {
            "items": len(items),
            "patients": len({item.get("patient_id", item["image"]) for item in items}),
            "classes": dict(zip(class_names, class_counts(items, len(class_names)))),
        }
    summary["skipped_files"] = datalist.get("skipped_files", 0)
    return summary


def label_budget(items: Sequence[dict], budget: int | None, seed: int = 0, min_items: int = 0) -> list[dict]:
    """The labelled training items of a few-label run: `budget` of `items`, stratified by label (largest-remainder
    shares of the class frequencies, at least one per class), drawn from one seeded permutation per class, so that
    for a given `seed` a smaller budget's items are a subset of a larger one's (a learning curve over nested sets).
    The selection is repeated in order until it holds at least `min_items` entries, so that an epoch of a tiny
    budget is still a few optimiser steps. `budget` None or >= len(items): every item (repeated likewise)."""
    by_label = defaultdict(list)  # label -> indices into items
    for index, item in enumerate(items):
        by_label[item["label"]].append(index)
    if budget is None or budget >= len(items):
        chosen = list(items)
    else:
        if budget < len(by_label):
            raise ValueError(f"label budget {budget} is below the number of classes ({len(by_label)}): "
                             "every class needs at least one labelled item")
        labels = sorted(by_label)
        shares = {label: budget * len(by_label[label]) / len(items) for label in labels}
        counts = {label: max(1, int(shares[label])) for label in labels}
        by_remainder = sorted(labels, key=lambda label: (shares[label] - int(shares[label]), -label), reverse=True)
        for label in by_remainder[:max(0, budget - sum(counts.values()))]:
            counts[label] += 1
        picked = []
        for label in labels:
            order = list(by_label[label])
            random.Random(f"{seed}-{label}").shuffle(order)
            picked += order[:counts[label]]
        chosen = [items[i] for i in sorted(picked)]
    repeats = max(1, -(-min_items // len(chosen))) if chosen else 1
    return chosen * repeats


def joint_label_budget(items: Sequence[dict], domain: str, budget: int | None, replay: int | None, seed: int = 0,
                       min_items: int = 0) -> list[dict]:
    """Few-label joint training: `budget` labelled items of `domain` (`label_budget`, repeated to `min_items`) with
    `replay` items of the other domains (stratified and seeded the same way, once each; None: all of them), so that
    a model adapted to the new domain keeps rehearsing the one it was trained on."""
    target = [item for item in items if item.get("domain") == domain]
    if not target:
        found = sorted({str(item.get("domain")) for item in items})
        raise ValueError(f"no training items of domain {domain!r} (domains found: {found})")
    others = [item for item in items if item.get("domain") != domain]
    return label_budget(target, budget, seed, min_items) + (label_budget(others, replay, seed) if others else [])
