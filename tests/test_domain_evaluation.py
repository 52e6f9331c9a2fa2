"""Per-domain evaluation (`run evaluating` on a datalist whose test part holds pediatric and adult items): the shipped
model on 4 + 4 pediatric official-test images and 3 + 3 adult test-part images of the real shared data."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from custom.data import check_eval_domains
from custom.data.datalists import kermany_items, load_datalist, write_datalist
from custom.models.trained_model import is_positive

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
COUNTS = {"pediatric": 8, "adult": 6}


def first_per_class(items: list[dict], n: int) -> list[dict]:
    return [item for c in (0, 1) for item in [i for i in items if i["label"] == c][:n]]


def two_domains() -> list[dict]:
    adult = load_datalist(ROOT / "data" / "datalists" / "adult_split.json", base_dir=SHARED)["test"]
    return first_per_class(kermany_items(SHARED / "pediatric_cxr", "test"), 4) + first_per_class(adult, 3)


def evaluate(tmp: Path, items: list[dict], name: str) -> Path:
    """Evaluate the shipped model on `items` as the test part (in-process, as `python -m monai.bundle run` does)."""
    from monai.bundle import run as bundle_run

    write_datalist({"class_names": ["NORMAL", "PNEUMONIA"], "test": items}, tmp / f"{name}.json")
    bundle_run("evaluating", config_file=[str(ROOT / "configs" / n) for n in ("train.json", "evaluate.json")],
               bundle_root=str(ROOT), datalist_file=str(tmp / f"{name}.json"),
               ckpt_path=str(ROOT / "models" / "model.pt"),
               output_dir=str(tmp / name), train_output_dir=str(tmp / "no_training_run"), eval_split="test",
               bootstrap_replicates=50, batch_size=16, num_workers=0)
    return tmp / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory, single_thread) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("domains")
    items = two_domains()
    return {"both": evaluate(tmp, items, "both"),
            "pediatric": evaluate(tmp, [i for i in items if i["domain"] == "pediatric"], "pediatric")}


def test_one_metrics_entry_per_domain(runs):
    out = runs["both"]
    metrics = json.loads((out / "test_metrics.json").read_text())
    table = pd.read_csv(out / "test_predictions.csv")
    assert metrics["n"] == sum(COUNTS.values()) and table["domain"].value_counts().to_dict() == COUNTS
    assert set(metrics["domains"]) == set(COUNTS)
    for domain, entry in metrics["domains"].items():
        rows = table[table["domain"] == domain]
        truth = (rows["true_label"] == "PNEUMONIA").to_numpy()
        decided = is_positive(rows["prob_PNEUMONIA"].to_numpy(float), metrics["threshold"])  # the one overall threshold
        assert entry["n"] == COUNTS[domain] and entry["threshold"] == metrics["threshold"]
        assert entry["accuracy"] == pytest.approx(np.mean(decided == truth), abs=1e-9)
        assert np.sum(entry["confusion_matrix"]) == COUNTS[domain]
        assert entry["intervals"]["n_boot"] == 50 and entry["intervals"]["n_groups"] <= COUNTS[domain]
        diagnostic = entry["youden_threshold_diagnostic"]
        assert diagnostic["applied"] is False and 0 <= diagnostic["threshold"] <= 1
    page = (out / "report.html").read_text()
    assert "<code>test_roc_domains.png</code>" in page and "Metrics per domain" in page
    assert f"one overall threshold {metrics['threshold']:.4f}" in page
    assert all(f"<th>{domain}</th>" in page for domain in COUNTS)


def test_single_domain_run_has_no_domain_output(runs):
    out = runs["pediatric"]
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["n"] == COUNTS["pediatric"] and "domains" not in metrics
    assert "domain" not in pd.read_csv(out / "test_predictions.csv").columns
    assert not (out / "test_roc_domains.png").exists()
    assert "Metrics per domain" not in (out / "report.html").read_text()


def test_unknown_domain_names_stop_before_evaluation(tmp_path, single_thread):
    items = [{**item, "domain": "adults"} if item["domain"] == "adult" else item for item in two_domains()]
    with pytest.raises(Exception) as raised:
        evaluate(tmp_path, items, "typo")
    chain, error = [], raised.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__
    assert any("'test' has unknown domain names ['adults'] (known: ['pediatric', 'adult'])" in text
               and "typo.json" in text for text in chain), chain
    assert not (tmp_path / "typo" / "test_metrics.json").exists()


def test_single_domain_of_any_name_passes_the_check():
    datalist = {"test": [{"image": "a.png", "label": 0, "domain": "rsna"},
                         {"image": "b.png", "label": 1, "domain": "rsna"}]}
    assert check_eval_domains(datalist, "test", "rsna.json") is datalist
    with pytest.raises(ValueError, match="unknown domain names"):
        check_eval_domains({"test": datalist["test"] + [{"image": "c.png", "label": 1}]}, "test", "mixed.json")
