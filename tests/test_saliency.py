"""Saliency (Grad-CAM / CAM) with the shipped ResNet18 and the real LiteMedSAM encoder on real radiographs, the
SaliencyHandler through `configs/saliency.json` on 6 real test images, and t-SNE of real features from two domains."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet121
from monai.transforms import Compose
from PIL import Image

from bundle.deploy.predict import bundle_parser
from custom.data.datalists import build_covid_radiography, kermany_items, write_datalist
from custom.data.transforms import LoadCXR
from custom.evaluation import SaliencyHandler
from custom.evaluation.saliency import Saliency, default_target_layer
from custom.evaluation.tsne import cached_embeddings, domain_separability, plot_tsne, tsne_2d
from custom.medsam.embedding_cache import EmbeddingCache
from custom.medsam.encoders import build_encoder, encoder_preprocess
from custom.medsam.heads import MedSAMClassifier
from custom.models.networks import SmallCNN, TorchvisionClassifier
from custom.models.trained_model import OperatingPoint

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PEDIATRIC = SHARED / "pediatric_cxr"
ADULT = SHARED / "adult_cxr"
TEST = PEDIATRIC / "test"
NORMAL = TEST / "NORMAL" / "IM-0001-0001.jpeg"
PNEUMONIA = TEST / "PNEUMONIA" / "person1_virus_6.jpeg"
MODEL = ROOT / "models" / "model.pt"

pytestmark = [pytest.mark.skipif(not NORMAL.is_file(), reason=f"shared data not found at {SHARED}"),
              pytest.mark.usefixtures("single_thread")]



def _shipped_preprocessing() -> tuple[Compose, int]:
    """configs/inference.json `preprocessing` (what the shipped model sees: lung crop included) and its image side."""
    parser = bundle_parser(ROOT)
    return parser.get_parsed_content("preprocessing"), parser["image_size"][0]


load, SIZE = _shipped_preprocessing()


@pytest.fixture(scope="module")
def checkpoint() -> dict:
    return torch.load(MODEL, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def resnet(checkpoint):
    net = TorchvisionClassifier("resnet18", in_channels=1, num_classes=2)
    net.load_state_dict(checkpoint["model"])
    return net.eval()


@pytest.fixture(scope="module")
def images():
    return torch.stack([load({"image": str(p)})["image"] for p in (NORMAL, PNEUMONIA)])  # (2, 1, SIZE, SIZE)


@pytest.mark.parametrize("method", ["gradcam", "cam"])
def test_shipped_model_saliency_shape_range_and_image_dependence(checkpoint, resnet, images, method):
    with torch.inference_mode():  # as inside an evaluator: the maps must still get gradients
        decided = OperatingPoint.from_checkpoint(checkpoint).decide(resnet(images).softmax(1))
        assert decided.tolist() == [0, 1]  # both images are classified correctly at the shipped threshold
        maps = Saliency(resnet, method)(images, [0, 1])  # each explained for its class, as the handler does
    assert maps.shape == (2, 1, SIZE, SIZE)
    assert not maps.requires_grad and type(maps) is torch.Tensor
    assert maps.min() >= 0 and maps.max() <= 1
    for m in maps:
        assert m.max() == pytest.approx(1.0) and m.std() > 0.05  # min-max scaled, not constant
    assert (maps[0] - maps[1]).abs().mean() > 0.05  # another image, another map


def test_gradcam_explains_the_requested_class(resnet, images):
    saliency = Saliency(resnet)
    normal, pneumonia = saliency(images[1:], 0), saliency(images[1:], 1)
    assert (normal - pneumonia).abs().mean() > 0.05


def test_default_target_layers_per_architecture(images):
    torch.manual_seed(0)
    nets = {"features": SmallCNN(1, 2), "class_layers.relu": DenseNet121(spatial_dims=2, in_channels=1, out_channels=2),
            "net.features": TorchvisionClassifier("vgg16", 1, 2)}
    for layer, net in nets.items():
        net.eval()
        assert default_target_layer(net) == layer
        maps = Saliency(net, "gradcam")(images[:1], 0)
        assert maps.shape == (1, 1, SIZE, SIZE) and 0 <= maps.min() <= maps.max() <= 1
    assert Saliency(nets["features"], "cam", target_layers="features.19").target_layers == "features.19"
    with pytest.raises(ValueError, match="CAM needs a global-pool"):
        Saliency(nets["net.features"], "cam")
    with pytest.raises(ValueError, match="not found"):
        Saliency(nets["features"], target_layers="no_such_layer")
    with pytest.raises(ValueError, match="unknown saliency method"):
        Saliency(nets["features"], "lime")


def _outcome(predicted: str, true: str) -> str:
    return ("T" if predicted == true else "F") + ("P" if predicted == "PNEUMONIA" else "N")


def test_handler_through_evaluate_config_writes_a_map_per_image_and_the_gallery(tmp_path):
    items = kermany_items(PEDIATRIC, "test")
    chosen = [it for it in items if it["label"] == 0][:3] + [it for it in items if it["label"] == 1][:3]
    write_datalist({"class_names": ["NORMAL", "PNEUMONIA"], "training": [], "validation": [], "test": chosen},
                   tmp_path / "datalist.json")
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file",
           "['configs/train.json','configs/evaluate.json','configs/saliency.json']", "--ckpt_path", str(MODEL),
           "--datalist_file", str(tmp_path / "datalist.json"), "--dataset_dir", str(PEDIATRIC),
           "--output_dir", str(out), "--batch_size", "4"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    with open(out / "test_predictions.csv") as f:
        expected = {Path(r["file"]).stem + "_" + _outcome(r["predicted_label"], r["true_label"]) + ".png"
                    for r in csv.DictReader(f)}
    written = {p.name for p in (out / "saliency").glob("*.png")}
    assert len(expected) == 6 and written == expected
    gallery = Image.open(out / "saliency_gallery.png")
    assert gallery.size[0] > 600 and gallery.size[1] > 600
    assert np.asarray(Image.open(sorted((out / "saliency").glob("*.png"))[0]).convert("L")).std() > 10


def test_handler_reports_and_skips_bad_items(resnet, tmp_path):
    handler = SaliencyHandler(str(tmp_path), ["NORMAL", "PNEUMONIA"], OperatingPoint(0.28, "youden"), per_outcome=2)
    engine = SimpleNamespace(network=resnet, state=SimpleNamespace())
    handler._reset()
    good, nan_image = load({"image": str(PNEUMONIA)})["image"], load({"image": str(NORMAL)})["image"]
    unnamed = nan_image.as_tensor()  # a plain tensor: no file name
    engine.state.output = [{"image": good, "pred": torch.tensor([0.4, 0.6]), "label": torch.tensor(1)},
                           {"image": unnamed, "pred": torch.tensor([0.9, 0.1]), "label": torch.tensor(0)},
                           {"image": nan_image, "pred": torch.tensor([float("nan"), 0.5]), "label": torch.tensor(0)},
                           {"image": good, "pred": torch.tensor([0.8, 0.2])}]
    engine.state.batch = [{"image": o["image"]} for o in engine.state.output]
    handler._iteration(engine)
    handler._complete(engine)
    assert [p.name for p in handler.written] == ["person1_virus_6_TP.png"]
    assert len(handler.skipped) == 3
    reasons = " ".join(r for _, r in handler.skipped)
    assert "no file name" in reasons and "not 2 finite probabilities" in reasons and "no label" in reasons
    assert (tmp_path / "saliency" / "person1_virus_6_TP.png").is_file()
    assert (tmp_path / "saliency_gallery.png").is_file()
    assert handler.outcome(0, 1) == "FN" and handler.outcome(1, 0) == "FP" and handler.outcome(0, 0) == "TN"
    assert handler.operating_point.decide(torch.tensor([[0.75, 0.25], [0.7, 0.3]])).tolist() == [0, 1]
    multi = SaliencyHandler(str(tmp_path), ["NORMAL", "BACTERIAL", "VIRAL"])
    assert multi.outcomes == ("correct", "incorrect") and multi.outcome(2, 2) == "correct"


@pytest.fixture(scope="module")
def lite_encoder():
    return build_encoder("lite")


def test_medsam_gradcam_on_the_encoder_feature_map(lite_encoder):
    torch.manual_seed(0)
    model = MedSAMClassifier(lite_encoder, num_classes=2).eval()
    reader = LoadCXR()
    x = torch.stack([encoder_preprocess(reader(str(p)), 256, keep_aspect=True) for p in (NORMAL, PNEUMONIA)])
    saliency = Saliency(model)
    assert saliency.target_layers == "features"
    with torch.no_grad():
        maps = saliency(x, 1)
    assert maps.shape == (2, 1, 256, 256)
    assert maps.min() >= 0 and maps.max() <= 1 and all(m.std() > 0.02 for m in maps)
    assert (maps[0] - maps[1]).abs().mean() > 0.02
    assert all(p.grad is None for p in lite_encoder.parameters())  # no gradients into the frozen encoder
    with pytest.raises(ValueError, match="CAM needs"):
        Saliency(model, "cam")


def test_cached_medsam_embeddings_are_pooled_256d(lite_encoder, tmp_path):
    items = [{"image": str(NORMAL), "class_name": "NORMAL", "domain": "pediatric"},
             {"image": str(tmp_path / "missing.png"), "class_name": "NORMAL", "domain": "pediatric"}]
    cache = EmbeddingCache(tmp_path / "cache", lite_encoder)
    features, kept = cached_embeddings(items, cache)
    assert features.shape == (1, 256) and features.dtype == np.float32 and kept == items[:1]
    assert np.allclose(features[0], cache.get(NORMAL).float().mean((1, 2)).numpy())


def test_tsne_script_on_two_domains(tmp_path):
    spec = importlib.util.spec_from_file_location("tsne_script", ROOT / "scripts" / "tsne.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    kermany = {"class_names": ["NORMAL", "PNEUMONIA"], "training": [], "validation": [],
               "test": kermany_items(PEDIATRIC, "test")}
    write_datalist(kermany, tmp_path / "pediatric.json")
    adult = build_covid_radiography(ADULT, class_map={"NORMAL": "NORMAL", "OTHER_COVID": "PNEUMONIA"})
    write_datalist(adult, tmp_path / "adult.json")
    output = tmp_path / "tsne_cnn.png"
    script.main(output=str(output), datalist=[str(tmp_path / "pediatric.json"), str(tmp_path / "adult.json")],
                max_per_domain=20, source="checkpoint", ckpt_path=str(MODEL), device="cpu",
                results_file=str(tmp_path / "tsne.json"))
    result = json.loads((tmp_path / "tsne.json").read_text())
    assert result["per_domain"] == {"adult": 20, "pediatric": 20} and result["feature_dim"] == 512
    assert 0.5 <= result["domain_classifier_roc_auc"] <= 1.0  # children and adults: far from indistinguishable
    image = np.asarray(Image.open(output).convert("RGB"))
    assert image.shape[1] > 2 * image.shape[0] * 0.8  # two panels side by side
    items = script.gather_items(datalist=[str(tmp_path / "pediatric.json"), str(tmp_path / "adult.json")],
                                max_per_domain=20)
    assert sorted({it["domain"] for it in items}) == ["adult", "pediatric"] and len(items) == 40
    coords = tsne_2d(np.random.default_rng(0).normal(size=(12, 8)))  # perplexity 30 is capped for 12 points
    assert coords.shape == (12, 2) and np.isfinite(coords).all()
    with pytest.raises(ValueError, match="at least 5"):
        tsne_2d(np.zeros((3, 8)))


def test_tsne_panel_titles_wrap_instead_of_overlapping(tmp_path, monkeypatch):
    import custom.evaluation.tsne as tsne

    figures = []
    monkeypatch.setattr(tsne, "save_figure", lambda fig, path: figures.append(fig))
    label = "t-SNE, the joint model fine-tuned on all adult training labels with a pediatric replay, features"
    plot_tsne(np.random.default_rng(0).normal(size=(10, 2)), ["a", "b"] * 5, ["x"] * 5 + ["y"] * 5,
              tmp_path / "t.png", title=label)
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    left, right = (ax.title.get_window_extent(renderer) for ax in fig.axes)
    assert left.x1 < right.x0, "the two panel titles overlap"
    assert "\n" in fig.axes[0].get_title()


def test_domain_separability_tells_separable_from_mixed_domains():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 16))
    domains = ["a"] * 100 + ["b"] * 100
    assert abs(domain_separability(features, domains) - 0.5) < 0.1  # same distribution: chance
    shifted = features + np.r_[np.zeros((100, 16)), np.full((100, 16), 1.0)]
    assert domain_separability(shifted, domains) > 0.95
    with pytest.raises(ValueError, match="exactly two domains"):
        domain_separability(features, ["a"] * 200)
