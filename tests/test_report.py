"""Evaluation report: PR / calibration plots, `report.html` written by `run evaluating` and by `scripts/report.py html`,
rendered in headless Chromium, and MONAI's `--tracking mlflow` on training and evaluation (SQLite store read back).

One tiny real run: 1 epoch of ResNet18 at 64 px on 40 training / 12 validation / 24 test Kermany images.
"""

import json
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FAST = {"image_size": [64, 64], "batch_size": 16, "num_workers": 0}
EVAL_PNGS = ("test_confusion_matrix.png", "test_roc.png", "test_pr.png", "test_calibration.png")


def small_datalist(path: Path) -> None:
    """The first images per class of the real Kermany train / test splits."""
    from custom.data.datalists import build_kermany, write_datalist

    full = build_kermany(SHARED / "pediatric_cxr", val_fraction=0.15, seed=0)
    first = lambda split, n: [it for c in (0, 1) for it in [i for i in full[split] if i["label"] == c][:n]]  # noqa: E731
    write_datalist({"class_names": full["class_names"], "training": first("training", 20),
                    "validation": first("validation", 6), "test": first("test", 12)}, path)


@pytest.fixture(scope="module")
def run(tmp_path_factory, single_thread) -> Path:
    """Train 1 epoch and evaluate on the test split, both tracked with MLflow in a SQLite store. In-process
    (`monai.bundle.run` is what `python -m monai.bundle run` calls) to spare two interpreter start-ups."""
    from monai.bundle import run as bundle_run

    tmp = tmp_path_factory.mktemp("report")
    small_datalist(tmp / "datalist.json")
    common = {"bundle_root": str(ROOT), "datalist_file": str(tmp / "datalist.json"), "ckpt_dir": str(tmp / "models"),
              "tracking": "mlflow", "tracking_uri": f"sqlite:///{tmp}/mlruns.db", **FAST}
    bundle_run("training", config_file=str(ROOT / "configs" / "train.json"), output_dir=str(tmp / "train"),
               max_epochs=1, run_name="train", **common)
    bundle_run("evaluating", config_file=[str(ROOT / "configs" / n) for n in ("train.json", "evaluate.json")],
               output_dir=str(tmp / "eval"), train_output_dir=str(tmp / "train"), run_name="eval", **common)
    return tmp


def image_sources(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def test_evaluation_writes_self_contained_report(run):
    eval_dir = run / "eval"
    for name in EVAL_PNGS:
        assert (eval_dir / name).stat().st_size > 5000, name
    page = (eval_dir / "report.html").read_text()
    sources = image_sources(page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # nothing outside the file
    for name in (*EVAL_PNGS, "training_curves.png", "class_distribution.png", "samples.png", "augmented.png"):
        assert f"<code>{name}</code>" in page, name
    metrics = json.loads((eval_dir / "test_metrics.json").read_text())
    for label in ("Accuracy", "Precision", "Recall / sensitivity", "Specificity", "F1", "ROC-AUC", "PR-AUC",
                  "Expected calibration error", "Decision threshold"):
        assert label in page, label
    assert f"{metrics['roc_auc']:.4f}" in page and f"{metrics['threshold']:.4f}" in page


def test_calibration_bins_match_direct_computation(run):
    from custom.evaluation.metrics import calibration_bins

    table = pd.read_csv(run / "eval" / "test_predictions.csv")
    labels = (table["true_label"] == "PNEUMONIA").to_numpy(float)
    scores = table["prob_PNEUMONIA"].to_numpy(float)
    counts, predicted, observed, ece = calibration_bins(labels, scores, n_bins=10)
    expected = 0.0
    for b in range(10):
        inside = (scores >= b / 10) & ((scores < (b + 1) / 10) if b < 9 else (scores <= 1))
        assert counts[b] == inside.sum()
        if inside.any():
            expected += inside.mean() * abs(labels[inside].mean() - scores[inside].mean())
    assert ece == pytest.approx(expected) and 0 <= ece <= 1
    assert calibration_bins(np.array([0, 1, 1, 0.0]), np.array([0.0, 1.0, 1.0, 0.0]))[3] == 0  # perfectly calibrated
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration_bins(labels, scores + 2)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_every_image_in_headless_chromium(run, tmp_path):
    page = (run / "eval" / "report.html").read_text()
    count = len(image_sources(page))
    # a probe writes each image's decoded width into the DOM once the page has loaded; a broken image is the control
    probe = ('<img id="broken" src="data:image/png;base64,AAAA"><script>window.addEventListener("load", () => {'
             'const w = [...document.images].map(i => i.naturalWidth);'
             'document.body.insertAdjacentHTML("beforeend", `<pre id="probe">${JSON.stringify(w)}</pre>`);});</script>')
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", probe + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom",
                              probed.as_uri()], capture_output=True, text=True, timeout=180).stdout
    found = re.search(r'<pre id="probe">(\[.*?\])</pre>', dom)
    assert found, f"probe did not run; chromium printed:\n{dom[-2000:]}"
    widths = json.loads(found.group(1))
    assert len(widths) == count + 1
    assert all(w > 0 for w in widths[:-1]), widths  # every report image decoded
    assert widths[-1] == 0  # the control: a broken image is detected


def test_mlflow_tracks_training_and_evaluation(run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run}/mlruns.db")
    experiment = client.get_experiment_by_name("monai_experiment")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"train", "eval"}
    train, evaluation = runs["train"], runs["eval"]
    for tracked in (train, evaluation):
        assert tracked.info.status == "FINISHED"
        assert {"max_epochs", "epoch_length"} <= set(tracked.data.params)
    assert train.data.params["max_epochs"] == "1"
    assert {"train_loss", "train_accuracy", "val_roc_auc", "val_accuracy"} <= set(train.data.metrics)
    metrics = json.loads((run / "eval" / "test_metrics.json").read_text())
    assert evaluation.data.metrics["test_roc_auc"] == pytest.approx(metrics["roc_auc"])
    assert evaluation.data.metrics["test_accuracy"] == pytest.approx(metrics["accuracy"])
    artifacts = {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    assert {*EVAL_PNGS, "report.html", "test_metrics.json", "test_predictions.csv"} <= artifacts, artifacts
    local = Path(client.download_artifacts(evaluation.info.run_id, "report.html", str(run / "download")))
    assert local.read_bytes() == (run / "eval" / "report.html").read_bytes()


def test_html_command_and_threshold_command(run, tmp_path, monkeypatch, capsys):
    output = tmp_path / "out" / "report.html"
    script = str(ROOT / "scripts" / "report.py")
    monkeypatch.setattr(sys, "argv", [script, "html", "--eval_dir", str(run / "eval"), "--output", str(output)])
    runpy.run_path(script, run_name="__main__")
    assert str(output) in capsys.readouterr().out
    page = output.read_text()
    assert "<code>test_calibration.png</code>" in page and "<code>training_curves.png</code>" not in page
    monkeypatch.setattr(sys, "argv", [script, "threshold", "--predictions", str(run / "eval" / "test_predictions.csv"),
                                      "--threshold", "0.5"])
    runpy.run_path(script, run_name="__main__")
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["threshold"] == 0.5


def test_report_includes_galleries_and_names_bad_input(run, tmp_path):
    from custom.evaluation.report_html import build_report

    eval_dir = tmp_path / "eval"
    shutil.copytree(run / "eval", eval_dir, ignore=shutil.ignore_patterns("mlruns*", "report.html"))
    shutil.copy(run / "train" / "samples.png", eval_dir / "tsne_embeddings.png")  # a gallery another tool wrote
    page = build_report(eval_dir).read_text()
    assert "Galleries" in page and "<code>tsne_embeddings.png</code>" in page
    with pytest.raises(FileNotFoundError, match="no \\*_metrics.json"):
        build_report((tmp_path / "empty").mkdir() or tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="training output folder does not exist"):
        build_report(eval_dir, train_dir=tmp_path / "missing")
    (eval_dir / "saliency_gallery.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="saliency_gallery.png: not a PNG file"):
        build_report(eval_dir)
    (eval_dir / "saliency_gallery.png").unlink()
    (eval_dir / "test_metrics.json").write_text("{truncated")
    with pytest.raises(ValueError, match="test_metrics.json: cannot read metrics JSON"):
        build_report(eval_dir)
