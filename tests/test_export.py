"""ONNX / TorchScript export and the ONNX Runtime paths, on real Kermany test images: the shipped CNN (ORT and
TorchScript vs eager probabilities, the inference config with the ORT backend end to end) and the LiteMedSAM
encoder (ORT fp32 exact vs eager; OpenVINO bf16 and int8, approximate, kept apart in the embedding cache)."""

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser

from custom.data.transforms import LoadCXR
from custom.medsam.embedding_cache import EmbeddingCache
from custom.medsam.encoders import build_encoder, encoder_preprocess
from custom.models.export import OnnxModule, export_onnx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TEST = SHARED / "pediatric_cxr" / "test"
IMAGES = [TEST / "NORMAL" / "IM-0001-0001.jpeg", TEST / "NORMAL" / "IM-0003-0001.jpeg",
          TEST / "PNEUMONIA" / "person100_bacteria_475.jpeg", TEST / "PNEUMONIA" / "person100_bacteria_477.jpeg"]

pytestmark = pytest.mark.skipif(not IMAGES[0].is_file(), reason=f"shared data not found at {SHARED}")


def bundle(*args: str) -> None:
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """(eager shipped CNN, its ONNX file, (4, 1, 224, 224) real preprocessed images)."""
    parser = ConfigParser()
    parser.read_config(ROOT / "configs" / "inference.json")
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(ROOT / "models" / "model.pt", map_location="cpu", weights_only=False)["model"])
    preprocessing = parser.get_parsed_content("preprocessing")
    x = torch.stack([preprocessing({"image": str(p)})["image"].as_tensor() for p in IMAGES])
    path = export_onnx(net, tmp_path_factory.mktemp("onnx") / "model.onnx", [1, *x.shape[1:]])
    return net, path, x


def test_onnx_runtime_matches_eager_cnn_with_dynamic_batch(cnn):
    net, path, x = cnn
    onnx = OnnxModule(path, threads=1)
    assert onnx.fixed_batch is None  # exported at batch 1, runs any batch
    with torch.inference_mode():
        eager = net(x).softmax(1)
    assert (onnx(x).softmax(1) - eager).abs().max() < 1e-4
    assert (onnx(x[:1]).softmax(1) - eager[:1]).abs().max() < 1e-4
    streams = OnnxModule(path, threads=2, streams=2)  # a dynamic batch is split across the two sessions
    assert torch.allclose(streams(x), onnx(x), atol=1e-5) and torch.allclose(streams(x[:3]), onnx(x[:3]), atol=1e-5)
    with pytest.raises(ValueError, match="streams must be >= 1"):
        OnnxModule(path, streams=0)
    assert not list(path.parent.glob(".*.tmp"))  # written atomically, no temp file left


def test_onnx_module_bad_input_names_the_file(cnn, tmp_path):
    _, path, x = cnn
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxModule(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="broken.onnx"):
        OnnxModule(broken)
    with pytest.raises(ValueError, match=r"model.onnx expects input shape"):
        OnnxModule(path, threads=1)(x[:, :, :100])


def test_torchscript_ckpt_export_matches_eager(cnn, tmp_path):
    net, _, x = cnn
    bundle("ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"), "--ckpt_file", "models/model.pt",
           "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json", "--key_in_ckpt", "model")
    scripted = torch.jit.load(str(tmp_path / "model.ts"), map_location="cpu").eval()
    with torch.inference_mode():
        assert (scripted(x).softmax(1) - net(x).softmax(1)).abs().max() < 1e-5


def read_predictions(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {Path(row["file"]).name: row for row in csv.DictReader(f)}


def test_inference_config_onnxruntime_backend_writes_same_predictions(cnn, tmp_path):
    _, path, _ = cnn
    images = tmp_path / "images"
    images.mkdir()
    for p in IMAGES:
        shutil.copy(p, images / p.name)
    (images / "notes.txt").write_text("not an image")
    common = ["run", "--config_file", "configs/inference.json", "--dataset_dir", str(images), "--batch_size", "2"]
    bundle(*common, "--output_dir", str(tmp_path / "torch"), "--precision", "float32")  # exact eager, as ORT
    bundle(*common, "--output_dir", str(tmp_path / "ort"), "--backend", "onnxruntime", "--onnx_path", str(path))
    eager, ort = (read_predictions(tmp_path / d / "predictions.csv") for d in ("torch", "ort"))
    assert sorted(eager) == sorted(ort) == sorted(p.name for p in IMAGES)
    for name in eager:
        assert eager[name]["predicted_label"] == ort[name]["predicted_label"]
        assert abs(float(eager[name]["prob_PNEUMONIA"]) - float(ort[name]["prob_PNEUMONIA"])) < 1e-4
    assert "notes.txt" in (tmp_path / "ort" / "bad_files.csv").read_text()


@pytest.fixture(scope="module")
def lite_inputs():
    eager = build_encoder("lite")
    load = LoadCXR()
    x = torch.stack([encoder_preprocess(load(p), eager.input_size, eager.keep_aspect) for p in IMAGES[1:3]])
    return eager, x


def test_onnxruntime_litemedsam_is_exact_and_shares_cache_keys(lite_inputs, tmp_path):
    eager, x = lite_inputs
    fast = build_encoder("lite", backend="onnxruntime", onnx_path=tmp_path / "lite.onnx")
    with torch.inference_mode():
        reference, out = eager(x), fast(x)
    assert out.shape == reference.shape == (2, 256, 64, 64)
    assert F.cosine_similarity(reference.flatten(1), out.flatten(1)).min() >= 0.999
    assert (fast.variant, fast.weights_sha256) == (eager.variant, eager.weights_sha256)
    assert EmbeddingCache(tmp_path, fast).key(IMAGES[1]) == EmbeddingCache(tmp_path, eager).key(IMAGES[1])
    with pytest.raises(ValueError, match=r"expects \(B, 3, 256, 256\)"):
        fast(x[:, :, :128])


def test_onnxruntime_litemedsam_streams_keep_order_and_values(lite_inputs, tmp_path):
    """Two concurrent 1-thread sessions give the single session's embeddings, in input order (odd batch of 3)."""
    _, x = lite_inputs
    path = tmp_path / "lite.onnx"
    single = build_encoder("lite", backend="onnxruntime", onnx_path=path)
    double = build_encoder("lite", backend="onnxruntime", onnx_path=path, streams=2)
    assert len(double.net.sessions) == 2
    batch = torch.cat([x, x[:1]])
    with torch.inference_mode():
        reference, out = single(batch), double(batch)
    assert torch.allclose(out, reference, atol=1e-5)
    assert torch.allclose(out[2], out[0], atol=1e-5) and not torch.allclose(out[1], out[0], atol=1e-2)
    with pytest.raises(ValueError, match="needs an onnxruntime or openvino backend"):
        build_encoder("lite", backend="torch", streams=2)


def test_openvino_litemedsam_f32_is_exact_and_shares_cache_keys(lite_inputs, tmp_path):
    """OpenVINO float32 from the same ONNX export: eager's embeddings (cosine >= 0.999) and cache entries; two
    concurrent requests keep the input order."""
    eager, x = lite_inputs
    fast = build_encoder("lite", backend="openvino", onnx_path=tmp_path / "lite.onnx", streams=2)
    batch = torch.cat([x, x[:1]])
    with torch.inference_mode():
        reference, out = eager(batch), fast(batch)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    assert F.cosine_similarity(reference.flatten(1), out.flatten(1)).min() >= 0.999
    assert fast.variant == eager.variant
    assert EmbeddingCache(tmp_path, fast).key(IMAGES[1]) == EmbeddingCache(tmp_path, eager).key(IMAGES[1])
    with pytest.raises(ValueError, match=r"expects \(B, 3, 256, 256\)"):
        fast(x[:, :, :128])


def test_openvino_bf16_is_approximate_with_its_own_cache_keys_or_falls_back(lite_inputs, tmp_path, caplog):
    """Where the CPU has native bf16: variant lite+ov-bf16, close to eager but not equal; elsewhere float32 with the
    eager variant and a warning."""
    from custom.models.export import openvino_supports_bf16

    eager, x = lite_inputs
    bf16 = build_encoder("lite", backend="openvino-bf16", onnx_path=tmp_path / "lite.onnx")
    with torch.inference_mode():
        cosine = F.cosine_similarity(eager(x).flatten(1), bf16(x).flatten(1))
    if openvino_supports_bf16():
        assert bf16.variant == "lite+ov-bf16" and bf16.net.precision == "bf16"
        assert EmbeddingCache(tmp_path, bf16).key(IMAGES[1]) != EmbeddingCache(tmp_path, eager).key(IMAGES[1])
        assert 0.99 < cosine.min().item() and cosine.max().item() < 1.0 - 1e-6
    else:
        assert bf16.variant == "lite" and bf16.net.precision == "f32" and "no native bfloat16" in caplog.text
        assert cosine.min().item() >= 0.999


def test_openvino_int8_litemedsam_is_close_keyed_by_its_calibration_and_built_once(lite_inputs, tmp_path, caplog):
    """Static int8 matrix products calibrated on 6 real training images (an unreadable file in the folder is skipped
    with a warning): close to eager, cache entries apart from eager's and from another calibration's, and the
    quantised model is built once and then reused."""
    eager, x = lite_inputs
    train = SHARED / "pediatric_cxr" / "train"
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for path in sorted((train / "NORMAL").iterdir())[:3] + sorted((train / "PNEUMONIA").iterdir())[:3]:
        shutil.copy(path, calibration / path.name)
    (calibration / "broken.jpeg").write_bytes(b"not a radiograph")
    onnx = tmp_path / "lite.onnx"
    int8 = build_encoder("lite", backend="openvino-int8", onnx_path=onnx, calibration_dir=calibration)
    assert "broken.jpeg" in caplog.text and "skipped" in caplog.text
    assert re.fullmatch(r"lite\+ov-int8(-bf16)?-[0-9a-f]{12}", int8.variant)
    assert int8.weights_sha256 == eager.weights_sha256
    built = sorted(tmp_path.glob("lite-ov-int8-*.xml"))
    assert len(built) == 1 and built[0].with_suffix(".bin").is_file()
    with torch.inference_mode():
        cosine = F.cosine_similarity(eager(x).flatten(1), int8(x).flatten(1))
    assert 0.97 < cosine.min().item() and cosine.max().item() < 1.0 - 1e-6  # close, not exact
    assert EmbeddingCache(tmp_path, int8).key(IMAGES[1]) != EmbeddingCache(tmp_path, eager).key(IMAGES[1])

    modified = built[0].stat().st_mtime_ns
    again = build_encoder("lite", backend="openvino-int8", onnx_path=onnx, calibration_dir=calibration)
    assert again.variant == int8.variant and built[0].stat().st_mtime_ns == modified  # reused, not recalibrated

    next(calibration.glob("IM-*")).unlink()
    other = build_encoder("lite", backend="openvino-int8", onnx_path=onnx, calibration_dir=calibration)
    assert other.variant != int8.variant and len(list(tmp_path.glob("lite-ov-int8-*.xml"))) == 2
    with pytest.raises(ValueError, match="needs calibration_dir"):
        build_encoder("lite", backend="openvino-int8")
    with pytest.raises(FileNotFoundError, match="calibration folder not found"):
        build_encoder("lite", backend="openvino-int8", onnx_path=onnx, calibration_dir=tmp_path / "missing")


def test_int8_litemedsam_is_approximate_with_its_own_cache_keys(lite_inputs, tmp_path):
    eager, x = lite_inputs
    int8 = build_encoder("lite", backend="onnxruntime-int8", onnx_path=tmp_path / "lite-int8.onnx")
    assert int8.variant == "lite+ort-int8"
    assert EmbeddingCache(tmp_path, int8).key(IMAGES[1]) != EmbeddingCache(tmp_path, eager).key(IMAGES[1])
    with torch.inference_mode():
        cosine = F.cosine_similarity(eager(x[:1]).flatten(1), int8(x[:1]).flatten(1))
    assert 0.5 < cosine.item() < 1.0  # close but not exact
    with pytest.raises(ValueError, match="unknown encoder backend"):
        build_encoder("lite", backend="tensorrt")


def test_bf16_autocast_litemedsam_is_close_with_its_own_cache_keys(lite_inputs, tmp_path):
    eager, x = lite_inputs
    bf16 = build_encoder("lite", backend="torch-bf16")
    assert bf16.variant == "lite+bf16" and bf16.weights_sha256 == eager.weights_sha256
    assert EmbeddingCache(tmp_path, bf16).key(IMAGES[1]) != EmbeddingCache(tmp_path, eager).key(IMAGES[1])
    with torch.inference_mode():
        reference, out = eager(x), bf16(x)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    cosine = F.cosine_similarity(reference.flatten(1), out.flatten(1))
    assert 0.95 < cosine.min().item() and cosine.max().item() < 1.0 - 1e-7  # close, computed in bf16
