"""Up-front input checks: every image of a datalist is decoded once before a run, so a bad file is reported by
name before training starts, and batch inference can skip bad files and list them."""

from __future__ import annotations

import csv
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from custom.data.transforms import LoadCXR
from custom.io import atomic_path

logger = logging.getLogger(__name__)


def find_unreadable(items: list[dict], image_key: str = "image", workers: int = 4) -> list[tuple[str, str]]:
    """(path, reason) for every item whose image cannot be decoded or whose label is missing/invalid."""
    loader = LoadCXR()

    def check(item: dict) -> tuple[str, str] | None:
        path = str(item.get(image_key, ""))
        try:
            loader(path)
        except Exception as err:  # LoadCXR's message already names the file
            return path, str(err).removeprefix(f"{path}: ")
        return None

    with ThreadPoolExecutor(workers) as pool:
        return [bad for bad in pool.map(check, items) if bad is not None]


def invalid_labels(items: list[dict], num_classes: int) -> list[tuple[str, str]]:
    """(path, reason) for every item whose "label" is not a class index in 0..num_classes - 1."""
    return [(str(it.get("image")), f"label {it.get('label')!r} not in 0..{num_classes - 1}")
            for it in items if not (isinstance(it.get("label"), int) and 0 <= it["label"] < num_classes)]


def _raise_if_any(problems: list[tuple[str, str]]) -> None:
    if problems:
        listed = "\n".join(f"  {path}: {reason}" for path, reason in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{len(problems)} bad input(s) in the datalist:\n{listed}{more}")


def require_labels(datalist: dict, splits=("test",), num_classes: int = 2) -> None:
    """Raise one ValueError listing every invalid label of `splits` (evaluation: unreadable images are skipped and
    listed in bad_files.csv instead, see `partition_readable`)."""
    _raise_if_any([bad for split in splits for bad in invalid_labels(datalist.get(split, []), num_classes)])


def require_readable(datalist: dict, splits=("training", "validation"), num_classes: int | None = None) -> None:
    """Raise one ValueError listing every unreadable image (and invalid label) of `splits` of a datalist."""
    problems = []
    for split in splits:
        items = datalist.get(split, [])
        if num_classes is not None:
            problems += invalid_labels(items, num_classes)
        problems += find_unreadable(items)
    _raise_if_any(problems)
    logger.info("checked %d images: all readable", sum(len(datalist.get(s, [])) for s in splits))


def inference_items(input_path: str, datalist_key: str = "test") -> list[dict]:
    """Items to predict: every regular, non-hidden file below a folder (non-images are reported as bad later),
    a single image file, or the `datalist_key` split of a datalist JSON."""
    path = Path(input_path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        return [{"image": str(p)} for p in files]
    if path.suffix.lower() == ".json":
        from custom.data.datalists import load_datalist

        return [{"image": it["image"]} for it in load_datalist(path)[datalist_key]]
    if path.is_file():
        return [{"image": str(path)}]
    raise FileNotFoundError(f"{path}: input not found (give a folder, an image file or a datalist JSON)")


def write_bad_files(bad_files_csv: str | os.PathLike, rows: list[tuple[str, str, str]], append: bool = False) -> None:
    """Writes (or, with `append`, extends) `bad_files_csv`: columns file, stage (where the file's chain failed: "read"
    or a transform's class name), reason; atomically, so a reader never sees half a file."""
    old = []
    if append and os.path.exists(bad_files_csv):
        with open(bad_files_csv, newline="") as f:
            old = [tuple(row) for row in csv.reader(f)][1:]
    with atomic_path(bad_files_csv) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "stage", "reason"])
        writer.writerows(old + list(rows))


def partition_readable(items: list[dict], bad_files_csv: str | os.PathLike) -> list[dict]:
    """The readable items; the unreadable ones are written to `bad_files_csv` (file, stage "read", reason) and logged.
    Raises RuntimeError if none is readable, so the run exits non-zero."""
    bad = find_unreadable(items)
    write_bad_files(bad_files_csv, [(path, "read", reason) for path, reason in bad])
    for path, reason in bad:
        logger.warning("skipping %s: %s", path, reason)
    bad_paths = {path for path, _ in bad}
    good = [it for it in items if str(it["image"]) not in bad_paths]
    if not good:
        raise RuntimeError(f"none of the {len(items)} input file(s) could be read; reasons in {bad_files_csv}")
    logger.info("%d readable, %d skipped (listed in %s)", len(good), len(bad), bad_files_csv)
    return good
