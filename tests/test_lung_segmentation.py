"""Lung segmentation on the real shared data: the shipped UNet on held-out pairs, `LungPreprocessd` on pediatric
images, the config merge over train.json (one real epoch) and `scripts/lung_masks.py`."""

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.metrics import compute_dice
from monai.transforms import Resize, ScaleIntensity, SpatialCrop
from PIL import Image

from custom.data.transforms import LoadCXR
from custom.lung.segmentation import load_lung_unet, segment_lungs, split_lung_pairs
from custom.lung.transforms import LungPreprocessd, dilate, lung_bbox

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
LUNG_MASKS = SHARED / "lung_masks"
PEDIATRIC = SHARED / "pediatric_cxr"
MODEL = ROOT / "models" / "lung_unet.pt"
FAST_MODEL = ROOT / "models" / "lung_unet_64.pt"  # the same UNet trained on a 64 x 64 px grid

pytestmark = [pytest.mark.skipif(not LUNG_MASKS.is_dir(), reason=f"shared data not found at {SHARED}"),
              pytest.mark.usefixtures("single_thread")]


def pediatric_images(count_per_class: int, split: str = "test") -> list[Path]:
    return [p for c in ("NORMAL", "PNEUMONIA") for p in sorted((PEDIATRIC / split / c).glob("*.jpeg"))[:count_per_class]]


def load_unit(path: Path, size=(224, 224)) -> MetaTensor:
    """A real image as the classifier pipeline sees it: (1, 224, 224) in [0, 1]."""
    return ScaleIntensity(minv=0.0, maxv=1.0)(Resize(size, mode="area")(LoadCXR()(path)))


def test_split_is_seeded_disjoint_and_keeps_figure_panels_together():
    split = split_lung_pairs(LUNG_MASKS, num_holdout=15, seed=0)
    assert split == split_lung_pairs(LUNG_MASKS, num_holdout=15, seed=0)
    train, held = split["training"], split["validation"]
    assert len(train) + len(held) == 77 and len(held) >= 15
    assert not {p["image"] for p in train} & {p["image"] for p in held}
    assert not {p["group"] for p in train} & {p["group"] for p in held}
    panels = [p["group"] for p in train + held if "S0929664620300449" in p["image"]]
    assert len(panels) == 3 and len(set(panels)) == 1, "sub-panels a/b/d of one figure must share a group"


@pytest.mark.parametrize("model, grid", [(MODEL, (128, 128)), (FAST_MODEL, (64, 64))], ids=["128px", "64px"])
def test_shipped_unet_is_small_and_segments_held_out_pairs(model, grid):
    """Both shipped UNets, each run on the grid its checkpoint records (the 128 px file predates the record), segment
    the held-out pairs at their original resolution."""
    assert model.stat().st_size < 10 * 2**20
    net = load_lung_unet(str(model), "cpu")
    assert load_lung_unet(str(model), "cpu") is net, "the UNet must be loaded once and cached"
    assert net.input_size == grid
    loader, scale = LoadCXR(), ScaleIntensity(minv=0.0, maxv=1.0)
    scores = []
    for pair in split_lung_pairs(LUNG_MASKS, num_holdout=15, seed=0)["validation"]:
        truth = loader(pair["label"]) > 127
        pred = segment_lungs(scale(loader(pair["image"])), net)
        assert pred.shape == truth.shape and pred.dtype == torch.bool
        scores.append(float(compute_dice(pred[None].float(), truth[None].float(), include_background=True)))
    assert np.mean(scores) > 0.85, scores


def test_mask_mode_zeroes_everything_outside_the_dilated_lungs():
    transform = LungPreprocessd("image", MODEL, mode="mask", dilation=0.03, mask_key="lung")
    for path in pediatric_images(2):
        image = load_unit(path)
        out = transform({"image": image.clone()})
        lung = out["lung"]
        assert out["image"].shape == image.shape == lung.shape
        assert 0.1 < lung.float().mean() < 0.6, path.name
        inside = dilate(lung, round(0.03 * 224))
        assert torch.all(out["image"][~inside] == 0)
        assert torch.equal(out["image"][inside], image[inside])
        assert (image[~inside] > 0.05).float().mean() > 0.5, "the test image must have content outside the lungs"


def test_crop_mode_crops_to_the_lung_box_and_keeps_the_size():
    transform = LungPreprocessd("image", MODEL, mode="crop", margin=0.05, mask_key="lung")
    for path in pediatric_images(2):
        image = load_unit(path)
        out = transform({"image": image.clone()})
        lung = out["lung"][0]
        start, end = lung_bbox(out["lung"], 0.05)
        rows, cols = torch.nonzero(lung, as_tuple=True)
        assert start[0] <= rows.min() and rows.max() < end[0] and start[1] <= cols.min() and cols.max() < end[1]
        assert (end[0] - start[0]) * (end[1] - start[1]) < 224 * 224, "the box must actually crop"
        expected = Resize((224, 224), mode="area")(SpatialCrop(roi_start=start, roi_end=end)(image))
        assert out["image"].shape == image.shape
        torch.testing.assert_close(out["image"].as_tensor(), expected.as_tensor())


def test_implausible_mask_leaves_image_unchanged_and_warns_with_file_name():
    path = pediatric_images(1)[0]
    image = load_unit(path)
    strict = LungPreprocessd("image", MODEL, mode="crop", min_area=0.9, max_area=1.0)
    with pytest.warns(UserWarning, match=f"{path.name}: implausible lung mask"):
        out = strict({"image": image.clone()})
    assert torch.equal(out["image"], image) and out["lung_crop"] == "fallback"
    untracked = {"image": image.as_tensor()[None], "image_meta_dict": {"filename_or_obj": [str(path)]}}
    with pytest.warns(UserWarning, match=f"{path.name}: implausible lung mask"):  # a collated batch of plain tensors
        assert strict.apply_batch(untracked)["lung_crop"] == ["fallback"]
    assert LungPreprocessd("image", MODEL, mode="crop")({"image": image.clone()})["lung_crop"] == "applied"
    assert LungPreprocessd("image", MODEL, mode="none")({"image": image.clone()})["lung_crop"] == "none"
    with pytest.raises(ValueError, match="mode must be one of"):
        LungPreprocessd("image", MODEL, mode="blur")


@pytest.mark.parametrize("mode", ["mask", "crop", "none"])
def test_train_json_lung_mode_trains_one_epoch(tmp_path, mode):
    from monai.bundle import ConfigParser

    from custom.data.datalists import write_datalist

    items = lambda split, n: [  # noqa: E731
        {"image": str(p), "label": int(p.parent.name == "PNEUMONIA"), "patient_id": p.stem}
        for p in pediatric_images(n, split)
    ]
    write_datalist({"class_names": ["NORMAL", "PNEUMONIA"], "training": items("train", 4),
                    "validation": items("test", 2), "test": []}, tmp_path / "datalist.json")
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.json"))
    parser.update({"bundle_root": str(ROOT), "dataset_dir": str(PEDIATRIC), "datalist_file": str(tmp_path / "datalist.json"),
                   "output_dir": str(tmp_path / "train"), "ckpt_dir": str(tmp_path / "models"), "max_epochs": 1,
                   "batch_size": 4, "image_size": [96, 96], "make_plots": False, "resume": False, "lung_mode": mode,
                   "device": "$torch.device('cpu')"})
    parser.parse()
    names = [type(t).__name__ for t in parser.get_parsed_content("validate#preprocessing").transforms]
    assert names.index("LungPreprocessd") > names.index("ScaleIntensityd")
    assert "LungPreprocessd" in [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("training")
    assert parser.get_parsed_content("train#trainer").state.epoch == 1
    assert (tmp_path / "models" / "model.pt").is_file()
    cached = parser.get_parsed_content("validate#dataset")[0]["image"]
    plain = load_unit(pediatric_images(2)[0], size=(96, 96))
    assert cached.shape == plain.shape == (1, 96, 96)
    if mode == "mask":
        assert (cached == 0).float().mean() > 0.2 > (plain == 0).float().mean(), "mask mode must blank the non-lung area"
    elif mode == "crop":
        assert (cached - plain).abs().mean() > 0.02, "crop mode must zoom in on the lungs"
    else:
        assert torch.allclose(cached.as_tensor(), plain.as_tensor()), "mode none must leave the image as loaded"


def test_training_and_inference_preprocess_alike_and_as_the_shipped_model_was_trained():
    """train.json and inference.json share one default `lung_mode`, the one the shipped model's provenance records,
    and turn a real image into the same tensor."""
    from bundle.deploy.predict import bundle_parser

    shipped = torch.load(ROOT / "models" / "model.pt", map_location="cpu", weights_only=True)["provenance"]["config"]
    pipelines = {}
    for name in ("train", "inference"):
        parser = bundle_parser(ROOT, name)
        assert parser["lung_mode"] == shipped["lung_mode"] and parser["image_size"] == shipped["image_size"], name
        pipelines[name] = parser.get_parsed_content("preprocessing")
    image = str(pediatric_images(1, "test")[0])
    train_image, infer_image = (pipelines[n]({"image": image})["image"] for n in ("train", "inference"))
    assert torch.equal(train_image.as_tensor(), infer_image.as_tensor())


def lung_seg_parser(bundle_root: Path, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train_lung_seg.json"))
    parser.update({"bundle_root": str(bundle_root), "dataset_dir": str(LUNG_MASKS), "device": "$torch.device('cpu')",
                   **overrides})
    return parser


def test_lung_seg_retraining_leaves_the_shipped_unet_and_evaluation_scores_it(tmp_path):
    """`run training` writes its UNet under runs/lung_seg (the shipped models/lung_unet.pt is replaced only when told
    so: `--ckpt_dir models`); `run evaluating` scores the shipped file unless `--lung_model_path` names another."""
    bundle = tmp_path / "bundle"
    (bundle / "models").mkdir(parents=True)
    shipped = bundle / "models" / "lung_unet.pt"
    shutil.copy(MODEL, shipped)
    parser = lung_seg_parser(bundle, max_epochs=1, network_size=[64, 64])
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("training")
    retrained = bundle / "runs" / "lung_seg" / "lung_unet.pt"
    assert retrained.is_file() and shipped.read_bytes() == MODEL.read_bytes()
    checkpoint = torch.load(retrained, weights_only=True)
    assert checkpoint["model"]["grid"].tolist() == [64, 64]  # the grid it was trained on travels with the weights
    assert checkpoint["provenance"]["seed"] == 0 and checkpoint["provenance"]["datalist_sizes"]["validation"] >= 15
    assert load_lung_unet(str(retrained)).input_size == (64, 64)
    assert json.loads((bundle / "runs" / "lung_seg" / "holdout_metrics.json").read_text())["model"] == str(retrained)
    assert lung_seg_parser(bundle, ckpt_dir=str(bundle / "models")).get_parsed_content("ckpt_path") == str(shipped)

    parser = lung_seg_parser(bundle, output_dir=str(tmp_path / "eval"))
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("evaluating")
    metrics = json.loads((tmp_path / "eval" / "holdout_metrics.json").read_text())
    assert metrics["model"] == str(shipped) and metrics["val_mean_dice"] > 0.9  # the shipped UNet, not the 1-epoch one

    # the 64 px UNet is scored on the same 128 px grid, as docs/results records it
    parser = lung_seg_parser(bundle, output_dir=str(tmp_path / "eval64"), lung_model_path=str(FAST_MODEL))
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("evaluating")
    metrics = json.loads((tmp_path / "eval64" / "holdout_metrics.json").read_text())
    recorded = json.loads((ROOT / "docs" / "results" / "lung_seg_holdout_64" / "holdout_metrics.json").read_text())
    assert metrics["val_mean_dice"] == pytest.approx(recorded["val_mean_dice"], abs=1e-4)
    assert metrics["val_mean_dice"] >= 0.93  # the Dice target


def run_script(*args: str) -> None:
    """Runs `scripts/lung_masks.py` in this process (its heavy imports are already loaded)."""
    spec = importlib.util.spec_from_file_location("lung_masks_script", ROOT / "scripts" / "lung_masks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(*args)


def test_script_writes_masks_and_overlay_and_skips_bad_files(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in pediatric_images(1):
        shutil.copy(path, inputs / path.name)
    (inputs / "broken.jpeg").write_bytes(pediatric_images(1)[0].read_bytes()[:300])
    out = tmp_path / "out"
    run_script(str(inputs), str(out), str(MODEL))
    captured = capsys.readouterr()
    assert "broken.jpeg" in captured.err
    assert json.loads(captured.out[captured.out.index("{"):])["masks"] == 2
    with open(out / "bad_files.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "reason"] and len(rows) == 2 and rows[1][0].endswith("broken.jpeg")
    for path in pediatric_images(1):
        mask = np.asarray(Image.open(out / "masks" / f"{path.stem}.png"))
        assert mask.shape == np.asarray(Image.open(path)).shape[:2]
        assert set(np.unique(mask)) == {0, 255} and 0.1 < (mask > 0).mean() < 0.6
    assert (out / "overlay.png").stat().st_size > 5000


def test_postprocess_mask_matches_monai_largest_components_and_fill_holes():
    from monai.transforms import FillHoles, KeepLargestConnectedComponent

    from custom.lung.segmentation import postprocess_mask

    keep, fill = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, num_components=2), FillHoles([1])
    rng = np.random.default_rng(0)
    for density in (0.3, 0.45, 0.6, 0.8):  # many small components and size ties, holes, regions on the border
        for _ in range(25):
            mask = torch.from_numpy(rng.random((1, 24, 20)) < density)
            assert torch.equal(postprocess_mask(mask), fill(keep(mask.to(torch.uint8))).bool()), density


@pytest.mark.parametrize("mode", ["crop", "mask"])
def test_batched_lung_step_equals_the_per_item_transform_on_real_images(mode):
    """`BatchedLungStep` (one UNet forward per batch) gives each item the mask, image and status of the per-item
    transform, on real images at the classifier's size, a fallback included."""
    from monai.data import decollate_batch, list_data_collate
    from monai.transforms import Compose, Lambdad

    from custom.lung.transforms import STATUS_KEY, BatchedLungStep

    paths = pediatric_images(6)
    items = [{"image": load_unit(p, size=(128, 128))} for p in paths]
    areas = [float(LungPreprocessd("image", MODEL, mask_key="lung")(dict(it))["lung"].float().mean()) for it in items]
    smallest, second = sorted(range(len(areas)), key=areas.__getitem__)[:2]
    assert areas[smallest] < areas[second]
    lung = LungPreprocessd("image", MODEL, mode=mode, mask_key="lung", min_area=(areas[smallest] + areas[second]) / 2)
    step = BatchedLungStep(Compose([Lambdad("image", lambda x: x), lung]))
    assert step.steps == [lung] and len(step.item_transform.transforms) == 1
    with pytest.warns(UserWarning, match="implausible lung mask"):
        expected = [lung(dict(it)) for it in items]
    batch = list_data_collate([step.item_transform(dict(it)) for it in items])
    with pytest.warns(UserWarning, match=f"{paths[smallest].name}: implausible lung mask"):
        image, _ = step(batch)
    assert image.shape == (12, 1, 128, 128)
    got = decollate_batch(batch)
    statuses = ["fallback" if i == smallest else "applied" for i in range(len(items))]
    assert [g[STATUS_KEY] for g in got] == [e[STATUS_KEY] for e in expected] == statuses
    for g, e in zip(got, expected):
        assert torch.equal(g["lung"], e["lung"])
        torch.testing.assert_close(g["image"].as_tensor(), e["image"].as_tensor(), rtol=0, atol=1e-6)
        assert g["image"].meta["filename_or_obj"] == e["image"].meta["filename_or_obj"]
    changed = [not torch.equal(g["image"].as_tensor(), it["image"].as_tensor()) for g, it in zip(got, items)]
    assert changed == [i != smallest for i in range(len(items))], "applied items change, the fallback does not"


def test_openvino_unet_gives_the_pytorch_masks_on_real_images():
    """The lung step with the UNet compiled by OpenVINO: float32 gives the PyTorch masks (a pixel may flip where a
    logit sits at the threshold: float32 sums in another order), crops and statuses on real pediatric images; bf16
    (where the CPU has it) masks overlap them at Dice >= 0.98; an unknown backend is refused."""
    from custom.models.inferers import native_bf16

    images = torch.stack([load_unit(p, size=(128, 128)) for p in pediatric_images(6)])
    names = [f"image{i}" for i in range(len(images))]
    reference = LungPreprocessd("image", MODEL, mode="crop").apply(images, names)
    fast = LungPreprocessd("image", MODEL, mode="crop", backend="openvino").apply(images, names)
    assert (fast[1] != reference[1]).float().mean() < 1e-3 and fast[2] == reference[2]
    torch.testing.assert_close(fast[0], reference[0], rtol=0, atol=1e-6)
    small = LungPreprocessd("image", FAST_MODEL, mode="crop")
    small_fast = LungPreprocessd("image", FAST_MODEL, mode="crop", backend="openvino")
    assert small_fast.unet().input_size == (64, 64)  # compiled for the grid its checkpoint records
    assert (small_fast.apply(images, names)[1] != small.apply(images, names)[1]).float().mean() < 1e-3
    if native_bf16("cpu"):
        _, masks, _ = LungPreprocessd("image", MODEL, mode="crop", backend="openvino-bf16").apply(images, names)
        assert compute_dice(masks.float(), reference[1].float()).min() >= 0.98
    with pytest.raises(ValueError, match="backend must be one of"):
        LungPreprocessd("image", MODEL, backend="tensorrt")


def test_batched_lung_step_leaves_a_chain_whose_lung_step_is_not_last_per_item():
    from monai.transforms import Compose, Lambdad

    from custom.lung.transforms import BatchedLungStep

    chain = Compose([LungPreprocessd("image", MODEL, mode="crop"), Lambdad("image", lambda x: x)])
    step = BatchedLungStep(chain)
    assert step.item_transform is chain and step.steps == []


def test_bundle_inference_batched_lung_step_predicts_as_the_per_item_chain(tmp_path):
    """`run` of inference.json with lung_mode crop: the batched lung step (and channels-last classifier) against the
    per-item chain with the NCHW classifier; same probabilities within 1e-5 and the same per-image lung status."""
    import pandas as pd

    from bundle.deploy.predict import bundle_parser

    files = pediatric_images(20)
    per_item = {"dataset#transform": "@preprocessing", "evaluator#prepare_batch": "$monai.engines.default_prepare_batch",
                "network": "$@network_def.to(@device)"}
    tables = {}
    for name, overrides in (("batched", {}), ("per_item", per_item)):
        parser = bundle_parser(ROOT, "inference")
        parser.update({"dataset_dir": str(PEDIATRIC / "test"), "output_dir": str(tmp_path / name), "lung_mode": "crop",
                       "device": "$torch.device('cpu')", "batch_size": 16, "num_workers": 0,
                       "datalist": [{"image": str(f)} for f in files], **overrides})
        parser.get_parsed_content("initialize")
        parser.get_parsed_content("run")
        tables[name] = pd.read_csv(tmp_path / name / "predictions.csv")
    batched, reference = tables["batched"], tables["per_item"]
    assert len(batched) == 40 and list(batched["file"]) == list(reference["file"])
    assert (batched["lung_crop"] == reference["lung_crop"]).all()
    assert (batched["lung_crop"] == "applied").all()
    probs = [c for c in batched.columns if c.startswith("prob")]
    assert probs and np.abs(batched[probs].to_numpy() - reference[probs].to_numpy()).max() < 1e-5
