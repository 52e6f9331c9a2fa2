"""Fusion by concatenated features (`custom.evaluation.feature_fusion`, `scripts/benchmark_feature_fusion.py`): the
folds keep a patient's images together, cross-fitted scores come from probes that did not see the image, and the
script decides per domain on validation alone, with the shipped CNN and MedSAM head on real images of both domains."""

import json
import runpy
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from custom.data.datalists import kermany_items
from custom.evaluation.feature_fusion import cross_fitted_scores, probe_folds, refitted_scores

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

pytestmark = pytest.mark.usefixtures("single_thread")


def test_probe_folds_keep_each_patient_in_one_fold_and_both_classes_in_each():
    """On the Kermany train split, where many patients have several images."""
    items = kermany_items(SHARED / "pediatric_cxr", "train")
    labels = np.array([it["label"] for it in items])
    patients = np.array([it["patient_id"] for it in items])
    assert len(set(patients)) < len(items)  # the grouping has something to do
    for seed in (0, 1):
        fold_of = probe_folds(labels, patients, folds=5, seed=seed)
        folds_of_patient = defaultdict(set)
        for patient, fold in zip(patients, fold_of):
            folds_of_patient[patient].add(fold)
        assert all(len(f) == 1 for f in folds_of_patient.values())
        for fold in range(5):
            share = labels[fold_of == fold].mean()
            assert abs(share - labels.mean()) < 0.05  # stratified: each fold has both classes in about the split's mix
    assert not np.array_equal(probe_folds(labels, patients, 5, 0), probe_folds(labels, patients, 5, 1))


def test_cross_fitted_scores_come_from_probes_that_did_not_see_the_image():
    """200-d noise without signal: a probe fitted on all 60 images ranks them almost perfectly (it memorises), the
    cross-fitted scores rank them by chance."""
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(60, 200)), np.repeat([0, 1], 30)
    fold_of = probe_folds(labels, [str(i) for i in range(60)], folds=5, seed=0)
    assert roc_auc_score(labels, refitted_scores(features, labels, features)) > 0.95
    assert abs(roc_auc_score(labels, cross_fitted_scores(features, labels, fold_of)) - 0.5) < 0.2


def _datalist(path: Path, flip_test: bool = False) -> Path:
    """6 + 6 validation and 2 + 2 test images per domain: Kermany train (as validation) and test, the adult split."""
    adult = json.loads((ROOT / "data" / "datalists" / "adult_split.json").read_text())
    pediatric = {"validation": kermany_items(SHARED / "pediatric_cxr", "train"),
                 "test": kermany_items(SHARED / "pediatric_cxr", "test")}
    data = {"class_names": ["NORMAL", "PNEUMONIA"], "training": []}
    for split, per_class in (("validation", 6), ("test", 2)):
        data[split] = []
        for source in (pediatric[split], adult[split]):
            for label in (0, 1):
                picked = [dict(it, image=str(it["image"])) for it in source if it["label"] == label][:per_class]
                data[split] += [dict(it, label=1 - label) if flip_test and split == "test" else it for it in picked]
    path.write_text(json.dumps(data))
    return path


def _run(datalist: Path, results: Path, cache: Path, monkeypatch) -> dict:
    script = str(ROOT / "scripts" / "benchmark_feature_fusion.py")
    monkeypatch.setattr(sys, "argv", [script, "--datalist_file", str(datalist), "--base_dir", str(SHARED),
                                      "--seeds", "0,1", "--folds", "3", "--inner_folds", "2", "--n_boot", "20",
                                      "--cache_dir", str(cache), "--results_file", str(results)])
    runpy.run_path(script, run_name="__main__")
    return json.loads(results.read_text())


def test_feature_fusion_decides_per_domain_on_validation_alone(tmp_path, monkeypatch):
    """The shipped CNN (512-d) and MedSAM head (64-d) on real pediatric and adult images: one study per domain, the
    winner is the best cross-fitted validation ROC-AUC, and flipping every test label changes the test numbers and
    nothing that decides."""
    result = _run(_datalist(tmp_path / "datalist.json"), tmp_path / "fusion.json", tmp_path / "cache", monkeypatch)
    assert set(result["domains"]) == {"adult", "pediatric"}
    for domain, study in result["domains"].items():
        assert study["images"] == {"validation": 12, "test": 4}
        dims = study["feature_dims"]
        assert dims["cnn"] == 512 and dims["concatenated"] == dims["cnn"] + dims["medsam"]
        means = {p: study["validation"][p]["roc_auc"]["mean"] for p in ("cnn", "medsam", "concatenated")}
        assert study["winner"] == max(means, key=means.get)
        paired = study["per_seed"]["seed0"]["paired_concatenated_minus_best_single"]
        assert paired["validation"]["roc_auc"]["b"] == pytest.approx(study["per_seed"]["seed0"]["concatenated"]
                                                                    ["validation"]["roc_auc"])
    flipped = _run(_datalist(tmp_path / "flipped.json", flip_test=True), tmp_path / "flipped_fusion.json",
                   tmp_path / "cache", monkeypatch)
    for domain, study in result["domains"].items():
        other = flipped["domains"][domain]
        assert other["validation"] == study["validation"] and other["winner"] == study["winner"]
        for probe in ("cnn", "medsam", "concatenated"):
            assert other["per_seed"]["seed1"][probe]["validation"]["threshold"] == \
                study["per_seed"]["seed1"][probe]["validation"]["threshold"]
            assert other["test"][probe]["roc_auc"]["mean"] == pytest.approx(1 - study["test"][probe]["roc_auc"]["mean"])


def test_feature_fusion_refuses_a_domain_part_with_one_class_before_computing_features(tmp_path, monkeypatch):
    datalist = json.loads(_datalist(tmp_path / "datalist.json").read_text())
    datalist["test"] = [it for it in datalist["test"] if not (it["domain"] == "adult" and it["label"] == 1)]
    (tmp_path / "one_class.json").write_text(json.dumps(datalist))
    with pytest.raises(ValueError, match=r"one_class\.json: datalist not usable: 'test': domain\(s\) \['adult'\] "
                                         r"hold one class only"):
        _run(tmp_path / "one_class.json", tmp_path / "x.json", tmp_path / "cache", monkeypatch)
    assert not (tmp_path / "cache").exists()
