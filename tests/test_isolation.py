"""Per-file isolation in batch inference (`configs/inference.json`, and `inference_medsam.json` over it): a file that
fails anywhere in its chain is listed in bad_files.csv (file, stage, reason) and the run goes on; a run in which no
file got through ends non-zero naming bad_files.csv. Real images from ../shared/data and the shipped model."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from custom.data import IsolatedDataLoader, IsolatedDataset
from custom.data.transforms import LoadCXR

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
JPEGS = sorted((SHARED / "pediatric_cxr" / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]
DICOM = SHARED / "dicom_cxr" / "RG1_UNCI.dcm"
# a real preprocessing choice (crop the black border) that an all-black image does not survive: the crop is empty
# and `Resized` raises on it; the image itself is a valid PNG that passes the read check
CROP_BORDER = ("$[@preprocessing_transforms[0], monai.transforms.CropForegroundd(keys='image', source_key='image')]"
               " + @preprocessing_transforms[1:]")

pytestmark = pytest.mark.skipif(not DICOM.is_file(), reason=f"shared data not found at {SHARED}")


def black_png(path: Path) -> Path:
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    LoadCXR()(path)  # passes the read check
    return path


def infer(folder: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--dataset_dir",
           str(folder), "--output_dir", str(out), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def bad_rows(out: Path) -> dict[str, tuple[str, str]]:
    with open(out / "bad_files.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == {"file", "stage", "reason"}
    return {Path(r["file"]).name: (r["stage"], r["reason"]) for r in rows}


def test_inference_lists_files_failing_anywhere_in_the_chain_and_predicts_the_rest(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in JPEGS:
        shutil.copy(p, folder / p.name)
    shutil.copy(DICOM, folder / "chest.dcm")
    black_png(folder / "black.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    # batch size 1: black.png is a batch of its own whose every item failed; one worker process: records travel back
    run = infer(folder, out, "--preprocessing#transforms", CROP_BORDER, "--batch_size", "1", "--num_workers", "1")
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["file"]).name for r in rows) == sorted([p.name for p in JPEGS] + ["chest.dcm"])
    for r in rows:
        assert float(r["prob_NORMAL"]) + float(r["prob_PNEUMONIA"]) == pytest.approx(1.0, abs=1e-4)
    bad = bad_rows(out)
    assert set(bad) == {"black.png", "notes.txt"}
    assert bad["notes.txt"][0] == "read" and "not a readable image format" in bad["notes.txt"][1]
    assert bad["black.png"][0] == "Resized" and "RuntimeError" in bad["black.png"][1]


def test_inference_fails_naming_bad_files_when_every_file_fails_after_reading(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    black_png(folder / "a.png")
    black_png(folder / "b.png")
    out = tmp_path / "out"
    run = infer(folder, out, "--preprocessing#transforms", CROP_BORDER)
    assert run.returncode != 0
    assert f"could be processed; reasons in {out / 'bad_files.csv'}" in run.stdout + run.stderr
    assert {name: stage for name, (stage, _) in bad_rows(out).items()} == {"a.png": "Resized", "b.png": "Resized"}
    assert not (out / "predictions.csv").exists()


def test_medsam_preprocessing_is_isolated_per_file(tmp_path):
    """The `preprocessing` of inference_medsam.json over inference.json through the isolated dataset and loader."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([ROOT / "configs" / "inference.json", ROOT / "configs" / "inference_medsam.json"])
    parser["bundle_root"] = str(ROOT)
    parser["preprocessing#transforms"] = CROP_BORDER
    items = [{"image": str(JPEGS[0])}, {"image": str(black_png(tmp_path / "black.png"))}, {"image": str(JPEGS[1])}]
    csv_path = tmp_path / "bad_files.csv"
    loader = IsolatedDataLoader(IsolatedDataset(items, parser.get_parsed_content("preprocessing")), csv_path,
                                batch_size=2)
    batches = list(loader)
    assert [tuple(b["image"].shape[:2]) for b in batches] == [(1, 3), (1, 3)]  # black.png dropped from the first
    assert [b["image"].meta["filename_or_obj"][0] for b in batches] == [str(p) for p in JPEGS]
    assert bad_rows(tmp_path) == {"black.png": ("EncoderPreprocessd", "ZeroDivisionError: division by zero")}


def test_evaluation_skips_and_lists_bad_files_and_scores_the_rest(tmp_path):
    """`run evaluating` on a datalist whose test split holds an unreadable file and one that fails after reading:
    both are listed with the transform that failed, the metrics cover the good images only; a bad label still
    stops the run before evaluation."""
    normal = sorted((SHARED / "pediatric_cxr" / "test" / "NORMAL").glob("*.jpeg"))[:2]
    (tmp_path / "notes.jpeg").write_text("not an image")
    items = [{"image": str(p), "label": 0} for p in normal] + [{"image": str(p), "label": 1} for p in JPEGS]
    items += [{"image": str(tmp_path / "notes.jpeg"), "label": 1}, {"image": str(black_png(tmp_path / "black.png")), "label": 0}]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"class_names": ["NORMAL", "PNEUMONIA"], "training": items[:1], "validation": items[:1],
                                    "test": items}))
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file",
           "['configs/train.json','configs/evaluate.json']", "--datalist_file", str(datalist), "--ckpt_path",
           str(ROOT / "models" / "model.pt"), "--output_dir", str(out), "--bootstrap_replicates", "0",
           "--validate#preprocessing#transforms", CROP_BORDER, "--batch_size", "1"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert {name: stage for name, (stage, _) in bad_rows(out).items()} == {"notes.jpeg": "LoadCXRd", "black.png": "Resized"}
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["confusion_matrix"] is not None
    items[0]["label"] = 7
    datalist.write_text(json.dumps({"class_names": ["NORMAL", "PNEUMONIA"], "training": items[:1], "validation": items[:1],
                                    "test": items}))
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode != 0 and f"{normal[0]}: label 7 not in 0..1" in run.stdout + run.stderr


def test_untracked_chain_gives_the_tracked_values_and_keeps_the_file(tmp_path):
    """inference.json's dataset runs its chain with MONAI's metadata tracking off (`track_meta: false`): the same
    tensors as the tracked chain, bit for bit, on a pediatric RGB JPEG, an adult greyscale PNG, a DICOM and a NIfTI
    copy; plain tensors with the file in image_meta_dict; the global setting is restored after each item; a file that
    fails is still a failure record."""
    import nibabel as nib
    import torch
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor, get_track_meta

    from custom.data.isolation import FAILED_KEY
    from custom.data.transforms import source_file

    nifti = tmp_path / "unci.nii.gz"
    nib.save(nib.Nifti1Image(LoadCXR()(DICOM).numpy()[0], np.eye(4)), nifti)
    adult = sorted((SHARED / "adult_cxr" / "NORMAL").glob("*.png"))[0]
    files = [JPEGS[0], adult, DICOM, nifti]
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.json"))
    parser.update({"bundle_root": str(ROOT), "output_dir": str(tmp_path / "out"), "lung_mode": "crop",
                   "datalist": [{"image": str(f)} for f in files]})
    parser.parse()
    assert parser["dataset"]["track_meta"] is False, "inference.json runs its item chain untracked"
    chain = parser.get_parsed_content("lung_batching").item_transform
    data = parser.get_parsed_content("datalist")
    tracked, untracked = IsolatedDataset(data, chain), IsolatedDataset(data, chain, track_meta=False)
    for i, file in enumerate(files):
        a, b = tracked[i], untracked[i]
        assert get_track_meta(), "the global setting is restored"
        assert isinstance(a["image"], MetaTensor) and type(b["image"]) is torch.Tensor
        assert torch.equal(a["image"].as_tensor(), b["image"]), file.name
        assert source_file(a) == source_file(b) == str(file)
        assert list(b["image_meta_dict"]["spatial_shape"]) == list(a["image"].meta["spatial_shape"])
    missing = IsolatedDataset([{"image": str(tmp_path / "missing.png")}], chain, track_meta=False)[0]
    assert missing[FAILED_KEY][:2] == (str(tmp_path / "missing.png"), "LoadCXRd") and get_track_meta()
