"""`bundle/package_zoo.py`: the model-zoo archive builds, unpacks, loads with `monai.bundle.load` and predicts a real image."""

import csv
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))
import package_zoo  # noqa: E402

from custom.io import file_sha256  # noqa: E402
from custom.medsam.encoders import calibration_files  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
IMAGE = SHARED / "pediatric_cxr" / "test" / "PNEUMONIA" / sorted(p.name for p in (SHARED / "pediatric_cxr" / "test" / "PNEUMONIA").glob("*.jpeg"))[0]

# Runs inside the unpacked bundle: `custom` must come from there, the weights through `monai.bundle.load`.
LOAD_AND_PREDICT = """
import json, sys, torch, custom, monai.bundle
from monai.bundle import ConfigParser
name, bundle_dir, image = sys.argv[1:4]
net = monai.bundle.load(name, bundle_dir=bundle_dir, workflow_type="inference", key_in_ckpt="model", device="cpu")
parser = ConfigParser()
parser.read_config("configs/inference.json")
x = parser.get_parsed_content("preprocessing")({"image": image})["image"][None]
with torch.no_grad():
    probs = torch.softmax(net.eval()(x), dim=1)[0].tolist()
print(json.dumps({"custom": custom.__file__, "probs": probs}))
"""


def test_archive_unpacks_loads_and_predicts(tmp_path):
    archive = Path(package_zoo.package(output_dir=str(tmp_path / "dist")))
    metadata = json.loads((ROOT / "configs" / "metadata.json").read_text())
    name = "cxr_pneumonia_classification"
    assert archive.name == f"{name}_v{metadata['version']}.zip"
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        assert {n.split("/")[0] for n in names} == {name}
        for required in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md",
                         "LICENSE", "large_files.yml", "custom/__init__.py", "custom/data/transforms.py",
                         "docs/data_license.txt"):
            assert f"{name}/{required}" in names, required
        assert not [n for n in names if "__pycache__" in n]
        zf.extractall(tmp_path / "zoo")
    bundle = tmp_path / "zoo" / name
    # the int8 encoder's calibration images travel with it: the same 64 files as in the repository
    sample = "data/sample/train"
    assert [p.relative_to(bundle / sample) for p in calibration_files(bundle / sample)] == [
        p.relative_to(ROOT / sample) for p in calibration_files(ROOT / sample)]

    large = (bundle / "large_files.yml").read_text()
    assert "no url is given because none was uploaded" in large
    listed = {entry["path"]: entry for entry in yaml.safe_load(large)["large_files"]}
    for path in ("models/model.pt", "models/lung_unet.pt"):  # path, sha256 and size; no url
        assert listed[path] == {"path": path, "hash_val": file_sha256(bundle / path), "hash_type": "sha256",
                                "size": (bundle / path).stat().st_size}
    assert listed["models/model.pt"]["hash_val"] == file_sha256(ROOT / "models" / "model.pt")

    result = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, name, str(tmp_path / "zoo"), str(IMAGE)],
                            cwd=bundle, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(loaded["custom"]).is_relative_to(bundle)
    assert sum(loaded["probs"]) == pytest.approx(1.0, abs=1e-5)

    # the unpacked bundle's own inference workflow gives the same probabilities for the same file
    images = tmp_path / "images"
    images.mkdir()
    (images / IMAGE.name).write_bytes(IMAGE.read_bytes())
    run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                          "--dataset_dir", str(images), "--output_dir", str(tmp_path / "out")],
                         cwd=bundle, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert len(rows) == 1
    assert float(rows[0]["prob_PNEUMONIA"]) == pytest.approx(loaded["probs"][1], abs=1e-4)


def test_version_without_changelog_entry_is_refused(tmp_path):
    metadata = json.loads((ROOT / "configs" / "metadata.json").read_text())
    metadata["version"] = "9.9.9"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=r"metadata.json: version 9.9.9 has no 'changelog' entry"):
        package_zoo.package(bundle_root=str(tmp_path), output_dir=str(tmp_path / "dist"))
