"""Tests for custom.medsam.embedding_cache with the real LiteMedSAM encoder on real radiographs.

Few images go through the encoder in this file: 3 when the module's cache is filled, 1 when an interrupted write
is recovered, 2 lung-cropped ones, 1 with stage features and 2 by `scripts/embed.py`'s defaults (OpenVINO). Every
other test works on copies of that cache or only looks entries up.
"""

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.handlers import from_engine
from monai.transforms import Compose
from torch import nn

from custom.medsam.embedding_cache import (
    EmbeddingCache,
    PrepareEmbeddingBatch,
    Preprocessing,
    _tensor_sha256,
    cached_embedding_datalist,
)
from custom.lung.transforms import LungPreprocessd
from custom.medsam.encoders import build_encoder, encoder_input_transforms, parse_feature_stages
from custom.medsam.heads import EmbeddingClassifier

ROOT = Path(__file__).resolve().parents[1]
LUNG_UNET = ROOT / "models" / "lung_unet.pt"
SHARED = ROOT.parent / "shared" / "data"
HIRES = SHARED / "pediatric_cxr_hires512" / "train"
NORMAL_1 = HIRES / "NORMAL" / "IM-0117-0001.jpeg"
NORMAL_2 = HIRES / "NORMAL" / "IM-0129-0001.jpeg"
PNEUMONIA = HIRES / "PNEUMONIA" / "person1004_bacteria_2935.jpeg"
GOOD = [NORMAL_1, PNEUMONIA, NORMAL_2]

pytestmark = pytest.mark.skipif(not NORMAL_1.is_file(), reason=f"shared data not found at {SHARED}")


class CountingEncoder(nn.Module):
    """A real encoder that counts the images it encodes, keeps its outputs and can claim other weights."""

    def __init__(self, encoder: nn.Module, weights_sha256: str | None = None):
        super().__init__()
        self.encoder = encoder
        self.variant, self.input_size, self.keep_aspect = encoder.variant, encoder.input_size, encoder.keep_aspect
        self.weights_sha256 = weights_sha256 or encoder.weights_sha256
        self.images = 0
        self.outputs = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        self.outputs.append(self.encoder(x))
        return self.outputs[-1]


@pytest.fixture(scope="module")
def lite():
    return build_encoder("lite")


@pytest.fixture(scope="module")
def filled(lite, tmp_path_factory):
    """A cache filled from 3 good radiographs mixed with an empty, a missing and a non-image file."""
    tmp = tmp_path_factory.mktemp("embeddings")
    empty, garbage, missing = tmp / "empty.jpeg", tmp / "garbage.jpeg", tmp / "missing.jpeg"
    empty.write_bytes(b"")
    garbage.write_text("not an image\n" * 50)
    paths = [NORMAL_1, empty, PNEUMONIA, missing, NORMAL_2, garbage]
    encoder = CountingEncoder(lite)
    cache = EmbeddingCache(tmp / "cache", encoder)
    maps = cache.get_or_compute(paths, batch_size=2, progress=False)
    return SimpleNamespace(dir=tmp / "cache", cache=cache, encoder=encoder, maps=maps, failed=dict(cache.failed),
                           bad={"empty": empty, "garbage": garbage, "missing": missing})


def copy_cache(filled, tmp_path: Path) -> Path:
    return Path(shutil.copytree(filled.dir, tmp_path / "cache"))


def test_miss_then_hit(filled, lite):
    assert filled.maps.shape == (3, 256, 16, 16) and filled.maps.dtype == torch.float16
    assert (filled.cache.hits, filled.cache.misses, filled.encoder.images) == (0, 5, 3)  # 2 misses fail to read
    entries = sorted(filled.dir.glob("*/*.pt"))
    assert len(entries) == 3 and all(e.stat().st_size < 140_000 for e in entries)  # 128 KiB of float16 + header

    again = CountingEncoder(lite)  # a new cache object on the same folder: hits come from disk
    cache = EmbeddingCache(filled.dir, again)
    maps = cache.get_or_compute(GOOD + [filled.bad["empty"]], progress=False)
    assert again.images == 0
    assert (cache.hits, cache.misses, cache.corrupt) == (3, 1, 0)  # the empty file is never cached
    assert torch.equal(maps, filled.maps)
    assert list(cache.failed) == [str(filled.bad["empty"])]


def test_entries_are_the_pooled_encoder_output(filled):
    full = torch.cat(filled.encoder.outputs)  # (3, 256, 64, 64), in input order
    assert full.shape == (3, 256, 64, 64)
    expected = F.adaptive_avg_pool2d(full, 16).half()
    assert torch.equal(filled.maps, expected)
    key = filled.cache.key(PNEUMONIA)
    assert filled.cache.entry_path(key) == filled.dir / key[:2] / f"{key}.pt"
    assert torch.equal(filled.cache.get(PNEUMONIA), expected[1])
    # average pooling of the cached 16x16 map equals that of the full 64x64 map (up to float16)
    assert torch.allclose(filled.maps.float().mean((2, 3)), full.mean((2, 3)), atol=2e-3)


def test_bad_images_are_reported_and_skipped(filled):
    failed = filled.failed
    assert set(failed) == {str(p) for p in filled.bad.values()}
    assert {stage for stage, _ in failed.values()} == {"read"}
    assert "empty file" in failed[str(filled.bad["empty"])][1]
    assert "No such file" in failed[str(filled.bad["missing"])][1]
    assert "cannot read image" in failed[str(filled.bad["garbage"])][1]
    assert all(filled.cache.get(p) is not None for p in GOOD)


def test_key_changes_with_weights_preprocessing_and_content(filled, lite, tmp_path):
    base = EmbeddingCache(filled.dir, CountingEncoder(lite))
    other_weights = EmbeddingCache(filled.dir, CountingEncoder(lite, weights_sha256="0" * 64))
    plain_resize = EmbeddingCache(filled.dir, CountingEncoder(lite), preprocess_desc=dict(size=256, keep_aspect=False))
    finer_map = EmbeddingCache(filled.dir, CountingEncoder(lite), preprocess_desc=Preprocessing(256, True, map_size=4))
    other_variant = EmbeddingCache(filled.dir, CountingEncoder(lite), variant="lite-finetuned")
    keys = {c.key(NORMAL_1) for c in (base, other_weights, plain_resize, finer_map, other_variant)}
    assert len(keys) == 5
    assert base.get(NORMAL_1) is not None
    for cache in (other_weights, plain_resize, finer_map, other_variant):
        assert cache.get(NORMAL_1) is None  # a miss: get_or_compute would encode it again
    assert base.key(NORMAL_1) == base.key(str(NORMAL_1))
    changed = tmp_path / NORMAL_1.name
    changed.write_bytes(NORMAL_1.read_bytes() + b"\0")
    assert base.key(changed) != base.key(NORMAL_1)
    with pytest.raises(ValueError, match="preprocessing size 1024"):
        EmbeddingCache(filled.dir, lite, preprocess_desc={"size": 1024, "keep_aspect": False})


def test_lung_cropped_entries_are_keyed_apart_and_match_the_image_chain(filled, lite, tmp_path):
    """A cropping (or masking) lung step gets keys of its own, per setting and UNet; mode "none" keeps the plain keys.
    A cropped entry is the pooled encoder output of the chain the MedSAM image configs run with the same step
    (`encoder_input_transforms(..., lung_step=...)`), and differs from the uncropped one."""
    crop = LungPreprocessd("image", LUNG_UNET, mode="crop")
    steps = {"none": LungPreprocessd("image", LUNG_UNET, mode="none"), "crop": crop,
             "mask": LungPreprocessd("image", LUNG_UNET, mode="mask"),
             "wider": LungPreprocessd("image", LUNG_UNET, mode="crop", margin=0.1),
             "other_unet": LungPreprocessd("image", ROOT / "models" / "lung_unet_64.pt", mode="crop")}
    base = EmbeddingCache(filled.dir, CountingEncoder(lite))
    keys = {name: EmbeddingCache(filled.dir, CountingEncoder(lite), lung_step=step).key(NORMAL_1)
            for name, step in steps.items()}
    assert keys.pop("none") == base.key(NORMAL_1)
    assert len({base.key(NORMAL_1), *keys.values()}) == 5

    encoder = CountingEncoder(lite)
    cropped = EmbeddingCache(tmp_path, encoder, lung_step=crop)
    maps = cropped.get_or_compute([NORMAL_1, PNEUMONIA], progress=False)
    assert encoder.images == 2 and not cropped.failed
    chain = Compose(encoder_input_transforms(lite.input_size, lite.keep_aspect, lung_step=crop))
    inputs = torch.stack([chain({"image": str(p)})["image"] for p in (NORMAL_1, PNEUMONIA)])
    with torch.no_grad():
        live = F.adaptive_avg_pool2d(lite(inputs), 16)
    assert (maps.float() - live).abs().max() < 1e-2  # float16 storage
    assert (maps.float() - filled.maps[:2].float()).abs().max() > 0.1  # the encoder saw other pixels
    assert cropped.lung_fallbacks == []

    strict = EmbeddingCache(tmp_path, CountingEncoder(lite), lung_step=LungPreprocessd(
        "image", LUNG_UNET, mode="crop", min_area=0.9, max_area=0.95))  # no real lung mask is that large: falls back
    with pytest.warns(UserWarning, match="implausible lung mask"):
        whole = strict.get_or_compute([NORMAL_1], progress=False)
    assert strict.lung_fallbacks == [str(NORMAL_1)] and not strict.failed
    assert (whole.float() - filled.maps[:1].float()).abs().max() < 1e-2  # encoded whole, as without the lung step


def test_frozen_config_keys_the_cache_on_the_encoder_keep_aspect_and_lung_overrides(tmp_path):
    """`--encoder_keep_aspect False` (plain resize) and `--lung_mode crop` reach the embedding cache: other
    preprocessing, other keys."""
    from monai.bundle import ConfigParser

    caches = {}
    for name, override in {"default": {}, "plain_resize": {"encoder_keep_aspect": False},
                           "lung_crop": {"lung_mode": "crop"}}.items():
        parser = ConfigParser()
        parser.read_config([str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "train_medsam_frozen.json")])
        parser.update({"bundle_root": str(ROOT), "cache_dir": str(tmp_path), **override})
        caches[name] = parser.get_parsed_content("embedding_cache")
    assert caches["default"].preprocessing.keep_aspect is True  # LiteMedSAM's own pipeline pads
    assert caches["plain_resize"].preprocessing.keep_aspect is False
    assert caches["default"].lung_step is None and caches["lung_crop"].lung_step.mode == "crop"
    assert len({c.key(NORMAL_1) for c in caches.values()}) == 3


@pytest.mark.parametrize("value, stages", [("1,2", [1, 2]), ((1, 2), [1, 2]), (1, [1]), ("[1,2]", [1, 2]),
                                           ("", []), ("[]", [])])
def test_command_line_feature_stages_parse_as_fire_hands_them_over(value, stages):
    """`scripts/embed.py --feature_stages` / `scripts/benchmark_export.py --feature_stages`: fire gives a tuple for
    "1,2", an int for "1" and the text otherwise."""
    assert parse_feature_stages(value) == stages


def test_stage_feature_entries_hold_every_channel_and_are_keyed_apart(filled, lite, tmp_path):
    """An encoder with TinyViT stage features stores (736, 16, 16) entries under keys of its own, whose first 256
    channels are the plain entry; an entry of the other channel count is never read as one of these."""
    staged = build_encoder("lite", feature_stages=[1, 2])
    cache = EmbeddingCache(filled.dir, staged)
    assert cache.entry_shape == (736, 16, 16) and cache.key(NORMAL_1) != filled.cache.key(NORMAL_1)
    folder = copy_cache(filled, tmp_path)
    cache = EmbeddingCache(folder, staged)
    maps = cache.get_or_compute([NORMAL_1], progress=False)
    assert maps.shape == (1, 736, 16, 16) and cache.misses == 1
    assert torch.equal(maps[:, :256], filled.maps[:1])
    plain_entry = EmbeddingCache(folder, lite).entry_path(filled.cache.key(NORMAL_1))
    staged_entry = cache.entry_path(cache.key(PNEUMONIA))
    staged_entry.parent.mkdir(exist_ok=True)  # a 256-channel entry naming a staged key
    torch.save({**torch.load(plain_entry, weights_only=True), "key": cache.key(PNEUMONIA)}, staged_entry)
    assert cache.get(PNEUMONIA) is None and cache.corrupt == 1


def test_frozen_config_wires_stage_features_into_the_cache_the_head_and_trained_with(tmp_path):
    """`--encoder_feature_stages [1,2]` reaches the encoder, the cache's entry shape and the head's input channels, and
    a head trained with it is refused by a config without it (both values named)."""
    from monai.bundle import ConfigParser

    from custom.models.trained_model import check_trained_with

    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "train_medsam_frozen.json")])
    parser.update({"bundle_root": str(ROOT), "cache_dir": str(tmp_path), "encoder_backend": "torch", "encoder_streams": 1,
                   "encoder_feature_stages": [1, 2]})
    assert parser.get_parsed_content("embedding_cache").entry_shape == (736, 16, 16)
    head = parser.get_parsed_content("network_def")
    assert head.pooling.conv[0].in_channels == 736
    trained = {"model": head.state_dict(), "provenance": {"config": parser.get_parsed_content("trained_with")}}
    with pytest.raises(ValueError, match=r"encoder_feature_stages = \[1, 2\], but this config has encoder_feature_stages = \[\]"):
        check_trained_with(trained, {"map_size": 16, "encoder_variant": "lite", "encoder_feature_stages": [],
                                     "lung_mode": "none"})


def test_recovers_from_an_interrupted_write(filled, lite, tmp_path):
    folder = copy_cache(filled, tmp_path)
    encoder = CountingEncoder(lite)
    cache = EmbeddingCache(folder, encoder)
    entry = cache.entry_path(cache.key(NORMAL_1))
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 2])  # a half-written entry (a write that bypassed the temp file)
    stray = entry.parent / f".{entry.name}.k3j2x9.tmp"  # what atomic_path leaves when killed mid-write
    stray.write_bytes(data[:1000])

    maps = cache.get_or_compute(GOOD, progress=False)
    assert encoder.images == 1  # only the truncated entry is recomputed
    assert (cache.hits, cache.misses, cache.corrupt) == (2, 1, 1)
    assert torch.equal(maps, filled.maps)
    assert entry.read_bytes() != data[: len(data) // 2] and torch.equal(cache.get(NORMAL_1), filled.maps[0])
    assert stray.exists() and not any(p.suffix == ".tmp" and p != stray for p in folder.rglob("*"))

    other = cache.entry_path(cache.key(PNEUMONIA))  # an entry whose tensor no longer matches its checksum
    entry_dict = torch.load(other, weights_only=True)
    torch.save({**entry_dict, "embedding": torch.zeros_like(entry_dict["embedding"])}, other)
    assert cache.get(PNEUMONIA) is None and cache.corrupt == 2
    torch.save({**entry_dict, "key": "0" * 64}, other)  # an entry stored under the wrong name
    assert cache.get(PNEUMONIA) is None and cache.corrupt == 3
    assert _tensor_sha256(filled.maps[1].clone()) == entry_dict["sha256"]


def test_supervised_trainer_learns_from_the_cache(filled, lite):
    items = [{"image": str(NORMAL_1), "label": 0, "class_name": "NORMAL"},
             {"image": str(PNEUMONIA), "label": 1, "class_name": "PNEUMONIA"},
             {"image": str(filled.bad["garbage"]), "label": 1, "class_name": "PNEUMONIA"},
             {"image": str(NORMAL_2), "label": 0, "class_name": "NORMAL"}]
    encoder = CountingEncoder(lite)
    data = cached_embedding_datalist(items, EmbeddingCache(filled.dir, encoder), progress=False)
    assert encoder.images == 0
    assert [d["label"] for d in data] == [0, 1, 0]
    assert [d["class_name"] for d in data] == ["NORMAL", "PNEUMONIA", "NORMAL"]
    assert all(d["embedding"].shape == (256, 16, 16) for d in data)

    torch.manual_seed(0)
    network = EmbeddingClassifier("attention", num_classes=2)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=40,
        train_data_loader=DataLoader(Dataset(data), batch_size=3, shuffle=False),
        network=network, optimizer=torch.optim.Adam(network.parameters(), lr=1e-2),
        loss_function=nn.CrossEntropyLoss(), prepare_batch=PrepareEmbeddingBatch("embedding", "label"),
    )
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda engine: losses.append(from_engine(["loss"], first=True)(engine.state.output)))
    trainer.run()
    assert len(losses) == 40
    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():
        predicted = network(torch.stack([d["embedding"] for d in data])).argmax(1)
    assert predicted.tolist() == [0, 1, 0]


def embed_script():
    """scripts/embed.py loaded as a module (its `main` is called in-process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("embed_script", ROOT / "scripts" / "embed.py")
    embed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(embed)
    return embed


def test_embed_script_lists_bad_files_and_fails_only_when_nothing_was_embedded(filled, tmp_path, capsys):
    """scripts/embed.py on the module's cache (the good images are hits: no encoding here)."""
    import csv
    import json

    embed = embed_script()
    cache_dir = copy_cache(filled, tmp_path)
    items = [{"image": str(p), "label": 0} for p in [NORMAL_1, filled.bad["garbage"], PNEUMONIA]]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": items}))
    plain_torch = {"backend": "torch", "streams": 1, "feature_stages": ""}  # the module cache's encoder
    embed.main(str(tmp_path / "datalist.json"), cache_dir=str(cache_dir), splits="training", progress=False,
               **plain_torch)
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["training"]["hits"] == 2 and summary["splits"]["training"]["failed"] == 1
    with open(cache_dir / "bad_files.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["file"], r["stage"]) for r in rows] == [(str(filled.bad["garbage"]), "read")]
    assert "cannot read image" in rows[0]["reason"]

    (tmp_path / "bad.json").write_text(json.dumps({"training": [items[1]]}))
    with pytest.raises(RuntimeError, match=f"none of the 1 image.*reasons in {tmp_path / 'bad.csv'}"):
        embed.main(str(tmp_path / "bad.json"), cache_dir=str(cache_dir), splits="training", progress=False,
                   bad_files=str(tmp_path / "bad.csv"), **plain_torch)


def test_embed_script_defaults_fill_the_entries_the_frozen_config_trains_on(tmp_path, capsys):
    """scripts/embed.py with no encoder flag embeds with train_medsam_frozen.json's encoder, stages, map size and lung
    step, so training with that config finds every entry on disk (no encoding)."""
    import json

    from custom.models.trained_model import bundle_config

    embed = embed_script()
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": str(NORMAL_1), "label": 0},
                                                                     {"image": str(PNEUMONIA), "label": 1}]}))
    embed.main(str(tmp_path / "datalist.json"), cache_dir=str(tmp_path / "cache"), splits="training", progress=False)
    summary = json.loads(capsys.readouterr().out)
    parser = bundle_config(ROOT, ["configs/train.json", "configs/train_medsam_frozen.json"],
                           cache_dir=str(tmp_path / "cache"))
    assert summary["backend"] == parser["encoder_backend"] == "openvino-bf16"
    assert summary["feature_stages"] == parser["encoder_feature_stages"] == [1, 2]
    assert summary["splits"]["training"]["misses"] == 2
    cache = parser.get_parsed_content("embedding_cache")
    maps = cache.get_or_compute([NORMAL_1, PNEUMONIA], progress=False)
    assert (cache.hits, cache.misses) == (2, 0) and maps.shape == (2, 736, 16, 16)
