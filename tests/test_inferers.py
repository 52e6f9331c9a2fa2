import pytest
import torch

from custom.data.transforms import LoadCXR
from custom.models.inferers import (AffineTTAInferer, AutocastInferer, OpenVinoInferer, classifier_inferer,
                                    forward_dtype, native_bf16)
from custom.models.trained_model import bundle_config, load_bundle
from tests.test_bundle import ROOT, SAMPLE


def test_shift_moves_content_by_the_given_fraction():
    image = torch.zeros(1, 1, 32, 32)
    image[0, 0, 10, 8] = 1.0
    moved = AffineTTAInferer.transform(image, dx=0.25, dy=0.0, zoom=1.0)  # x = last axis
    assert moved[0, 0].flatten().argmax().item() == 10 * 32 + 16


def test_zoom_magnifies_about_the_centre():
    image = torch.zeros(1, 1, 32, 32)
    image[0, 0, 8:24, 8:24] = 1.0
    zoomed = AffineTTAInferer.transform(image, 0.0, 0.0, zoom=2.0)
    assert zoomed[0, 0, 2:30, 2:30].min() > 0.99  # the central square now fills the image


def test_tta_logits_are_the_mean_over_views_on_a_real_image():
    image = LoadCXR()(next((SAMPLE / "test" / "NORMAL").glob("*.jpeg")))[None] / 255.0
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5, stride=4), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    inferer = AffineTTAInferer(shift=0.05, zooms=(0.9,))
    with torch.no_grad():
        out = inferer(image, net)
        views = [net(AffineTTAInferer.transform(image, *v)) for v in inferer.views]
    assert len(inferer.views) == 6
    assert out.shape == (1, 2)
    torch.testing.assert_close(out, torch.stack(views).mean(0))
    assert not torch.allclose(out, views[0])


def test_forward_dtype_resolves_precision_and_auto_follows_the_hardware(monkeypatch):
    assert forward_dtype("float32", "cpu") == torch.float32
    assert forward_dtype("bfloat16", "cpu") == torch.bfloat16
    for amx, avx512_bf16, expected in ((True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                       (False, False, torch.float32)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        assert native_bf16("cpu") is (expected == torch.bfloat16)
        assert forward_dtype("auto", "cpu") == expected
    with pytest.raises(ValueError, match="unknown precision 'fp8'.*float32"):
        forward_dtype("fp8", "cpu")


def test_autocast_inferer_float32_is_exact_and_bfloat16_agrees_on_real_images():
    """The shipped model on the sample's real test images, as configs/inference.json preprocesses them: float32 is
    the plain forward bit for bit; bfloat16 returns float32 logits whose probabilities stay within 0.02 of it."""
    model = load_bundle(ROOT)
    files = sorted((SAMPLE / "test").rglob("*.jpeg"))[:16]
    images = torch.stack([model.preprocessing({"image": f})["image"].as_tensor() for f in files])
    with torch.inference_mode():
        plain = model.network(images)
        exact = AutocastInferer(torch.float32)(images, model.network)
        approx = AutocastInferer(torch.bfloat16)(images, model.network)
    assert torch.equal(exact, plain)
    assert approx.dtype == torch.float32 and approx.shape == plain.shape
    assert not torch.equal(approx, plain)  # it did run in bfloat16
    assert (approx.softmax(1) - plain.softmax(1)).abs().max() < 0.02


def test_inference_config_builds_the_inferer_from_backend_and_precision():
    for backend, precision, kind, dtype in (("torch", "float32", AutocastInferer, torch.float32),
                                            ("torch", "bfloat16", AutocastInferer, torch.bfloat16),
                                            ("onnxruntime", "bfloat16", AutocastInferer, torch.float32),
                                            ("openvino", "float32", OpenVinoInferer, torch.float32)):
        parser = bundle_config(ROOT, "configs/inference.json", backend=backend, precision=precision)
        inferer = parser.get_parsed_content("inferer")
        assert isinstance(inferer, kind) and inferer.dtype == dtype, (backend, precision)
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        classifier_inferer("tensorrt", "float32", "cpu")
    with pytest.raises(ValueError, match="'openvino' runs on the CPU"):
        classifier_inferer("openvino", "float32", "cuda")


def test_openvino_inferer_matches_the_pytorch_forward_on_real_images():
    """The shipped model compiled by OpenVINO on the sample's real test images: float32 within 1e-4 of the PyTorch
    logits, at any batch size after compiling on the first (dynamic batch); bfloat16 (where the CPU has it) within 0.02
    in probability and really reduced precision. The network is compiled once and reused."""
    model = load_bundle(ROOT)
    files = sorted((SAMPLE / "test").rglob("*.jpeg"))[:16]
    images = torch.stack([model.preprocessing({"image": f})["image"].as_tensor() for f in files])
    with torch.inference_mode():
        plain = model.network(images)
        inferer = OpenVinoInferer(torch.float32)
        first = inferer(images[:5], model.network)
        compiled = inferer.compiled
        exact = torch.cat([first, inferer(images[5:], model.network)])
    assert inferer.compiled is compiled, "the network must be compiled once"
    model.network.train()
    OpenVinoInferer(torch.float32)(images[:2], model.network)
    assert model.network.training, "compiling must leave the caller's network in its mode"
    with pytest.raises(ValueError, match="one input tensor"):
        inferer(images[:2], model.network, torch.zeros(2))
    assert exact.dtype == torch.float32 and exact.shape == plain.shape
    torch.testing.assert_close(exact, plain, rtol=0, atol=1e-4)
    if not native_bf16("cpu"):
        with pytest.raises(ValueError, match="bfloat16 needs a CPU with AMX"):
            OpenVinoInferer(torch.bfloat16)
        return
    with torch.inference_mode():
        approx = OpenVinoInferer(torch.bfloat16)(images, model.network)
    assert not torch.allclose(approx, plain, rtol=0, atol=1e-4)
    assert (approx.softmax(1) - plain.softmax(1)).abs().max() < 0.02


def test_bundle_inference_with_the_openvino_backend_predicts_as_pytorch(tmp_path):
    """`run` of inference.json with backend openvino (classifier and lung UNet compiled by OpenVINO, float32), lung
    crop on: same probabilities within 1e-5 and the same per-image lung status as the PyTorch backend."""
    import pandas as pd

    files = sorted((SAMPLE / "test").rglob("*.jpeg"))[:24]
    tables = {}
    for backend in ("torch", "openvino"):
        parser = bundle_config(ROOT, "configs/inference.json", output_dir=str(tmp_path / backend), lung_mode="crop",
                               backend=backend, lung_backend=backend, batch_size=10,
                               datalist=[{"image": str(f)} for f in files])
        parser.get_parsed_content("initialize")
        parser.get_parsed_content("run")
        tables[backend] = pd.read_csv(tmp_path / backend / "predictions.csv")
    reference, fast = tables["torch"], tables["openvino"]
    assert len(fast) == 24 and list(fast["file"]) == list(reference["file"])
    assert (fast["lung_crop"] == reference["lung_crop"]).all() and (fast["lung_crop"] == "applied").any()
    assert (fast["prob_PNEUMONIA"] - reference["prob_PNEUMONIA"]).abs().max() < 1e-5
