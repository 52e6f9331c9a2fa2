"""Static int8 classifier (`custom.models.quantization`, `scripts/export.py int8`, inference.json ``--backend openvino
--precision int8``) on real images: what it records, the guard that runs it only with its own checkpoint, and how
close it stays to the float32 network."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from custom.io import file_sha256
from custom.models.inferers import OpenVinoInferer, classifier_inferer
from custom.models.quantization import checked_int8_path, int8_path, int8_record, quantize_static_int8
from custom.models.trained_model import bundle_config, load_bundle
from tests.test_bundle import ROOT, SAMPLE

SHIPPED = ROOT / "models" / "model.pt"


@pytest.fixture(scope="module")
def model():
    return load_bundle(ROOT)


@pytest.fixture(scope="module")
def images(model):
    files = sorted((SAMPLE / "test").rglob("*.jpeg"))
    return torch.stack([model.preprocessing({"image": f})["image"].as_tensor() for f in files])


def test_shipped_int8_model_belongs_to_the_shipped_checkpoint():
    """models/model_int8.onnx was quantised from models/model.pt as it is now, on the training part only: retraining
    the model without rebuilding it (`python scripts/export.py int8`) fails here."""
    path = checked_int8_path(SHIPPED)
    assert path == ROOT / "models" / "model_int8.onnx"
    record = int8_record(path)
    assert record["calibration"]["images"] == 512 and "training part" in record["calibration"]["dataset"]


def test_int8_stays_close_to_float32_and_the_guard_refuses_another_checkpoint(tmp_path, model, images):
    """Quantised on half of the sample's real images, checked on the other half: probabilities within 0.1 of the
    float32 network and really int8 (not identical); the file records its source checkpoint, and once that
    checkpoint changes the file is refused naming both hashes and the rebuild command."""
    ckpt = tmp_path / "model.pt"
    shutil.copy(SHIPPED, ckpt)
    calibration, held_out = images[::2], images[1::2]
    path = quantize_static_int8(model.network, [calibration[:16], calibration[16:]], int8_path(ckpt),
                                {"source_checkpoint": {"file": "model.pt", "sha256": "will be replaced"}})
    assert path == tmp_path / "model_int8.onnx"
    assert int8_record(path)["source_checkpoint"]["sha256"] == "will be replaced"
    with pytest.raises(ValueError, match=r"quantised from a checkpoint with sha256 will be replaced, but .*model\.pt "
                                         r"has sha256 [0-9a-f]{64}: rebuild it with `python scripts/export.py int8`"):
        classifier_inferer("openvino", "int8", "cpu", str(ckpt))
    quantize_static_int8(model.network, [calibration], path,
                         {"source_checkpoint": {"file": "model.pt", "sha256": file_sha256(ckpt)}})
    inferer = classifier_inferer("openvino", "int8", "cpu", str(ckpt))
    assert isinstance(inferer, OpenVinoInferer) and inferer.int8_file == str(path)
    with torch.inference_mode():
        reference = model.network(held_out).softmax(1)
        quantized = inferer(held_out, model.network).softmax(1)
        compiled = inferer.compiled
        inferer(held_out[:3], model.network)
    assert inferer.compiled is compiled, "the int8 file is compiled once"
    difference = (quantized - reference).abs().max()
    assert 0 < difference < 0.1, difference
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")  # another checkpoint now
    with pytest.raises(ValueError, match="rebuild it"):
        checked_int8_path(ckpt)
    (tmp_path / "model_int8.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(ValueError, match="model_int8.onnx: no readable int8 model"):
        checked_int8_path(ckpt)
    (tmp_path / "model_int8.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="no int8 model of"):
        checked_int8_path(ckpt)
    with pytest.raises(ValueError, match="runs on backend 'openvino' only"):
        classifier_inferer("torch", "int8", "cpu", str(ckpt))


def test_bundle_inference_in_int8_predicts_as_float32(tmp_path):
    """`run` of inference.json with ``--backend openvino --precision int8`` (the shipped int8 model) on the sample's
    60 real test images: same files, probabilities within 0.1 of the PyTorch float32 run, at most 2 decisions
    flipped at the shipped threshold."""
    import pandas as pd

    tables = {}
    for name, overrides in (("float32", {}), ("int8", {"backend": "openvino", "precision": "int8"})):
        parser = bundle_config(ROOT, "configs/inference.json", output_dir=str(tmp_path / name),
                               dataset_dir=str(SAMPLE / "test"), **overrides)
        parser.get_parsed_content("initialize")
        parser.get_parsed_content("run")
        tables[name] = pd.read_csv(tmp_path / name / "predictions.csv")
    reference, fast = tables["float32"], tables["int8"]
    assert len(fast) == 60 and list(fast["file"]) == list(reference["file"])
    assert (fast["prob_PNEUMONIA"] - reference["prob_PNEUMONIA"]).abs().max() < 0.1
    assert (fast["predicted_label"] != reference["predicted_label"]).sum() <= 2


def test_export_script_records_checkpoint_and_training_part_calibration(tmp_path):
    """`scripts/export.py int8` on a copy of the shipped checkpoint and 64 calibration images of the real Kermany
    training part: the file beside the copy, its record (checkpoint hash, calibration count and files hash)."""
    ckpt = tmp_path / "model.pt"
    shutil.copy(SHIPPED, ckpt)
    run = subprocess.run([sys.executable, "scripts/export.py", "int8", "--ckpt_path", str(ckpt), "--images", "64",
                          "--dataset_dir", str(ROOT.parent / "shared" / "data" / "pediatric_cxr")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    printed = json.loads(run.stdout.strip().splitlines()[-1])
    assert printed["int8"] == str(tmp_path / "model_int8.onnx")
    record = int8_record(tmp_path / "model_int8.onnx")
    assert record == {k: v for k, v in printed.items() if k != "int8"}
    assert record["calibration"]["images"] == 64 and len(record["calibration"]["files_sha256"]) == 64
    assert checked_int8_path(ckpt) == tmp_path / "model_int8.onnx"
