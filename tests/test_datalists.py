"""Tests for custom.data.datalists on the real shared data."""

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from custom.data import datalists as dl
from custom.data.transforms import LoadCXR

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
KERMANY = SHARED / "pediatric_cxr"
ADULT = SHARED / "adult_cxr"
ADULT_MAP = {"NORMAL": "NORMAL", "OTHER_COVID": "PNEUMONIA"}


def counts(items, num_classes=2):
    return dl.class_counts(items, num_classes)


def patients(items):
    return {item["patient_id"] for item in items}


def images(items):
    return [item["image"] for item in items]


def assert_disjoint(datalist):
    keys = dl.SPLITS
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not patients(datalist[a]) & patients(datalist[b]), (a, b)


@pytest.fixture(scope="module")
def kermany():
    return dl.build_kermany(KERMANY, val_fraction=0.15, seed=0)


def adult_pngs(n):
    normal = sorted((ADULT / "NORMAL").glob("*.png"))[:n]
    covid = sorted((ADULT / "OTHER_COVID").glob("*.png"))[:n]
    return normal, covid


def copy_into(files, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, folder / f.name)


# --- Kermany ---------------------------------------------------------------------------------------------------

def test_kermany_counts_and_items(kermany):
    assert kermany["class_names"] == ["NORMAL", "PNEUMONIA"]
    pool = kermany["training"] + kermany["validation"]
    assert counts(pool) == [1341, 3875]
    assert counts(kermany["test"]) == [234, 390]
    item = kermany["test"][0]
    assert Path(item["image"]).is_absolute() and Path(item["image"]).is_file()
    assert item["domain"] == "pediatric" and item["class_name"] == kermany["class_names"][item["label"]]
    assert all("/test/" in p for p in images(kermany["test"]))
    assert not any("/test/" in p for p in images(pool))


def test_kermany_patient_split(kermany):
    assert not patients(kermany["training"]) & patients(kermany["validation"])
    pool = counts(kermany["training"] + kermany["validation"])
    for val, total in zip(counts(kermany["validation"]), pool):
        assert abs(val / total - 0.15) <= 0.03


def test_kermany_split_determinism(kermany):
    again = dl.build_kermany(KERMANY, seed=0)
    other = dl.build_kermany(KERMANY, seed=1)
    assert images(again["validation"]) == images(kermany["validation"])
    assert images(other["validation"]) != images(kermany["validation"])


def test_kermany_test_fraction_carves_a_patient_aware_test_split_from_a_train_only_copy():
    hires = SHARED / "pediatric_cxr_hires512"
    datalist = dl.build_kermany(hires, val_fraction=0.15, seed=0, test_fraction=0.2)
    splits = [datalist[s] for s in ("training", "validation", "test")]
    assert sum(len(s) for s in splits) == 1566
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            assert not patients(a) & patients(b)
    assert abs(len(datalist["test"]) / 1566 - 0.2) <= 0.03 and all(counts(s)[0] > 0 for s in splits)
    assert images(dl.build_kermany(hires, seed=0, test_fraction=0.2)["test"]) == images(datalist["test"])
    with pytest.raises(ValueError, match="has an official test split"):
        dl.build_kermany(KERMANY, test_fraction=0.2)


def test_kermany_three_class():
    datalist = dl.build_kermany(KERMANY, scheme="three_class")
    assert datalist["class_names"] == ["NORMAL", "BACTERIAL", "VIRAL"]
    assert counts(datalist["test"], 3) == [234, 242, 148]
    assert sum(counts(datalist["training"] + datalist["validation"], 3)[1:]) == 3875


@pytest.mark.parametrize(
    "name, expected",
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-0173-0001-0002.jpeg", "NORMAL2-IM-0173"),
        ("scan_42.nii.gz", "scan_42"),
        ("/some/dir/other.png", "other"),
    ],
)
def test_kermany_patient_id(name, expected):
    assert dl.kermany_patient_id(name) == expected


@pytest.fixture
def small_kermany(tmp_path):
    """Tiny Kermany layout with real images: train, official val and test."""
    normal = sorted((KERMANY / "train" / "NORMAL").iterdir())[:6]
    pneumonia = sorted((KERMANY / "train" / "PNEUMONIA").iterdir())[:6]
    root = tmp_path / "kermany"
    copy_into(normal[:4], root / "train" / "NORMAL")
    copy_into(pneumonia[:4], root / "train" / "PNEUMONIA")
    copy_into(normal[4:], root / "val" / "NORMAL")
    copy_into(pneumonia[4:], root / "val" / "PNEUMONIA")
    (root / "train" / "NORMAL" / ".hidden.jpeg").write_bytes(b"")
    (root / "train" / "NORMAL" / "notes.txt").write_text("not an image")
    return root


def test_kermany_merges_official_val_and_skips_non_images(small_kermany):
    datalist = dl.build_kermany(small_kermany, val_fraction=0.0)
    assert len(datalist["training"]) == 12 and datalist["validation"] == [] and datalist["test"] == []
    assert sum("/val/" in p for p in images(datalist["training"])) == 4


def test_kermany_lists_every_readable_format_and_counts_the_rest(tmp_path, caplog):
    """BMP, TIFF and .dicom copies of real images are listed and read like the originals; other suffixes are left
    out with one warning per folder that names them and their count, recorded as ``skipped_files``."""
    jpegs = sorted((KERMANY / "train" / "NORMAL").glob("*.jpeg"))[:2]
    normal, pneumonia = (tmp_path / "kermany" / "train" / name for name in ("NORMAL", "PNEUMONIA"))
    copy_into(sorted((KERMANY / "train" / "PNEUMONIA").glob("*.jpeg"))[:1], pneumonia)
    normal.mkdir()
    Image.open(jpegs[0]).save(normal / f"{jpegs[0].stem}.bmp")
    Image.open(jpegs[1]).save(normal / f"{jpegs[1].stem}.tif")
    shutil.copy(SHARED / "dicom_cxr" / "RG1_UNCI.dcm", pneumonia / "person9_bacteria_1.dicom")
    (normal / "notes.txt").write_text("not an image")
    (normal / "scan.xyz").write_bytes(jpegs[0].read_bytes())
    (normal / ".DS_Store").write_bytes(b"hidden, not counted")
    with caplog.at_level(logging.WARNING, logger=dl.__name__):
        datalist = dl.build_kermany(tmp_path / "kermany", val_fraction=0.0)
    listed = {Path(p).name: p for p in images(datalist["training"])}
    assert sorted(listed) == sorted([f"{jpegs[0].stem}.bmp", f"{jpegs[1].stem}.tif", "person9_bacteria_1.dicom",
                                     sorted(p.name for p in pneumonia.glob("*.jpeg"))[0]])
    loader = LoadCXR()
    for jpeg, suffix in zip(jpegs, (".bmp", ".tif")):
        assert torch.equal(loader(listed[jpeg.stem + suffix]).as_tensor(), loader(jpeg).as_tensor()), suffix
    assert loader(listed["person9_bacteria_1.dicom"]).shape == loader(SHARED / "dicom_cxr" / "RG1_UNCI.dcm").shape
    warnings = [r.getMessage() for r in caplog.records if r.name == dl.__name__ and r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(normal) in warnings[0] and "2 file(s)" in warnings[0]
    assert "notes.txt" in warnings[0] and "scan.xyz" in warnings[0] and ".DS_Store" not in warnings[0]
    assert datalist["skipped_files"] == 2 and dl.split_summary(datalist)["skipped_files"] == 2


def test_kermany_unknown_class_folder(small_kermany):
    shutil.copytree(small_kermany / "train" / "NORMAL", small_kermany / "train" / "COVID")
    with pytest.raises(ValueError, match="COVID.*NORMAL.*PNEUMONIA"):
        dl.build_kermany(small_kermany)


def test_kermany_three_class_needs_kind(small_kermany):
    src = next((small_kermany / "train" / "PNEUMONIA").iterdir())
    shutil.copy(src, small_kermany / "train" / "PNEUMONIA" / "person9999_unknown_1.jpeg")
    dl.build_kermany(small_kermany)  # binary does not care
    with pytest.raises(ValueError, match="person9999_unknown_1.jpeg"):
        dl.build_kermany(small_kermany, scheme="three_class")


# --- RSNA ------------------------------------------------------------------------------------------------------

@pytest.fixture
def rsna_root(tmp_path):
    root = tmp_path / "rsna"
    image_dir = root / "stage_2_train_images"
    image_dir.mkdir(parents=True)
    rows = ["patientId,x,y,width,height,Target"]
    for i in range(20):
        pid = f"pat-{i:03d}"
        shutil.copy(SHARED / "dicom_cxr" / ("RG1_UNCI.dcm" if i == 0 else "RG1_J2KI.dcm"), image_dir / f"{pid}.dcm")
        if i < 8:  # positives; the first ones have two boxes
            rows += [f"{pid},10,20,30,40,1"] * (2 if i < 3 else 1)
        else:
            rows.append(f"{pid},,,,,0")
    (root / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_rsna(rsna_root):
    datalist = dl.build_rsna(rsna_root, val_fraction=0.25, test_fraction=0.25, seed=0)
    items = [item for key in dl.SPLITS for item in datalist[key]]
    assert len(items) == 20 and len(patients(items)) == 20
    labels = {item["patient_id"]: item["label"] for item in items}
    assert labels == {f"pat-{i:03d}": int(i < 8) for i in range(20)}
    assert all(Path(p).is_file() and p.endswith(".dcm") for p in images(items))
    assert all(datalist[key] for key in dl.SPLITS)
    assert all(1 in [i["label"] for i in datalist[key]] for key in dl.SPLITS)
    assert_disjoint(datalist)
    assert images(dl.build_rsna(rsna_root, val_fraction=0.25, test_fraction=0.25)["test"]) == images(datalist["test"])


def test_rsna_errors(rsna_root):
    (rsna_root / "stage_2_train_images" / "pat-005.dcm").unlink()
    with pytest.raises(ValueError, match="1 image.*pat-005.dcm"):
        dl.build_rsna(rsna_root)
    csv = rsna_root / "labels.csv"
    csv.write_text("patientId,x,y,width,height\npat-001,1,2,3,4\n")
    with pytest.raises(ValueError, match="Target"):
        dl.build_rsna(rsna_root, labels_csv=csv)


# --- COVID-19 Radiography --------------------------------------------------------------------------------------

@pytest.fixture
def covid_root(tmp_path):
    normal, covid = adult_pngs(20)
    root = tmp_path / "COVID-19_Radiography_Dataset"
    copy_into(normal, root / "Normal" / "images")
    copy_into(normal[:5], root / "Normal" / "masks")
    copy_into(covid[:10], root / "COVID")
    copy_into(covid[10:15], root / "Viral Pneumonia" / "images")
    copy_into(covid[10:12], root / "Viral Pneumonia" / "masks")
    copy_into(covid[15:20], root / "Lung_Opacity")
    (root / "COVID.metadata.csv").write_text("ignored\n")
    return root


def test_covid_binary(covid_root):
    datalist = dl.build_covid_radiography(covid_root, seed=0)
    items = [item for key in dl.SPLITS for item in datalist[key]]
    assert datalist["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert counts(items) == [20, 20] and datalist["skipped_files"] == 0
    assert not any("/masks/" in p for p in images(items))
    assert all(item["patient_id"] == Path(item["image"]).stem for item in items)
    assert all(item["domain"] == "adult" for item in items)
    assert_disjoint(datalist)


def test_covid_multiclass(covid_root):
    datalist = dl.build_covid_radiography(covid_root, scheme="multiclass")
    items = [item for key in dl.SPLITS for item in datalist[key]]
    assert datalist["class_names"] == ["NORMAL", "COVID", "Lung_Opacity", "Viral Pneumonia"]
    assert counts(items, 4) == [20, 10, 5, 5]
    assert all(item["class_name"] == datalist["class_names"][item["label"]] for item in items)


def test_covid_unknown_folder(covid_root):
    (covid_root / "Other").mkdir()
    with pytest.raises(ValueError, match="Other"):
        dl.build_covid_radiography(covid_root)


def test_covid_on_shared_adult_cxr():
    datalist = dl.build_covid_radiography(ADULT, class_map=ADULT_MAP, seed=0)
    items = [item for key in dl.SPLITS for item in datalist[key]]
    assert counts(items) == [960, 480]
    assert_disjoint(datalist)
    for key, fraction in [("validation", 0.15), ("test", 0.15)]:
        assert abs(len(datalist[key]) / len(items) - fraction) <= 0.03
    with pytest.raises(ValueError, match=r"\['NORMAL', 'OTHER_COVID'\]"):
        dl.build_covid_radiography(ADULT)


# --- generic CSV -----------------------------------------------------------------------------------------------

def write_csv_layout(tmp_path):
    normal, covid = adult_pngs(3)
    copy_into(normal, tmp_path / "img" / "n")
    copy_into(covid, tmp_path / "img" / "p")
    rows = ["path,label,patient_id,split"]
    rows += [f"img/n/{f.name},NORMAL,pn{i},{s}" for i, (f, s) in enumerate(zip(normal, ["train", "val", "test"]))]
    rows += [f"img/p/{f.name},1,pp{i},{s}" for i, (f, s) in enumerate(zip(covid, ["train", "train", "test"]))]
    csv = tmp_path / "list.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def test_csv_explicit_split(tmp_path):
    datalist = dl.build_csv(write_csv_layout(tmp_path), class_names=["NORMAL", "PNEUMONIA"])
    assert [len(datalist[k]) for k in dl.SPLITS] == [3, 1, 2]
    assert counts(datalist["training"]) == [1, 2]
    item = datalist["training"][0]
    assert item["image"] == str(tmp_path / "img" / "n" / Path(item["image"]).name)
    assert item["patient_id"] == "pn0" and item["domain"] == "list" and item["class_name"] == "NORMAL"


def test_csv_seeded_split_and_missing_files(tmp_path):
    csv = write_csv_layout(tmp_path)
    text = csv.read_text().replace(",train", "").replace(",val", "").replace(",test", "").replace(",split", "")
    (tmp_path / "nosplit.csv").write_text(text)
    datalist = dl.build_csv(tmp_path / "nosplit.csv", class_names=["NORMAL", "PNEUMONIA"], val_fraction=0.34)
    assert len(datalist["training"]) + len(datalist["validation"]) == 6 and datalist["test"] == []
    assert counts(datalist["validation"]) == [1, 1]
    shutil.rmtree(tmp_path / "img" / "p")
    with pytest.raises(ValueError, match=r"list\.csv: 3 image.*img/p/COVID"):
        dl.build_csv(csv, class_names=["NORMAL", "PNEUMONIA"])


# --- JSON, weights, resolve, CLI -------------------------------------------------------------------------------

def test_write_load_round_trip(tmp_path, small_kermany):
    datalist = dl.build_kermany(small_kermany, val_fraction=0.3)
    out = tmp_path / "json" / "datalist.json"
    dl.write_datalist(datalist, out, base_dir=small_kermany)
    raw = json.loads(out.read_text())
    assert all(not Path(item["image"]).is_absolute() for key in dl.SPLITS for item in raw[key])
    assert raw["class_names"] == datalist["class_names"]
    assert [p.name for p in out.parent.iterdir()] == ["datalist.json"]  # no temp file left
    assert dl.load_datalist(out, base_dir=small_kermany) == datalist
    assert dl.resolve_datalist(small_kermany, datalist_file=out) == datalist
    raw["training"][1].pop("label")
    out.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="datalist.json.*item 1 of 'training'"):
        dl.load_datalist(out)


def test_class_weights():
    items = [{"image": str(i), "label": label} for i, label in enumerate([0, 0, 0, 1])]
    weights = dl.class_weights(items, 2)
    assert weights.dtype == torch.float32
    assert torch.allclose(weights, torch.tensor([0.5, 1.5]))
    assert dl.class_counts(items, 2) == [3, 1]
    with pytest.raises(ValueError, match="2"):
        dl.class_weights(items, 3)


def test_resolve_datalist(tmp_path, kermany):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        dl.resolve_datalist(tmp_path / "nowhere")
    assert dl.resolve_datalist(KERMANY) == kermany
    with pytest.raises(ValueError, match="rsna layout is binary only"):
        dl.resolve_datalist(KERMANY, layout="rsna", scheme="three_class")
    with pytest.raises(ValueError, match="layout"):
        dl.resolve_datalist(KERMANY, layout="unknown")


def test_label_budget_is_stratified_nested_seeded_and_repeated():
    """On the real adult training part (576 NORMAL / 286 COVID-19): class shares kept, a smaller budget's items are a
    subset of a larger one's for one seed, another seed draws others, small budgets are repeated to `min_items`."""
    training = dl.load_datalist(REPO / "data" / "datalists" / "adult_split.json", base_dir=SHARED)["training"]
    chosen = {}
    for budget in (25, 50, 100, 200):
        items = dl.label_budget(training, budget, seed=1, min_items=256)
        unique = {item["image"]: item for item in items}
        assert len(unique) == budget and len(items) >= 256 and len(items) % budget == 0
        assert abs(counts(list(unique.values()))[1] - budget * 286 / 862) < 1  # largest-remainder share
        chosen[budget] = set(unique)
    assert chosen[25] < chosen[50] < chosen[100] < chosen[200]
    assert {i["image"] for i in dl.label_budget(training, 25, seed=2)} != chosen[25]
    assert dl.label_budget(training, 25, seed=1) == dl.label_budget(training, 25, seed=1)[:25]
    assert dl.label_budget(training, None) == training == dl.label_budget(training, 5000)
    assert counts(dl.label_budget(training, 2, seed=0)) == [1, 1]
    with pytest.raises(ValueError, match="below the number of classes"):
        dl.label_budget(training, 1)


def test_joint_label_budget_adds_a_stratified_replay_of_the_other_domain(kermany):
    """Real pediatric training part + real adult training part: the adult budget as `label_budget` draws it, then
    `replay` pediatric items once each, stratified; None replays every pediatric item; an absent domain is named."""
    adult = dl.load_datalist(REPO / "data" / "datalists" / "adult_split.json", base_dir=SHARED)["training"]
    pediatric = [{**item, "domain": "pediatric"} for item in kermany["training"]]
    items = dl.joint_label_budget(pediatric + adult, "adult", 25, 300, seed=1, min_items=256)
    assert items[:-300] == dl.label_budget(adult, 25, seed=1, min_items=256)
    replayed = items[-300:]
    assert {i["domain"] for i in replayed} == {"pediatric"} and len({i["image"] for i in replayed}) == 300
    share = counts(pediatric)[1] / len(pediatric)
    assert abs(counts(replayed)[1] - 300 * share) < 1
    assert len(dl.joint_label_budget(pediatric + adult, "adult", 25, None, seed=1)) == 25 + len(pediatric)
    with pytest.raises(ValueError, match="no training items of domain 'rsna'"):
        dl.joint_label_budget(pediatric + adult, "rsna", 25, 300)


def test_split_summary(kermany):
    summary = dl.split_summary(kermany)
    assert summary["test"] == {"items": 624, "patients": len(patients(kermany["test"])),
                               "classes": {"NORMAL": 234, "PNEUMONIA": 390}}
    assert summary["training"]["items"] + summary["validation"]["items"] == 5216
    assert summary["skipped_files"] == 0


def test_cli_kermany(tmp_path):
    out = tmp_path / "kermany.json"
    result = subprocess.run(
        [sys.executable, "scripts/datalist.py", "kermany", "--root", str(KERMANY), "--output", str(out),
         "--base_dir", str(KERMANY)],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    summary = json.loads(result.stdout)
    assert summary["test"]["classes"] == {"NORMAL": 234, "PNEUMONIA": 390}
    datalist = dl.load_datalist(out, base_dir=KERMANY)
    assert counts(datalist["test"]) == [234, 390]
    assert all(Path(p).is_file() for p in images(datalist["test"]))
