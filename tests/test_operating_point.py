"""A checkpoint's decision rule from validation predictions: threshold re-selection and the seed ensemble
(`custom.evaluation.operating_point`, `custom.models.networks.ProbabilityEnsemble`, configs/ensemble.json), on the
shipped model and real validation images."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from custom.evaluation.metrics import select_threshold
from custom.evaluation.operating_point import assemble_ensemble, read_predictions, reselect
from custom.models.networks import TorchvisionClassifier
from custom.models.trained_model import load_bundle, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "model.pt"
VALIDATION = ROOT / "docs" / "results" / "shipped_model_validation" / "validation_predictions.csv"
IMAGES = [p for c in ("NORMAL", "PNEUMONIA")
          for p in sorted((ROOT.parent / "shared" / "data" / "pediatric_cxr" / "train" / c).glob("*.jpeg"))[:12]]


def test_reselect_changes_only_the_operating_point_and_records_it(tmp_path):
    out = tmp_path / "model.pt"
    result = reselect(SHIPPED, VALIDATION, "kfold_youden", out)
    validation = read_predictions(VALIDATION)
    assert result["operating_point"]["threshold"] == pytest.approx(
        select_threshold(validation["label"], validation["score"], "kfold_youden"))
    before, after = load_checkpoint(SHIPPED), load_checkpoint(out)
    assert result["previous"] == before["operating_point"]
    assert after["operating_point"] == result["operating_point"] and after["operating_point"]["method"] == "kfold_youden"
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    history = after["provenance"]["operating_point_history"][-1]
    assert history["method"] == "kfold_youden" and str(VALIDATION) in history["predictions"]
    assert after["provenance"]["config_hash"] == before["provenance"]["config_hash"]  # the training record stays


def _member_predictions(network: torch.nn.Module, preprocessing, path: Path) -> np.ndarray:
    """Writes `network`'s predictions on IMAGES as a ClassificationReport CSV; returns (N,) P(PNEUMONIA)."""
    with torch.inference_mode():
        x = torch.stack([preprocessing({"image": str(p)})["image"].as_tensor() for p in IMAGES])
        probs = network(x).softmax(1).numpy()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "prob_NORMAL", "prob_PNEUMONIA", "predicted_label", "true_label"])
        for image, p in zip(IMAGES, probs):
            writer.writerow([str(image), f"{p[0]:.6f}", f"{p[1]:.6f}", "", image.parent.name])
    return probs[:, 1]


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """The shipped model and two other ResNet18s (seeded random weights) assembled into one ensemble checkpoint."""
    folder = tmp_path_factory.mktemp("ensemble")
    shipped = load_bundle(ROOT)
    checkpoints, predictions, scores = [SHIPPED], [folder / "p0.csv"], []
    scores.append(_member_predictions(shipped.network, shipped.preprocessing, predictions[0]))
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = TorchvisionClassifier("resnet18", 1, 2).eval()
        checkpoints.append(folder / f"m{seed}.pt")
        torch.save({"model": net.state_dict()}, checkpoints[-1])
        predictions.append(folder / f"p{seed}.csv")
        scores.append(_member_predictions(net, shipped.preprocessing, predictions[-1]))
    result = assemble_ensemble(checkpoints, predictions, "youden", folder / "model.pt")
    return folder / "model.pt", np.mean(scores, axis=0), result, shipped.preprocessing


def test_ensemble_checkpoint_loads_through_the_bundle_and_averages_its_members(ensemble):
    path, mean_score, result, preprocessing = ensemble
    trained_at = load_checkpoint(SHIPPED)["provenance"]["config"]["image_size"]
    trained = load_bundle(ROOT, ["configs/inference.json", "configs/ensemble.json"], path, precision="float32",
                          image_size=trained_at)
    x = torch.stack([preprocessing({"image": str(p)})["image"].as_tensor() for p in IMAGES])
    probs = trained.probabilities(x).numpy()
    assert np.abs(probs[:, 1] - mean_score).max() < 2e-3  # members stored as float16
    labels = np.array([p.parent.name == "PNEUMONIA" for p in IMAGES], dtype=int)
    assert trained.operating_point.threshold == pytest.approx(select_threshold(labels, mean_score, "youden"), abs=1e-5)
    assert result["operating_point"] == trained.operating_point.state_dict()
    members = trained.provenance["ensemble_of"]
    assert len(members) == 3 and members[0]["provenance"]["seed"] == 0 and members[1]["provenance"] is None
    metadata = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert trained.provenance["bundle"]["version"] == metadata["version"]
    assert trained.provenance["config"] == {**json.loads((ROOT / "configs" / "ensemble.json").read_text()),
                                            "image_size": trained_at}
    assert trained.provenance["git"]["commit"] and trained.provenance["versions"]["torch"] == torch.__version__


def test_ensemble_members_must_share_a_validation_split(ensemble, tmp_path):
    table = Path(tmp_path / "other.csv")
    rows = Path(ensemble[0].parent / "p1.csv").read_text().splitlines()
    table.write_text("\n".join(rows[:-1]) + "\n")  # one image fewer
    with pytest.raises(ValueError, match="other.csv: other images"):
        assemble_ensemble([SHIPPED, SHIPPED], [ensemble[0].parent / "p0.csv", table], "youden", tmp_path / "x.pt")


def test_an_ensemble_runs_only_at_its_members_image_size(ensemble, tmp_path):
    """The members' training image size goes into the ensemble's provenance, so a config at another size is refused;
    members trained at different sizes are not assembled."""
    path = ensemble[0]
    with pytest.raises(ValueError, match=r"model\.pt: trained with image_size = \[224, 224\], but this "
                                         r"config has image_size = \[128, 128\]"):
        load_bundle(ROOT, ["configs/inference.json", "configs/ensemble.json"], path, image_size=[128, 128])
    other = load_checkpoint(SHIPPED)
    other["provenance"]["config"]["image_size"] = [128, 128]
    torch.save(other, tmp_path / "at128.pt")
    with pytest.raises(ValueError, match=r"at128\.pt: trained with image_size = \[128, 128\], but .*model\.pt with "
                                         r"\[224, 224\]: ensemble members must share"):
        assemble_ensemble([SHIPPED, tmp_path / "at128.pt"], [path.parent / "p0.csv", path.parent / "p1.csv"], "youden",
                          tmp_path / "x.pt")
