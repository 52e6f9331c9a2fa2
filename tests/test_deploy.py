"""Deployment: the contract `MonaiBundleInferenceOperator` relies on, the SDK-free DICOM -> JSON + SR path on the
real DICOMs, and (where `monai-deploy-app-sdk` is installed) the MONAI Deploy application itself."""

import csv
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ckpt_export

from bundle.deploy.predict import (
    REQUIRED_IDS,
    BundlePredictor,
    bundle_parser,
    in_memory_preprocessing,
    load_network,
    predict,
)
from bundle.deploy.result import BASIC_TEXT_SR, read_operating_point
from custom.data.transforms import LoadCXR, LoadCXRd
from custom.io import file_sha256
from custom.models.export import export_torchscript, torchscript_source

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DICOMS = SHARED / "dicom_cxr"
JPEG = sorted((SHARED / "pediatric_cxr" / "test" / "PNEUMONIA").glob("*.jpeg"))[0]


@pytest.fixture(scope="module")
def parser():
    return bundle_parser(ROOT)


def test_inference_config_has_the_ids_the_operator_reads(parser):
    for key in REQUIRED_IDS:
        assert key in parser, key
    pred = parser["_meta_"]["network_data_format"]["outputs"]["pred"]
    assert pred["type"] == "probabilities" and pred["channel_def"] == {"0": "NORMAL", "1": "PNEUMONIA"}
    names = [type(t).__name__ for t in parser.get_parsed_content("preprocessing").transforms]
    assert names[0] == "LoadCXRd"  # not matched by the SDK's LoadImage/SaveImage filter: the app removes it itself


@pytest.mark.parametrize("path", [DICOMS / "RG1_UNCI.dcm", JPEG], ids=["dicom", "jpeg"])
def test_preprocessing_without_loader_on_in_memory_image(parser, path):
    from_file = parser.get_parsed_content("preprocessing")({"image": str(path)})["image"]
    memory = in_memory_preprocessing(parser)
    assert not [t for t in memory.transforms if isinstance(t, LoadCXRd)]
    in_memory = memory({"image": torch.as_tensor(LoadCXR()(path).numpy())})["image"]  # plain tensor, no metadata
    assert tuple(in_memory.shape) == (1, *parser["image_size"]) and in_memory.dtype == torch.float32
    np.testing.assert_allclose(np.asarray(in_memory), np.asarray(from_file), atol=1e-6)


def test_network_from_torchscript_equals_network_def_plus_checkpoint(parser, tmp_path, caplog):
    ts_bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "configs", ts_bundle / "configs")
    (ts_bundle / "models").mkdir()
    # what `python -m monai.bundle ckpt_export network_def ... --key_in_ckpt model` runs
    ckpt_export(net_id="network_def", filepath=str(ts_bundle / "models" / "model.ts"), ckpt_file=str(ROOT / "models" / "model.pt"),
                meta_file=str(ROOT / "configs" / "metadata.json"), config_file=str(ROOT / "configs" / "inference.json"),
                key_in_ckpt="model")
    device = torch.device("cpu")
    scripted = load_network(ts_bundle, bundle_parser(ts_bundle), device)
    eager = load_network(ROOT, parser, device)
    assert isinstance(scripted, torch.jit.ScriptModule) and not isinstance(eager, torch.jit.ScriptModule)
    x = in_memory_preprocessing(parser)({"image": LoadCXR()(JPEG)})["image"][None]
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), atol=1e-4, rtol=1e-4)
    # the decision threshold travels only in model.pt; a TorchScript-only bundle falls back to 0.5
    checkpoint = torch.load(ROOT / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert read_operating_point(ROOT).state_dict() == checkpoint["operating_point"]
    assert read_operating_point(ts_bundle).state_dict() == {"threshold": 0.5, "method": "default", "positive_index": 1}
    # plain ckpt_export records no source checkpoint: beside a model.pt, that model.ts cannot be trusted
    shutil.copy(ROOT / "models" / "model.pt", ts_bundle / "models" / "model.pt")
    with caplog.at_level(logging.WARNING, logger="custom.models.export"):
        network = load_network(ts_bundle, bundle_parser(ts_bundle), device)
    assert not isinstance(network, torch.jit.ScriptModule)
    assert f"{ts_bundle / 'models' / 'model.ts'} has no source-checkpoint record" in caplog.text
    assert str(ts_bundle / "models" / "model.pt") in caplog.text


def test_torchscript_is_used_only_while_it_matches_model_pt(tmp_path, caplog):
    """`export_torchscript` records the sha256 of model.pt in model.ts: used while model.pt is unchanged; once model.pt
    holds other weights, the stale model.ts is passed over with a warning naming both files."""
    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    ts, pt = bundle / "models" / "model.ts", bundle / "models" / "model.pt"
    shutil.copy(ROOT / "models" / "model.pt", pt)
    assert export_torchscript(bundle) == ts
    assert torchscript_source(ts) == {"file": "model.pt", "sha256": file_sha256(pt)}
    device = torch.device("cpu")
    assert isinstance(load_network(bundle, bundle_parser(bundle), device), torch.jit.ScriptModule)

    checkpoint = torch.load(pt, map_location="cpu", weights_only=True)
    name = next(k for k, v in checkpoint["model"].items() if v.is_floating_point())
    checkpoint["model"][name] += 1.0  # retrained weights: new model.pt bytes, model.ts left as it was
    torch.save(checkpoint, pt)
    with caplog.at_level(logging.WARNING, logger="custom.models.export"):
        network = load_network(bundle, bundle_parser(bundle), device)
    assert not isinstance(network, torch.jit.ScriptModule)
    torch.testing.assert_close(network.state_dict()[name], checkpoint["model"][name])
    assert f"{ts} was exported from a checkpoint with sha256 {file_sha256(ROOT / 'models' / 'model.pt')}" in caplog.text
    assert f"{pt} now has sha256 {file_sha256(pt)}" in caplog.text


def test_predict_dicom_writes_json_and_readable_sr(tmp_path):
    results = predict(str(DICOMS), output_dir=str(tmp_path), device="cpu")
    assert len(results) == 2
    jpeg2000, uncompressed = results  # sorted by name: RG1_J2KI, RG1_UNCI
    for name, p in uncompressed["probabilities"].items():  # same pixels, lossless JPEG 2000 vs uncompressed
        assert jpeg2000["probabilities"][name] == pytest.approx(p, abs=1e-4)
    result = json.loads((tmp_path / "RG1_UNCI" / "result.json").read_text())
    assert result == uncompressed
    probs = result["probabilities"]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    positive = probs["PNEUMONIA"] >= result["threshold"]
    assert result["predicted_class"] == ("PNEUMONIA" if positive else "NORMAL")

    source = pydicom.dcmread(DICOMS / "RG1_UNCI.dcm", stop_before_pixels=True)
    sr = pydicom.dcmread(tmp_path / "RG1_UNCI" / "result_sr.dcm")
    assert sr.SOPClassUID == BASIC_TEXT_SR and sr.Modality == "SR"
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    referenced = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    items = {item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue for item in sr.ContentSequence}
    assert items["Finding"] == result["predicted_class"]
    assert float(items["Probability of PNEUMONIA"]) == pytest.approx(probs["PNEUMONIA"], abs=1e-6)
    assert result["predicted_class"] in items["Impression"]


def bad_files(out: Path) -> dict[str, tuple[str, str]]:
    with open(out / "bad_files.csv", newline="") as f:
        return {Path(r["file"]).name: (r["stage"], r["reason"]) for r in csv.DictReader(f)}


def test_predict_folder_skips_bad_dicoms_and_lists_them(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for dicom in DICOMS.glob("*.dcm"):
        shutil.copy(dicom, folder / dicom.name)
    no_pixels = pydicom.dcmread(DICOMS / "RG1_UNCI.dcm")
    del no_pixels.PixelData  # a real header whose image is missing: dcmread passes, decoding fails
    no_pixels.save_as(folder / "no_pixels.dcm")
    (folder / "scan.dcm").write_bytes(JPEG.read_bytes())  # a JPEG under a DICOM name
    results = predict(str(folder), output_dir=str(tmp_path / "out"), device="cpu")
    assert [Path(r["source"]["file"]).name for r in results] == ["RG1_J2KI.dcm", "RG1_UNCI.dcm"]
    assert (tmp_path / "out" / "RG1_UNCI" / "result.json").is_file()
    assert not (tmp_path / "out" / "no_pixels").exists() and not (tmp_path / "out" / "scan").exists()
    bad = bad_files(tmp_path / "out")
    assert set(bad) == {"no_pixels.dcm", "scan.dcm"} and {stage for stage, _ in bad.values()} == {"read"}
    assert "DICOM has no pixel data" in bad["no_pixels.dcm"][1]
    assert bad["scan.dcm"][1].startswith("not a readable DICOM file")


def test_predict_fails_naming_bad_files_when_no_file_could_be_processed(tmp_path):
    bad = tmp_path / "scan.dcm"
    bad.write_bytes(JPEG.read_bytes())
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=f"none of the 1 DICOM file.*reasons in {out / 'bad_files.csv'}"):
        predict(str(bad), output_dir=str(out), device="cpu")
    assert list(bad_files(out)) == ["scan.dcm"]
    with pytest.raises(FileNotFoundError, match="no DICOM files"):
        predict(str(SHARED / "lung_masks"), output_dir=str(tmp_path / "out"), device="cpu")


# the SDK lives in its own venv (bundle/deploy/install.sh): its Holoscan downgrades protobuf
DEPLOY_PYTHON = Path(os.environ.get("DEPLOY_PYTHON", ROOT / ".venv-deploy" / "bin" / "python"))


@pytest.mark.skipif(not DEPLOY_PYTHON.exists(),
                    reason=f"monai-deploy-app-sdk not installed: run `bash bundle/deploy/install.sh` (expects {DEPLOY_PYTHON})")
def test_monai_deploy_app_on_real_dicoms(tmp_path):
    """The app on a copy of the bundle whose `models/model.ts` is no export of its model.pt: the SDK alone would load
    it; the app passes it over (warning) for network_def + model.pt."""
    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    for name in ("model.pt", "lung_unet.pt"):
        (bundle / "models" / name).symlink_to(ROOT / "models" / name)
    (bundle / "models" / "model.ts").write_bytes(b"left over from an old export, not TorchScript")
    run = subprocess.run([str(DEPLOY_PYTHON), "bundle/deploy/app.py", "-i", str(DICOMS), "-o", str(tmp_path / "out")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CXR_BUNDLE_ROOT": str(bundle)})
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert f"{bundle / 'models' / 'model.ts'} has no source-checkpoint record" in run.stdout + run.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    expected = BundlePredictor(ROOT, "cpu")(LoadCXR()(DICOMS / "RG1_UNCI.dcm"))
    assert result["probabilities"]["PNEUMONIA"] == pytest.approx(float(expected[1]), abs=1e-4)
    srs = list((tmp_path / "out").glob("*.dcm"))
    assert len(srs) == 1
    sr = pydicom.dcmread(srs[0])
    source = pydicom.dcmread(DICOMS / "RG1_UNCI.dcm", stop_before_pixels=True)
    assert sr.Modality == "SR" and sr.StudyInstanceUID == source.StudyInstanceUID
    text = sr.ContentSequence[0].TextValue
    assert f"Predicted class: {result['predicted_class']}" in text and f"{result['probabilities']['PNEUMONIA']:.4f}" in text
