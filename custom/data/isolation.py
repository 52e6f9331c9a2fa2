"""Per-file isolation for batch runs: an exception anywhere in one item's preprocessing chain becomes a row of
`bad_files.csv` (file, stage, reason) and the other items go on.

`IsolatedDataset` applies the chain transform by transform and returns a failure record for an item that raises;
`IsolatedDataLoader` drops those items from their batch (in the worker), appends them to `bad_files.csv` (in the main
process) and fails at the last batch of a pass in which no item got through; `skip_empty_batch` lets a MONAI
workflow pass over a batch whose items all failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence

from monai.data import DataLoader, Dataset, get_track_meta, list_data_collate, set_track_meta
from monai.transforms import Compose, apply_transform

from custom.data.checks import write_bad_files

logger = logging.getLogger(__name__)

FAILED_KEY = "bad_file"  # an item that failed: {FAILED_KEY: (file, stage, reason)}


class StageError(Exception):
    """One item's chain failed at `stage` (a transform's class name, "read", "inference", ...) because of `reason`."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


def failure_reason(err: BaseException, file: str) -> str:
    """One line: the error type and message, without a leading "<file>: " (the row names the file already)."""
    message = " ".join(str(err).split()).removeprefix(f"{file}: ")
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def apply_stages(transforms: Sequence[Callable], data, file: str):
    """`data` through `transforms` in order (as `monai.transforms.apply_transform`); raises `StageError` naming the
    class of the transform that failed."""
    for transform in transforms:
        try:
            data = apply_transform(transform, data)
        except Exception as err:  # apply_transform wraps the transform's own error in a RuntimeError
            raise StageError(type(transform).__name__, failure_reason(err.__cause__ or err, file)) from err
    return data


@contextlib.contextmanager
def meta_tracking(enabled: bool):
    """MONAI's metadata tracking (`monai.data.set_track_meta`) set to `enabled` inside the block, restored after.
    The setting is global to the process: use it where one thread runs transforms."""
    previous = get_track_meta()
    set_track_meta(enabled)
    try:
        yield
    finally:
        set_track_meta(previous)


class IsolatedDataset(Dataset):
    """`monai.data.Dataset` whose item i is `transform` (a `Compose` is flattened and applied one transform at a
    time) of ``data[i]``, or ``{FAILED_KEY: (file, stage, reason)}`` when a transform raises (file:
    ``data[i][image_key]``).

    ``track_meta=False`` runs the chain with MONAI's metadata tracking off (`meta_tracking`): the same values as plain
    tensors, at about two thirds of the per-image cost, for a chain that needs no metadata but the file name
    (`custom.data.transforms.LoadCXRd` keeps it in ``image_meta_dict`` then; the reports read it with `source_file`).
    """

    def __init__(self, data: Sequence[dict], transform: Callable, image_key: str = "image",
                 track_meta: bool = True) -> None:
        super().__init__(data, transform)
        self.stages = transform.flatten().transforms if isinstance(transform, Compose) else (transform,)
        self.image_key = image_key
        self.track_meta = track_meta

    def _transform(self, index: int):
        item = self.data[index]
        file = str(item.get(self.image_key, ""))
        try:
            with meta_tracking(self.track_meta and get_track_meta()):
                return apply_stages(self.stages, item, file)
        except StageError as err:
            return {FAILED_KEY: (file, err.stage, err.reason)}


def isolated_collate(items: list[dict]) -> tuple[dict | list, list[tuple[str, str, str]]]:
    """(the collated batch of the items that got through, or [] when none did; their failure records)."""
    failures = [item[FAILED_KEY] for item in items if FAILED_KEY in item]
    good = [item for item in items if FAILED_KEY not in item]
    return (list_data_collate(good) if good else []), failures


class IsolatedDataLoader(DataLoader):
    """`monai.data.DataLoader` over an `IsolatedDataset`: yields the batches of the items that got through (an empty
    list for a batch whose items all failed; see `skip_empty_batch`), appends the failed ones to `bad_files_csv`
    (file, stage, reason) as they come, and raises RuntimeError naming that file at the last batch of a pass in which no
    item got through. Other arguments as `DataLoader` (its `collate_fn` is `isolated_collate`)."""

    def __init__(self, dataset: Dataset, bad_files_csv: str | os.PathLike, **kwargs) -> None:
        super().__init__(dataset, collate_fn=isolated_collate, **kwargs)
        self.bad_files_csv = bad_files_csv

    def __iter__(self):
        processed, last = False, len(self) - 1
        for index, (batch, failures) in enumerate(super().__iter__()):
            for file, stage, reason in failures:
                logger.warning("skipping %s (%s): %s", file, stage, reason)
            if failures:
                write_bad_files(self.bad_files_csv, failures, append=True)
            processed = processed or bool(batch)
            if index == last and not processed:  # raised here, not after the loop: ignite stops after len(self) batches
                raise RuntimeError(f"none of the {len(self.dataset)} input file(s) could be processed; "
                                   f"reasons in {self.bad_files_csv}")
            yield batch


def skip_empty_batch(engine, batch):
    """`iteration_update` of a MONAI workflow fed by an `IsolatedDataLoader`: the workflow's own iteration, or no
    outputs ([]) for an empty batch, so that handlers see nothing of it."""
    return engine._iteration(engine, batch) if batch else []
