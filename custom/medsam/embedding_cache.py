"""On-disk cache of frozen MedSAM encoder feature maps, so a head trains in seconds per epoch instead of re-encoding.

Stored per image: the (256, 64, 64) image embedding adaptive-average-pooled to (256, m, m), float16, m = map_size
(default 16: 128 KiB of data, about 131 KB per file, 0.13 GB per 1,000 images; m = 8: 32 KiB; the full map would be
2 MiB). An encoder with TinyViT stage features (`custom.medsam.encoders.StageFeatures`) stores all its
``out_channels`` the same way (stages 1 and 2: 736 channels, 368 KiB per image, 0.38 GB per 1,000 images). Trade-off: average pooling is exact (the mean of the m x m grid is the mean of the 64x64 map); max,
attention and convolutional heads see m*m means of patches instead of 4096 positions, so they lose fine
localisation; float16 keeps about 3 significant digits. `custom.medsam.heads.MedSAMClassifier`
(map_size=16) pools the same way, so a head trained on the cache runs unchanged on images.

Layout: ``cache_dir/<key[:2]>/<key>.pt``, one ``torch.save`` file per image holding ``{"key", "embedding",
"sha256", "source"}``, written to a temp file beside it and moved into place with ``os.replace``. An entry counts as
a hit only if it loads (``weights_only``), names its own key and its embedding has the stored sha256; otherwise it is
logged and recomputed. Temp files (``.<key>.pt.*.tmp``) left by an interrupted run are never read; they can be
deleted when no run is writing.

Key: sha256 over the image file's bytes, the encoder variant, the weights fingerprint, the preprocessing (size,
keep_aspect, map_size), the lung step where one crops or masks (its settings and lung UNet sha256) and the cache
format version; changing any of them gives new entries (old ones stay on disk).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.engines.utils import PrepareBatch
from monai.utils import convert_to_tensor
from torch import nn
from tqdm import tqdm

from custom.data.transforms import LoadCXR
from custom.io import atomic_path, file_sha256
from custom.lung.transforms import LungPreprocessd
from custom.medsam.encoders import EMBED_DIM, encoder_preprocess, minmax01, weights_fingerprint
from custom.medsam.heads import POOLED_MAP_SIZE

logger = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass(frozen=True)
class Preprocessing:
    """Image -> cached map: ``encoder_preprocess(image, size, keep_aspect)`` (pixels), encoder, then the
    (256, 64, 64) embedding adaptive-average-pooled to (256, map_size, map_size)."""

    size: int
    keep_aspect: bool
    map_size: int = POOLED_MAP_SIZE


def _tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


class EmbeddingCache:
    """Embeddings of one frozen encoder + preprocessing, cached under `cache_dir`.

    Args:
        cache_dir: folder of the cache (created on the first write); several encoders/preprocessings can share it.
        encoder: a `custom.medsam.encoders` encoder (or any module with ``input_size``, ``variant``, ``keep_aspect`` and
            ``weights_sha256``), (B, 3, S, S) -> (B, C, 64, 64), C = its ``out_channels`` (default 256). Moved to
            `device` and eval mode when computing.
        variant: encoder name in the key; None = ``encoder.variant``.
        preprocess_desc: `Preprocessing` or a mapping of its fields; None = ``encoder.input_size`` and
            ``encoder.keep_aspect`` (the MedSAM pipeline of that encoder), map_size 16.
        lung_step: a `LungPreprocessd` run on each image (min-max scaled to [0, 1]) before ``encoder_preprocess``:
            mode "crop" gives the encoder the lung box, "mask" blanks what lies outside the lungs; None or mode
            "none": no lung step (and the keys of a cache without one).

    Counters (cumulative): ``hits`` / ``misses``: distinct entries found on disk / not found (then computed, or
    failed: unreadable images are retried on every call); ``corrupt``: bad entries found (they count as misses).
    ``failed`` maps each path of the latest `get_or_compute` call that produced no embedding to (stage, reason):
    stage "read", "lung", "encoder_preprocess" or "encoder". ``lung_fallbacks``: the paths that call encoded whole
    because the lung step found an implausible mask (embedded, but without the crop or mask).
    """

    def __init__(self, cache_dir: str | os.PathLike, encoder: nn.Module, variant: str | None = None,
                 preprocess_desc: Preprocessing | Mapping | None = None, lung_step: LungPreprocessd | None = None):
        self.cache_dir = Path(cache_dir)
        self.encoder = encoder
        self.variant = variant or encoder.variant
        if preprocess_desc is None:
            preprocess_desc = Preprocessing(encoder.input_size, encoder.keep_aspect)
        elif isinstance(preprocess_desc, Mapping):
            preprocess_desc = Preprocessing(**preprocess_desc)
        if preprocess_desc.size != encoder.input_size:
            raise ValueError(f"preprocessing size {preprocess_desc.size} != encoder input size {encoder.input_size}")
        self.preprocessing = preprocess_desc
        self.fingerprint = weights_fingerprint(encoder)
        self.lung_step = lung_step if lung_step is not None and lung_step.mode != "none" else None
        key_fields = {"version": CACHE_VERSION, "variant": self.variant, "weights": self.fingerprint,
                      "preprocessing": asdict(preprocess_desc)}
        if self.lung_step is not None:
            key_fields["lung"] = self.lung_step.fingerprint()
        self._key_prefix = json.dumps(key_fields, sort_keys=True).encode()
        self.loader = LoadCXR()
        self.hits = self.misses = self.corrupt = 0
        self.failed: dict[str, tuple[str, str]] = {}
        self.lung_fallbacks: list[str] = []

    @property
    def entry_shape(self) -> tuple[int, int, int]:
        """(channels, m, m): the encoder's ``out_channels`` (256 unless it adds TinyViT stage features), m =
        map_size."""
        channels = getattr(self.encoder, "out_channels", EMBED_DIM)
        return (channels, self.preprocessing.map_size, self.preprocessing.map_size)

    def key(self, path: str | os.PathLike) -> str:
        """Hex sha256 of (encoder variant, weights fingerprint, preprocessing, lung step, format version, the file's
        bytes)."""
        return file_sha256(path, prefix=self._key_prefix + b"\0")

    def entry_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.pt"

    def get(self, path: str | os.PathLike) -> torch.Tensor | None:
        """The cached (256, m, m) float16 map of `path`, or None when absent or corrupt; never computes."""
        return self._read(self.key(path))

    def get_or_compute(self, paths: Sequence[str | os.PathLike], batch_size: int = 8,
                       device: str | torch.device = "cpu", progress: bool = True) -> torch.Tensor:
        """(N, 256, m, m) float16 maps (CPU; m = map_size) of `paths` in order, computing and storing missing ones.

        Unreadable images are skipped, not fatal: N counts the paths that are not in ``self.failed`` afterwards
        (path -> (stage, reason), also logged). Images with the same bytes share one entry and are encoded once.
        """
        self.failed, self.lung_fallbacks = {}, []
        order, found, todo = [], {}, {}  # order: (path, key) of the readable paths, in input order
        for path in map(os.fspath, paths):
            try:
                key = self.key(path)
            except OSError as err:
                self.failed[path] = ("read", f"{path}: cannot read file: {err.strerror or err}")
                continue
            order.append((path, key))
            if key in found or key in todo:
                continue
            embedding = self._read(key)
            if embedding is None:
                todo[key] = path
            else:
                found[key] = embedding
        self.hits += len(found)
        self.misses += len(todo)
        errors = self._compute(todo, found, batch_size, device, progress) if todo else {}
        rows = []
        for path, key in order:
            if key in found:
                rows.append(found[key])
            else:
                self.failed[path] = errors[key]
        for stage, reason in self.failed.values():
            logger.warning("embedding skipped (%s): %s", stage, reason)
        return torch.stack(rows) if rows else torch.empty((0, *self.entry_shape), dtype=torch.float16)

    def _compute(self, todo: dict[str, str], found: dict[str, torch.Tensor], batch_size: int,
                 device: str | torch.device, progress: bool) -> dict[str, tuple[str, str]]:
        """Encodes `todo` (key -> path) in batches into `found` and onto disk; returns key -> (stage, reason) for
        failures."""
        encoder = self.encoder.to(device).eval()
        size, keep_aspect = self.preprocessing.size, self.preprocessing.keep_aspect
        items, errors = list(todo.items()), {}
        with tqdm(total=len(items), desc=f"{self.variant} embeddings", unit="img", disable=not progress) as bar:
            for start in range(0, len(items), batch_size):
                batch, images, ok = items[start:start + batch_size], [], []
                for key, path in batch:
                    stage = "read"
                    try:  # skip this image only; LoadCXR names the file and the cause
                        image = self.loader(path)
                        if self.lung_step is not None:
                            stage = "lung"
                            image = self._lung(image, path)
                        stage = "encoder_preprocess"
                        images.append(encoder_preprocess(image, size, keep_aspect))
                        ok.append((key, path))
                    except Exception as err:
                        errors[key] = (stage, str(err))
                if images:
                    with torch.no_grad():
                        maps = encoder(torch.stack(images).to(device))
                        maps = F.adaptive_avg_pool2d(maps.float(), self.preprocessing.map_size).to("cpu", torch.float16)
                    for (key, path), embedding in zip(ok, maps):
                        if not torch.isfinite(embedding).all():
                            errors[key] = ("encoder", f"{path}: encoder output is not finite")
                            continue
                        found[key] = embedding.clone()  # own storage: torch.save would write the whole batch
                        self._write(key, found[key], path)
                bar.update(len(batch))
        return errors

    def _lung(self, image: torch.Tensor, path: str) -> torch.Tensor:
        """(1, W, H) image in any range -> (1, W, H) in [0, 1] after the lung step (an implausible lung mask leaves
        the image as it is, with the lung step's warning naming `path`)."""
        scaled = minmax01(convert_to_tensor(image, dtype=torch.float32, track_meta=False)[None])
        out, _, statuses = self.lung_step.apply(scaled, [path])
        if statuses[0] == "fallback":
            self.lung_fallbacks.append(path)
        return out[0]

    def _write(self, key: str, embedding: torch.Tensor, source: str) -> None:
        entry = {"key": key, "embedding": embedding, "sha256": _tensor_sha256(embedding), "source": source}
        with atomic_path(self.entry_path(key)) as tmp:
            torch.save(entry, tmp)

    def _read(self, key: str) -> torch.Tensor | None:
        file = self.entry_path(key)
        if not file.is_file():
            return None
        try:
            entry = torch.load(file, map_location="cpu", weights_only=True)
            embedding = entry["embedding"]
            if entry["key"] != key:
                problem = f"entry is for key {entry['key']}"
            elif embedding.dtype != torch.float16 or tuple(embedding.shape) != self.entry_shape:
                problem = f"embedding {embedding.dtype} {tuple(embedding.shape)}, expected float16 {self.entry_shape}"
            elif _tensor_sha256(embedding) != entry["sha256"]:
                problem = "embedding sha256 mismatch"
            else:
                return embedding
        except Exception as err:  # truncated zip, unpickling error, wrong types: all mean "recompute"
            problem = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
        logger.warning("corrupt embedding cache entry %s (%s): treated as missing", file, problem)
        self.corrupt += 1
        return None


def cached_embedding_datalist(items: Sequence[Mapping], cache: EmbeddingCache, image_key: str = "image",
                              batch_size: int = 8, device: str | torch.device = "cpu",
                              progress: bool = True) -> list[dict]:
    """MONAI datalist items -> copies with ``"embedding"``: the (256, m, m) float16 map of ``item[image_key]``.

    Every other field (label, class_name, patient_id, ...) is kept. Items whose image cannot be embedded are dropped
    and logged (``cache.failed`` says why). Train with `EmbeddingClassifier` and
    ``prepare_batch=PrepareEmbeddingBatch()``.
    """
    embeddings = cache.get_or_compute([item[image_key] for item in items], batch_size, device, progress)
    kept = [item for item in items if os.fspath(item[image_key]) not in cache.failed]
    if len(kept) < len(items):
        logger.warning("%d of %d items dropped: no embedding", len(items) - len(kept), len(items))
    return [{**item, "embedding": embedding} for item, embedding in zip(kept, embeddings)]


class PrepareEmbeddingBatch(PrepareBatch):
    """``prepare_batch`` for MONAI's SupervisedTrainer / SupervisedEvaluator (whose default reads ``"image"``):
    returns ``(batch[image_key], batch[label_key])`` on `device`."""

    def __init__(self, image_key: str = "embedding", label_key: str = "label"):
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        return (batchdata[self.image_key].to(device=device, non_blocking=non_blocking, **kwargs),
                batchdata[self.label_key].to(device=device, non_blocking=non_blocking, **kwargs))
