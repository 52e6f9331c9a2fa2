"""Two-domain data: the deduplicated adult split and the checks a pediatric + adult datalist must pass.

Duplicates are found by content (sha256 of the file bytes) and by a perceptual hash: the 16x16 lowest DCT
frequencies of the 32x32 grey image, each bit set when above the block's median (DC excluded), 256 bits. Two images
are near-duplicates when their hashes differ in at most ``NEAR_DUPLICATE_BITS`` bits.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy.fft import dctn
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from custom.data.datalists import (
    LABEL_SCHEMES,
    SPLITS,
    build_covid_radiography,
    kermany_items,
    split_summary,
    three_way_split,
)
from custom.io import file_sha256

KNOWN_DOMAINS = ("pediatric", "adult")
ADULT_CLASS_MAP = {"NORMAL": "NORMAL", "OTHER_COVID": "PNEUMONIA"}  # COVID-19 counts as pneumonia-positive
HASH_SIZE = 16
NEAR_DUPLICATE_BITS = 40  # the usual 10-of-64-bit pHash cut, scaled to 256 bits


class ImageHash(NamedTuple):
    sha256: str
    phash: np.ndarray  # bool, HASH_SIZE ** 2 bits


def perceptual_hash(path: str | os.PathLike) -> np.ndarray:
    """256-bit DCT hash of the decoded grey image (see the module docstring)."""
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L").resize((2 * HASH_SIZE, 2 * HASH_SIZE), Image.Resampling.BILINEAR),
                          dtype=np.float64)
    block = dctn(grey, norm="ortho")[:HASH_SIZE, :HASH_SIZE].ravel()
    return block > np.median(block[1:])


def hash_images(paths: Sequence[str], cache: dict[str, ImageHash] | None = None) -> dict[str, ImageHash]:
    """sha256 and perceptual hash per path; entries already in ``cache`` are reused, new ones are added to it."""
    cache = {} if cache is None else cache
    for path in paths:
        if path not in cache:
            cache[path] = ImageHash(file_sha256(path), perceptual_hash(path))
    return {path: cache[path] for path in paths}


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between the rows of two boolean hash arrays."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    return np.rint(a @ (1 - b).T + (1 - a) @ b.T).astype(np.int32)


def _pair(a: str, b: str, bits: int, base: str) -> dict:
    return {"a": os.path.relpath(a, base), "b": os.path.relpath(b, base), "bits": int(bits)}


def _closest(distances: np.ndarray, max_bits: int) -> tuple[int, int] | None:
    """Index of the smallest distance above ``max_bits`` (the margin to the threshold), None if there is none."""
    above = np.where(distances > max_bits, distances, np.iinfo(np.int32).max)
    index = np.unravel_index(np.argmin(above), above.shape)
    return None if above[index] == np.iinfo(np.int32).max else index


def build_adult_split(root: str | os.PathLike, pediatric_root: str | os.PathLike, val_fraction: float = 0.2,
                      test_fraction: float = 0.2, seed: int = 0, max_bits: int = NEAR_DUPLICATE_BITS,
                      class_map: dict[str, str] | None = None,
                      hash_cache: dict[str, ImageHash] | None = None) -> tuple[dict, dict]:
    """Deduplicated adult training / validation / test datalist and a report of what was found.

    1. Byte-identical adult files: the first by path is kept, the others dropped.
    2. Adult images within ``max_bits`` of any pediatric image (``train``/``val``/``test``) are dropped: they would
       be pediatric images labelled adult and could leak into the pediatric splits.
    3. Adult near-duplicates are grouped (connected pairs within ``max_bits``); a group shares the ``patient_id``
       of its first member, so the patient-aware split keeps it in one part.
    4. Seeded split stratified by class, test carved first (default 60/20/20). Items carry ``domain: "adult"`` and
       the binary labels (0 NORMAL, 1 PNEUMONIA).
    """
    scanned = build_covid_radiography(root, class_map=ADULT_CLASS_MAP if class_map is None else class_map,
                                      val_fraction=0, test_fraction=0, seed=seed, domain="adult")
    adult = scanned["training"]
    pediatric = [item for split in ("train", "val", "test") for item in kermany_items(pediatric_root, split)]
    if not pediatric:
        raise ValueError(f"{pediatric_root}: no pediatric images in train/val/test to compare against")
    hashes = hash_images([item["image"] for item in adult + pediatric], hash_cache)
    base = os.path.commonpath([os.path.abspath(root), os.path.abspath(pediatric_root)])

    first_by_sha, byte_identical = {}, defaultdict(list)
    for item in adult:
        kept = first_by_sha.setdefault(hashes[item["image"]].sha256, item["image"])
        if kept != item["image"]:
            byte_identical[kept].append(item["image"])
    unique = [item for item in adult if first_by_sha[hashes[item["image"]].sha256] == item["image"]]

    adult_bits = np.array([hashes[item["image"]].phash for item in unique])
    pediatric_bits = np.array([hashes[item["image"]].phash for item in pediatric])
    cross = hamming(adult_bits, pediatric_bits)
    cross_pairs = [_pair(unique[i]["image"], pediatric[j]["image"], cross[i, j], base)
                   for i, j in np.argwhere(cross <= max_bits)]
    margin = _closest(cross, max_bits)
    closest_cross = None if margin is None else _pair(unique[margin[0]]["image"], pediatric[margin[1]]["image"],
                                                      cross[margin], base)
    clean = ~(cross <= max_bits).any(axis=1)
    unique, adult_bits = [item for item, ok in zip(unique, clean) if ok], adult_bits[clean]

    within = hamming(adult_bits, adult_bits)
    np.fill_diagonal(within, np.iinfo(np.int32).max)
    rows, cols = np.nonzero(np.triu(within <= max_bits, 1))
    _, component = connected_components(coo_matrix((np.ones(len(rows)), (rows, cols)), shape=within.shape),
                                        directed=False)
    members = defaultdict(list)
    for index, group in enumerate(component):
        members[group].append(index)
    groups = [indices for indices in members.values() if len(indices) > 1]
    items = [dict(item) for item in unique]
    for indices in groups:
        for index in indices[1:]:
            items[index]["patient_id"] = items[indices[0]]["patient_id"]
    margin = _closest(within, max_bits)
    closest_within = None if margin is None else _pair(items[margin[0]]["image"], items[margin[1]]["image"],
                                                       within[margin], base)

    datalist = {**three_way_split(items, LABEL_SCHEMES["binary"], val_fraction, test_fraction, seed),
                "skipped_files": scanned["skipped_files"]}
    report = {
        "perceptual_hash": f"{HASH_SIZE}x{HASH_SIZE} lowest DCT frequencies of the {2 * HASH_SIZE}x"
                           f"{2 * HASH_SIZE} grey image vs their median ({HASH_SIZE ** 2} bits)",
        "near_duplicate_max_bits": max_bits,
        "seed": seed,
        "fractions": {"training": round(1 - val_fraction - test_fraction, 6), "validation": val_fraction,
                      "test": test_fraction},
        "paths": "relative to the common parent folder of the adult and pediatric roots",
        "adult_images": len(adult),
        "pediatric_images": len(pediatric),
        "byte_identical_adult": [{"kept": os.path.relpath(kept, base),
                                  "dropped": [os.path.relpath(p, base) for p in dropped]}
                                 for kept, dropped in byte_identical.items()],
        "cross_domain_near_duplicates": cross_pairs,
        "closest_cross_domain_pair": closest_cross,
        "adult_near_duplicates": [_pair(items[i]["image"], items[j]["image"], within[i, j], base)
                                  for i, j in zip(rows, cols)],
        "adult_near_duplicate_groups": [[os.path.relpath(items[i]["image"], base) for i in indices]
                                        for indices in groups],
        "mixed_label_groups": sum(len({items[i]["label"] for i in indices}) > 1 for indices in groups),
        "closest_adult_pair_not_grouped": closest_within,
        "split": split_summary(datalist),
    }
    return datalist, report


def combine_datalists(datalists: Sequence[dict]) -> dict:
    """One datalist holding every part of each input, in input order; all inputs must share ``class_names``."""
    names = [list(datalist["class_names"]) for datalist in datalists]
    if any(n != names[0] for n in names):
        raise ValueError(f"cannot combine datalists with different class_names: {names}")
    return {**{split: [item for datalist in datalists for item in datalist.get(split) or []] for split in SPLITS},
            "class_names": names[0]}


def check_domains(datalist: dict, source: str | os.PathLike, required: Sequence[str] = KNOWN_DOMAINS) -> dict:
    """Raise one ValueError naming ``source`` and every problem before training starts: an item's ``domain`` not in
    ``KNOWN_DOMAINS``, a non-empty part that lacks a ``required`` domain, or a domain with one class only in a part.
    Returns the datalist unchanged (usable inline in a config expression)."""
    problems = []
    for split in SPLITS:
        labels = defaultdict(set)
        for item in datalist.get(split) or []:
            labels[item.get("domain")].add(item["label"])
        if not labels:
            continue
        found = sorted(map(str, labels))
        unknown = [d for d in found if d not in KNOWN_DOMAINS]
        if unknown:
            problems.append(f"'{split}' has unknown domain names {unknown} (known: {list(KNOWN_DOMAINS)})")
        missing = [d for d in required if d not in labels]
        if missing:
            problems.append(f"'{split}' has domain(s) {found} only, {list(required)} required (missing {missing})")
        single = [str(d) for d, classes in labels.items() if len(classes) < 2]
        if single:
            problems.append(f"'{split}': domain(s) {sorted(single)} hold one class only")
    if problems:
        raise ValueError(f"{source}: datalist not usable: " + "; ".join(problems))
    return datalist


def check_eval_domains(datalist: dict, split: str, source: str | os.PathLike) -> dict:
    """Before a per-domain evaluation of part ``split``: when it holds more than one ``domain`` value,
    `check_domains` on that part alone (no domain required), so an unknown name or a one-class domain stops the run;
    a single-domain part (any name, or none) passes. Returns the datalist unchanged."""
    items = datalist.get(split) or []
    if len({item.get("domain") for item in items}) > 1:
        check_domains({split: items}, source, required=())
    return datalist


def domain_items(datalist: Mapping, split: str, domain: str, labelled: bool = True) -> list[dict]:
    """The items of ``datalist[split]`` whose ``domain`` is `domain`; ``labelled=False`` keeps ``image`` only (what
    unsupervised adaptation may read of a target domain). Raises ValueError naming the domains found when none is
    `domain`, before training starts."""
    items = [item for item in datalist.get(split) or [] if item.get("domain") == domain]
    if not items:
        found = sorted({str(item.get("domain")) for item in datalist.get(split) or []})
        raise ValueError(f"no '{split}' items of domain {domain!r} in the datalist (its '{split}' domains: {found}; "
                         f"pass a pediatric + adult datalist with a 'domain' field per item)")
    return items if labelled else [{"image": item["image"]} for item in items]
