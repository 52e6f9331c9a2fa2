"""The deduplicated adult split (custom.data.domains) and the two-domain datalist checks, on the real shared data."""

import json
from pathlib import Path

import numpy as np
import pytest

from custom.data import datalists as dl
from custom.data import domains

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ADULT = SHARED / "adult_cxr"
KERMANY = SHARED / "pediatric_cxr"
BYTE_IDENTICAL = {("COVID-2718.png", "COVID-2719.png"), ("COVID-319.png", "COVID-321.png")}


@pytest.fixture(scope="module")
def hash_cache():
    """Hashes of every adult and pediatric image, computed once for the module."""
    return {}


@pytest.fixture(scope="module")
def seed0(hash_cache):
    return domains.build_adult_split(ADULT, KERMANY, seed=0, hash_cache=hash_cache)


def names(items):
    return [Path(item["image"]).name for item in items]


def part_of(datalist):
    return {item["image"]: split for split in dl.SPLITS for item in datalist[split]}


def test_deterministic_per_seed(seed0, hash_cache):
    again, _ = domains.build_adult_split(ADULT, KERMANY, seed=0, hash_cache=hash_cache)
    other, _ = domains.build_adult_split(ADULT, KERMANY, seed=1, hash_cache=hash_cache)
    for split in dl.SPLITS:
        assert again[split] == seed0[0][split]
    assert set(names(other["test"])) != set(names(seed0[0]["test"]))


def test_byte_identical_pairs_found_and_one_kept(seed0):
    datalist, report = seed0
    found = {(Path(g["kept"]).name, *(Path(p).name for p in g["dropped"])) for g in report["byte_identical_adult"]}
    assert found == BYTE_IDENTICAL
    kept = names(item for split in dl.SPLITS for item in datalist[split])
    for a, b in BYTE_IDENTICAL:
        assert a in kept and b not in kept


def test_no_content_duplicate_across_or_within_parts(seed0, hash_cache):
    datalist, _ = seed0
    shas = [hash_cache[item["image"]].sha256 for split in dl.SPLITS for item in datalist[split]]
    assert len(shas) == len(set(shas)) == 1440 - len(BYTE_IDENTICAL)


def test_near_duplicates_stay_in_one_part(seed0, hash_cache):
    datalist, report = seed0
    parts = part_of(datalist)
    images = sorted(parts)
    bits = np.array([hash_cache[image].phash for image in images])
    distances = domains.hamming(bits, bits)
    i, j = np.nonzero(np.triu(distances <= domains.NEAR_DUPLICATE_BITS, 1))
    assert len(i) == len(report["adult_near_duplicates"]) > 0
    assert all(parts[images[a]] == parts[images[b]] for a, b in zip(i, j))
    assert report["cross_domain_near_duplicates"] == []
    assert report["closest_cross_domain_pair"]["bits"] > domains.NEAR_DUPLICATE_BITS


def test_stratified_60_20_20(seed0):
    datalist, _ = seed0
    items = [item for split in dl.SPLITS for item in datalist[split]]
    overall = np.mean([item["label"] for item in items])
    for split, share in zip(dl.SPLITS, (0.6, 0.2, 0.2)):
        part = datalist[split]
        assert abs(len(part) / len(items) - share) < 0.01, split
        assert abs(np.mean([item["label"] for item in part]) - overall) < 0.01, split
        assert {item["domain"] for item in part} == {"adult"}
        assert {(item["label"], item["class_name"]) for item in part} == {(0, "NORMAL"), (1, "PNEUMONIA")}


def test_committed_files_match_the_build(seed0):
    datalist, report = seed0
    committed = dl.load_datalist(REPO / "data" / "datalists" / "adult_split.json", base_dir=SHARED)
    for split in dl.SPLITS:
        assert committed[split] == datalist[split], split
    written = json.loads((REPO / "docs" / "results" / "adult_split_report.json").read_text())
    assert written["command"].startswith("python scripts/datalist.py adult ")
    assert {k: v for k, v in written.items() if k != "command"} == json.loads(json.dumps(report))


def test_adult_copy_of_pediatric_image_is_dropped(tmp_path):
    pediatric = sorted((KERMANY / "test" / "NORMAL").iterdir())[:2] + sorted((KERMANY / "test" / "PNEUMONIA").iterdir())[:2]
    for image in pediatric:
        (tmp_path / "ped" / "test" / image.parent.name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "ped" / "test" / image.parent.name / image.name).write_bytes(image.read_bytes())
    adult = sorted((ADULT / "NORMAL").iterdir())[:5] + sorted((ADULT / "OTHER_COVID").iterdir())[:5]
    for image in adult:
        (tmp_path / "adult" / image.parent.name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "adult" / image.parent.name / image.name).write_bytes(image.read_bytes())
    (tmp_path / "adult" / "NORMAL" / "leak.png").write_bytes(pediatric[0].read_bytes())
    datalist, report = domains.build_adult_split(tmp_path / "adult", tmp_path / "ped", seed=0)
    assert [(Path(p["a"]).name, p["bits"]) for p in report["cross_domain_near_duplicates"]] == [("leak.png", 0)]
    assert "leak.png" not in names(item for split in dl.SPLITS for item in datalist[split])


# --- two-domain datalist checks ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def combined(seed0):
    return domains.combine_datalists([dl.build_kermany(KERMANY, seed=0), seed0[0]])


def test_combined_datalist_passes(combined):
    assert domains.check_domains(combined, "combined.json") is combined
    for split in dl.SPLITS:
        assert {item["domain"] for item in combined[split]} == {"pediatric", "adult"}


def bad(combined, split, keep):
    return {**combined, split: [dict(item) for item in combined[split] if keep(item)]}


@pytest.mark.parametrize("case, edit, message", [
    ("one domain", lambda c: bad(c, "training", lambda i: i["domain"] == "pediatric"),
     "'training' has domain(s) ['pediatric'] only, ['pediatric', 'adult'] required (missing ['adult'])"),
    ("one class", lambda c: bad(c, "validation", lambda i: i["domain"] == "pediatric" or i["label"] == 0),
     "'validation': domain(s) ['adult'] hold one class only"),
    ("unknown name", lambda c: {**c, "test": [{**i, "domain": "rsna" if i["domain"] == "adult" else i["domain"]}
                                              for i in c["test"]]},
     "'test' has unknown domain names ['rsna'] (known: ['pediatric', 'adult'])"),
])
def test_bad_datalist_raises_before_training(combined, tmp_path, case, edit, message):
    path = tmp_path / "bad.json"
    dl.write_datalist(edit(combined), path)
    with pytest.raises(ValueError) as error:
        domains.check_domains(dl.load_datalist(path), path)
    assert str(error.value).startswith(f"{path}: datalist not usable: ")
    assert message in str(error.value)


def test_combine_refuses_different_class_names(seed0):
    with pytest.raises(ValueError, match="different class_names"):
        domains.combine_datalists([dl.build_kermany(KERMANY, seed=0, scheme="three_class"), seed0[0]])
