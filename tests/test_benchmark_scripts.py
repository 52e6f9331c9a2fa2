"""The measurement scripts the docs cite write `--results_file`: date, command, device and versions (from
`custom.evaluation.timing.run_record`) and every number they print, as rows. Each runs on a handful of real images with the
smallest batches and repeats; the numbers themselves are not checked, only that they are there and plausible."""

import datetime
import email.parser
import io
import json
import runpy
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bundle.deploy.predict import bundle_parser
from custom.evaluation.metrics import binary_metrics
from custom.evaluation.timing import cpu_model, run_record

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TEST_IMAGES = SHARED / "pediatric_cxr" / "test"
SAMPLE = ROOT / "data" / "sample"

pytestmark = pytest.mark.usefixtures("single_thread")


def run_script(name: str, *args, monkeypatch, capsys) -> str:
    """Runs scripts/<name> as `python scripts/<name> args...` in this process; returns its stdout."""
    script = str(ROOT / "scripts" / name)
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    runpy.run_path(script, run_name="__main__")
    return capsys.readouterr().out


def check_record(record: dict, script: str, torch_used: bool = True) -> None:
    assert datetime.datetime.fromisoformat(record["date"]).tzinfo is not None
    assert record["command"].startswith(f"python {ROOT / 'scripts' / script}")
    device = record["device"]
    assert device["cpu"] and device["cpu_count"] >= 1
    if torch_used:
        assert device["torch_threads"] == 1  # the single_thread fixture
        assert "gpu" in device and record["versions"]["torch"]
    assert record["versions"]["python"]


def written_and_printed(path: Path, out: str) -> dict:
    written = json.loads(path.read_text())
    assert json.loads(out.strip().splitlines()[-1]) == written
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # atomic: no temporary left
    return written


def test_run_record_reads_the_cpu_model(tmp_path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) X\n")
    assert cpu_model(str(tmp_path / "cpuinfo")) == "Intel(R) Xeon(R) X"
    assert cpu_model(str(tmp_path / "missing"))  # falls back to platform
    record = run_record(packages=("onnxruntime", "no-such-package"))
    assert set(record) == {"date", "command", "device", "versions"}
    assert record["versions"]["no-such-package"] is None and record["versions"]["onnxruntime"]


def test_benchmark_inference_results_file(tmp_path, monkeypatch, capsys):
    """Rows for every lung mode x lung UNet (crop only: `none` runs no UNet) x chosen path x backend x precision (int8
    on OpenVINO only: no PyTorch int8 row), forward rows per batch size, and each other setting's agreement with
    PyTorch float32 and the first UNet on every image of a real folder, ROC-AUC included."""
    lung_models = ("models/lung_unet.pt", "models/lung_unet_64.pt")
    out = run_script("benchmark_inference.py", "--images", TEST_IMAGES, "--limit", 4, "--batch_sizes", "1,2",
                     "--repeats", 1, "--lung_modes", "crop,none", "--lung_models", ",".join(lung_models),
                     "--paths", "per-item,batched", "--backends", "torch,openvino", "--precisions", "float32,int8",
                     "--agreement_images", SAMPLE / "test", "--agreement_lung_modes", "crop",
                     "--results_file", tmp_path / "results" / "inference.json", monkeypatch=monkeypatch, capsys=capsys)
    result = written_and_printed(tmp_path / "results" / "inference.json", out)
    check_record(result, "benchmark_inference.py")
    assert result["device"]["used"] == "cpu"
    assert result["images"] == 4 and result["input_shape"] == [1, *bundle_parser(ROOT)["image_size"]]
    combos = [("torch", "float32"), ("openvino", "float32"), ("openvino", "int8")]
    expected = [("end-to-end", mode, lung, path, None, *combo)
                for mode, lungs in (("crop", lung_models), ("none", (None,))) for lung in lungs
                for path, path_combos in (("per-item", combos[:1]), ("batched", combos)) for combo in path_combos]
    expected += [("forward", None, None, None, batch, *combo) for combo in combos for batch in (1, 2)]
    assert [(r["stage"], r.get("lung_mode"), r.get("lung_model"), r.get("path"), r.get("batch"), r["backend"],
             r["precision"]) for r in result["rows"]] == expected
    for row in result["rows"]:
        assert row["images_per_s"] > 0 and row["ms_per_image"] == pytest.approx(1000 / row["images_per_s"], rel=0.1)
    images = len(list((SAMPLE / "test").rglob("*.jpeg")))
    rows = {(a["lung_model"], a["backend"], a["precision"]): a for a in result["agreement"]}
    assert list(rows) == [(lung_models[0], *c) for c in combos[1:]] + [(lung_models[1], *c) for c in combos]
    assert all(a["images"] == images and a["lung_mode"] == "crop" for a in result["agreement"])
    exact = rows[lung_models[0], "openvino", "float32"]  # every image of the folder against PyTorch float32
    assert exact["max_abs_diff"] < 1e-4 and exact["decisions_flipped"] == 0
    assert exact["roc_auc"] == pytest.approx(exact["roc_auc_reference"], abs=1e-4)
    for approximate in (rows[lung_models[0], "openvino", "int8"], rows[lung_models[1], "torch", "float32"]):
        assert 0 < approximate["mean_abs_diff"] <= approximate["max_abs_diff"] < 0.5
        assert 0 <= approximate["decisions_flipped"] <= images
        assert 0.5 < approximate["roc_auc"] <= 1
        assert abs(approximate["roc_auc"] - approximate["roc_auc_reference"]) < 0.05


def test_markdown_table_counts_the_runs_behind_each_row_and_shows_a_spread_only_over_several():
    from custom.evaluation.benchmark import markdown_table, mean_std

    rows = {"source": mean_std([{"roc_auc": 0.72}], ("roc_auc",)),
            "dann": mean_std([{"roc_auc": v} for v in (0.70, 0.71, 0.75)], ("roc_auc",)),
            "written before counts": {"roc_auc": {"mean": 0.8, "std": 0.01}}}
    lines = markdown_table(rows, 3, ("roc_auc",)).splitlines()
    assert lines[2] == "| source | 1 | 0.720 |"  # no spread to show for one run
    assert lines[3] == "| dann | 3 | 0.720 ± 0.026 |"
    assert lines[4] == "| written before counts | 3 | 0.800 ± 0.010 |"


def test_benchmark_export_results_file(tmp_path, monkeypatch, capsys):
    """The CNN paths only (`--encoder_images 0`): exporting and timing LiteMedSAM takes minutes on a busy CPU."""
    out = run_script("benchmark_export.py", "--images", TEST_IMAGES, "--cnn_images", 2, "--encoder_images", 0,
                     "--repeats", 1, "--results_file", tmp_path / "export.json", monkeypatch=monkeypatch, capsys=capsys)
    result = written_and_printed(tmp_path / "export.json", out)
    check_record(result, "benchmark_export.py")
    assert result["versions"]["onnxruntime"] and result["cnn_images"] == 2 and result["encoder_images"] == 0
    rows = result["rows"]
    assert [r["path"] for r in rows] == ["eager", "TorchScript (trace + freeze)", "ONNX Runtime fp32"]
    assert all(r["images_per_s"] > 0 and r["batch"] == 1 and r["agreement_metric"] == "max abs dP" for r in rows)
    assert rows[0]["agreement"] == 0 and all(r["agreement"] < 1e-4 for r in rows)
    assert "| ONNX Runtime fp32 | 1 |" in out and "(reference)" in out  # the Markdown table is still printed


def test_benchmark_encoders_results_file(tmp_path, monkeypatch, capsys):
    out = run_script("benchmark_encoders.py", "--variants", "lite", "--batch_sizes", 1, "--dtypes", "fp32",
                     "--device", "cpu", "--repeats", 1, "--results_file", tmp_path / "encoders.json",
                     monkeypatch=monkeypatch, capsys=capsys)
    result = written_and_printed(tmp_path / "encoders.json", out)
    check_record(result, "benchmark_encoders.py")
    [row] = result["rows"]
    assert row["variant"] == "lite" and row["dtype"] == "fp32" and row["batch"] == 1 and row["input"] == 256
    assert row["gflop_per_image"] > 10 and row["images_per_s"] > 0
    assert row["tflop_per_s"] == pytest.approx(row["gflop_per_image"] * row["images_per_s"] / 1000, rel=0.05)


class FakeMonaiLabel(BaseHTTPRequestHandler):
    """/info/ and /infer/<model>: 200 for an upload Pillow decodes, 422 otherwise (as the real app answers)."""

    def do_GET(self):
        self._answer(200 if self.path.startswith("/info/") else 404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = email.parser.BytesParser().parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
        try:
            [part] = message.get_payload()
            Image.open(io.BytesIO(part.get_payload(decode=True))).load()
            self._answer(200)
        except Exception:  # noqa: BLE001 - any unreadable upload
            self._answer(422)

    def _answer(self, status: int):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_load_test_monailabel_results_file(tmp_path, monkeypatch, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((TEST_IMAGES / "NORMAL").glob("*.jpeg"))[:2]:
        (images / p.name).write_bytes(p.read_bytes())
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeMonaiLabel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = run_script("load_test_monailabel.py", "--url", f"http://127.0.0.1:{server.server_port}",
                         "--images", images, "--requests_per_phase", 4, "--concurrency", 2, "--corrupt", 2,
                         "--results_file", tmp_path / "load.json", monkeypatch=monkeypatch, capsys=capsys)
    finally:
        server.shutdown()
        server.server_close()
    result = written_and_printed(tmp_path / "load.json", out)
    check_record(result, "load_test_monailabel.py", torch_used=False)  # a torch-free client (torch is loaded here)
    assert result["images"] == 2 and result["server"].startswith("server at http://127.0.0.1")
    sequential, concurrent, corrupt = result["rows"]
    assert (sequential["run"], sequential["concurrency"], concurrent["run"], concurrent["concurrency"]) == \
        ("sequential", 1, "concurrent", 2)
    for row in (sequential, concurrent):
        assert row["requests"] == 4 and row["failures"] == 0 and row["throughput_per_s"] > 0
        assert 0 < row["p50_ms"] <= row["p95_ms"]
    assert corrupt["run"] == "corrupt" and corrupt["requests"] == 2
    assert (corrupt["4xx"], corrupt["5xx"], corrupt["other"], corrupt["statuses"]) == (2, 0, 0, {"422": 2})


def test_report_threshold_results_file(tmp_path, monkeypatch, capsys):
    files = [p for c in ("NORMAL", "PNEUMONIA") for p in sorted((TEST_IMAGES / c).glob("*.jpeg"))[:4]]
    labels = np.array([0] * 4 + [1] * 4)
    scores = np.array([0.1, 0.2, 0.6, 0.3, 0.4, 0.7, 0.8, 0.9])
    names = np.array(["NORMAL", "PNEUMONIA"])
    pd.DataFrame({"file": [str(f) for f in files], "prob_NORMAL": 1 - scores, "prob_PNEUMONIA": scores,
                  "predicted_label": names[(scores >= 0.5).astype(int)], "true_label": names[labels]}
                 ).to_csv(tmp_path / "predictions.csv", index=False)
    out = run_script("report.py", "threshold", "--predictions", tmp_path / "predictions.csv", "--threshold", 0.5,
                     "--results_file", tmp_path / "threshold.json", monkeypatch=monkeypatch, capsys=capsys)
    printed = json.loads(out.strip().splitlines()[-1])
    written = json.loads((tmp_path / "threshold.json").read_text())
    assert {k: written[k] for k in printed} == printed  # every printed number, after the run record
    assert written["command"].startswith(f"python {ROOT / 'scripts' / 'report.py'} threshold")
    assert written["predictions"] == str(tmp_path / "predictions.csv") and written["versions"]["scikit-learn"]
    assert written["device"]["cpu"] and datetime.datetime.fromisoformat(written["date"])
    assert written["confusion_matrix"] == [[3, 1], [1, 3]]


def test_benchmark_adabn_results_file(tmp_path, monkeypatch, capsys):
    """One checkpoint (the shipped model), 3 + 3 images per part of the real adult split: both methods on both parts."""
    from custom.data.datalists import write_datalist
    from tests.test_adabn import adult_datalist

    write_datalist(adult_datalist(per_class=3), tmp_path / "adult.json")
    out = run_script("benchmark_adabn.py", "--dataset_dir", SHARED, "--datalist_file", tmp_path / "adult.json",
                     "--checkpoints", ROOT / "models" / "model.pt", "--output_dir", tmp_path / "runs",
                     "--bootstrap_replicates", 20, "--results_file", tmp_path / "adabn.json",
                     monkeypatch=monkeypatch, capsys=capsys)
    result = json.loads((tmp_path / "adabn.json").read_text())
    assert "Rule: none: unsupervised setting" in out and result["rule"].startswith("none")
    run = result["runs"]["checkpoint0"]
    for method in ("source", "adabn"):
        for split in ("validation", "test"):
            assert run[method][split]["n"] == 6 and 0 <= run[method][split]["roc_auc"] <= 1
            assert result["summary"][method][split]["roc_auc"]["mean"] == run[method][split]["roc_auc"]
    source = pd.read_csv(tmp_path / "runs" / "checkpoint0" / "source" / "test" / "test_predictions.csv")
    adabn = pd.read_csv(tmp_path / "runs" / "checkpoint0" / "adabn" / "test" / "test_predictions.csv")
    assert (source["prob_PNEUMONIA"] - adabn["prob_PNEUMONIA"]).abs().max() > 1e-3


def test_benchmark_fusion_averages_the_two_models_and_decides_on_validation(tmp_path, monkeypatch, capsys):
    """Real predictions of the shipped CNN and MedSAM head (docs/results) laid out as benchmark runs of one seed."""
    for name, source in (("cnn", "shipped_model"), ("medsam", "shipped_medsam")):
        for split, folder in (("validation", "eval_validation"), ("test", "eval")):
            (tmp_path / name / "seed0" / folder).mkdir(parents=True)
            table = pd.read_csv(ROOT / "docs" / "results" / f"{source}_{split}" / f"{split}_predictions.csv")
            table.to_csv(tmp_path / name / "seed0" / folder / f"{split}_predictions.csv", index=False)
    out = run_script("benchmark_fusion.py", "--a", str(tmp_path / "cnn" / "seed{seed}"), "--b",
                     str(tmp_path / "medsam" / "seed{seed}"), "--names", "cnn,medsam", "--seeds", "0", "--n_boot", "50",
                     "--results_file", tmp_path / "fusion.json", monkeypatch=monkeypatch, capsys=capsys)
    result = json.loads((tmp_path / "fusion.json").read_text())
    assert "Validation (decides)" in out and out.index("Validation (decides)") < out.index("Test (reported")
    seed = result["per_seed"]["seed0"]
    aucs = {m: seed[m]["validation"]["roc_auc"] for m in ("cnn", "medsam", "fusion")}
    assert result["winner"] == max(aucs, key=aucs.get)
    paired = seed["paired_fusion_minus_best_single"]
    assert paired["single"] == max(("cnn", "medsam"), key=aucs.get)
    assert paired["validation"]["roc_auc"]["b"] == pytest.approx(aucs["fusion"])
    assert result["fusion_worth_it"] == (result["winner"] == "fusion" and paired["validation"]["roc_auc"]["low"] > 0)
    for split in ("validation", "test"):  # the fusion's score is the mean of the two probabilities
        a, b = (pd.read_csv(tmp_path / m / "seed0" / ("eval_validation" if split == "validation" else "eval")
                            / f"{split}_predictions.csv").sort_values("file") for m in ("cnn", "medsam"))
        fused = binary_metrics((a["true_label"] == "PNEUMONIA").to_numpy(),
                               (a["prob_PNEUMONIA"].to_numpy() + b["prob_PNEUMONIA"].to_numpy()) / 2,
                               seed["fusion"]["validation"]["threshold"])
        assert seed["fusion"][split]["roc_auc"] == pytest.approx(fused["roc_auc"])
        assert seed["fusion"][split]["accuracy"] == pytest.approx(fused["accuracy"])
    # a run that scored other images is refused, naming its file
    table = pd.read_csv(tmp_path / "medsam" / "seed0" / "eval" / "test_predictions.csv")
    table.iloc[1:].to_csv(tmp_path / "medsam" / "seed0" / "eval" / "test_predictions.csv", index=False)
    with pytest.raises(ValueError, match=r"medsam/seed0/eval/test_predictions\.csv: other images than"):
        run_script("benchmark_fusion.py", "--a", str(tmp_path / "cnn" / "seed{seed}"), "--b",
                   str(tmp_path / "medsam" / "seed{seed}"), "--seeds", "0", "--n_boot", "10",
                   "--results_file", tmp_path / "fusion2.json", monkeypatch=monkeypatch, capsys=capsys)


def test_benchmark_fusion_scores_one_domain_of_prediction_files(tmp_path, monkeypatch, capsys):
    """Real two-domain predictions (the 224 px joint and pediatric CNNs on pediatric + adult images) named as
    {split: CSV}: --domain adult scores the 288 adult images of each split and nothing else."""
    sources = {"joint": {"validation": "shipped_joint_224_validation", "test": "shipped_joint_224_test"},
               "pediatric": {"validation": "shipped_model_domains_validation", "test": "shipped_model_domains"}}
    for name, folders in sources.items():
        for split, folder in folders.items():
            table = pd.read_csv(ROOT / "docs" / "results" / folder / f"{split}_predictions.csv")
            table.to_csv(tmp_path / f"{name}_{split}.csv", index=False)
    files = {name: json.dumps({split: str(tmp_path / f"{name}_{split}.csv") for split in ("validation", "test")})
             for name in sources}
    args = ["--a", files["joint"], "--b", files["pediatric"], "--names", "joint,pediatric", "--seeds", "0",
            "--n_boot", "20"]
    run_script("benchmark_fusion.py", *args, "--domain", "adult", "--results_file", tmp_path / "adult.json",
               monkeypatch=monkeypatch, capsys=capsys)
    result = json.loads((tmp_path / "adult.json").read_text())
    assert result["domain"] == "adult"
    seed = result["per_seed"]["seed0"]
    for split in ("validation", "test"):
        a, b = (pd.read_csv(tmp_path / f"{m}_{split}.csv").query("domain == 'adult'").sort_values("file")
                for m in ("joint", "pediatric"))
        assert len(a) == 288 and seed["paired_fusion_minus_best_single"][split]["n_groups"] == 288
        for name, table in (("joint", a), ("pediatric", b)):
            alone = binary_metrics((table["true_label"] == "PNEUMONIA").to_numpy(), table["prob_PNEUMONIA"].to_numpy(),
                                   seed[name]["validation"]["threshold"])
            assert seed[name][split]["roc_auc"] == pytest.approx(alone["roc_auc"])
        fused = binary_metrics((a["true_label"] == "PNEUMONIA").to_numpy(),
                               (a["prob_PNEUMONIA"].to_numpy() + b["prob_PNEUMONIA"].to_numpy()) / 2,
                               seed["fusion"]["validation"]["threshold"])
        assert seed["fusion"][split]["roc_auc"] == pytest.approx(fused["roc_auc"])
    with pytest.raises(ValueError, match=r"joint_validation\.csv: no rows of domain 'adults' "
                                         r"\(its domains: \['adult', 'pediatric'\]\)"):
        run_script("benchmark_fusion.py", *args, "--domain", "adults", "--results_file", tmp_path / "none.json",
                   monkeypatch=monkeypatch, capsys=capsys)
    with pytest.raises(ValueError, match=r"prediction files need one key per split \['validation', 'test'\] and a "
                                         r"single seed"):
        run_script("benchmark_fusion.py", *args[:-4], "--seeds", "0,1", "--results_file", tmp_path / "none.json",
                   monkeypatch=monkeypatch, capsys=capsys)


@pytest.mark.parametrize("method", ["finetune", "joint"])
def test_benchmark_few_labels_curve_results_and_plot(tmp_path, monkeypatch, capsys, method):
    """3 + 3 images per part of the real adult split, the embedded pediatric sample: budget 0 (the shipped model as
    it is) and 2 labels (one per class) trained for one step, alone or with 4 replayed pediatric images; both domains
    in the results, the curve written."""
    from custom.data.datalists import write_datalist
    from tests.test_adabn import adult_datalist

    write_datalist(adult_datalist(per_class=3), tmp_path / "adult.json")
    out = run_script("benchmark_few_labels.py", "--dataset_dir", SHARED, "--datalist_file", tmp_path / "adult.json",
                     "--pediatric_dir", SAMPLE, "--method", method, "--budgets", "0,2", "--seeds", "0",
                     "--output_dir", tmp_path / "runs",
                     "--extra=--batch_size 4 --min_epoch_items 4 --train_samples 4 --replay_items 4",
                     "--results_file", tmp_path / "few.json", "--plot_file", tmp_path / "few.png",
                     monkeypatch=monkeypatch, capsys=capsys)
    result = json.loads((tmp_path / "few.json").read_text())
    check_record(result, "benchmark_few_labels.py")
    assert "Rule: none across budgets" in out and "| 2 labels | 1 |" in out and result["method"] == method
    assert set(result["runs"]) == {"0", "2"} and set(result["runs"]["2"]) == {"seed0"}
    for budget, run in (("0", "init"), ("2", "seed0")):
        parts = result["runs"][budget][run]
        assert parts["adult_validation"]["n"] == parts["adult_test"]["n"] == 6
        assert parts["pediatric_test"]["n"] == 60
        assert result["summary"][budget]["adult_test"]["roc_auc"]["mean"] == parts["adult_test"]["roc_auc"]
    tuned = torch.load(tmp_path / "runs" / "labels=2" / "seed0" / "models" / "model.pt", weights_only=True)
    assert tuned["provenance"]["config"]["label_budget"] == 2
    trained_on = 2 if method == "finetune" else 2 + 4  # the adult labels, and the replayed pediatric images
    assert result["configs"][-1] == ("configs/finetune.json" if method == "finetune" else "configs/finetune_joint.json")
    assert trained_on == len({*_trained_images(tmp_path / "runs" / "labels=2" / "seed0")})
    assert Image.open(tmp_path / "few.png").size[0] > 300
    page = (tmp_path / "runs" / "labels=0" / "adult_test" / "report.html").read_text()
    assert f"<code>few_labels_{method}.png</code>" in page


def test_benchmark_adaptation_reports_both_domains_and_decides_on_pediatric_validation(tmp_path, monkeypatch, capsys):
    """The embedded pediatric sample + 3 + 3 adult images per part: source-only (the shipped model), CORAL and the
    domain-generalising augmentation from it for two steps each; the four parts per run, the rule on pediatric validation, no adult label among the images the
    domain loss read."""
    from custom.data.datalists import write_datalist
    from tests.test_adabn import adult_datalist

    write_datalist(adult_datalist(per_class=3), tmp_path / "adult.json")
    out = run_script("benchmark_adaptation.py", "--dataset_dir", SHARED, "--datalist_file", tmp_path / "adult.json",
                     "--pediatric_dir", SAMPLE, "--methods", "source,coral,dg", "--seeds", "0",
                     "--output_dir", tmp_path / "runs", "--extra=--batch_size 4 --epoch_length 2 "
                     "--max_epochs 1", "--results_file", tmp_path / "adapt.json", monkeypatch=monkeypatch, capsys=capsys)
    result = json.loads((tmp_path / "adapt.json").read_text())
    check_record(result, "benchmark_adaptation.py")
    assert "Rule: unsupervised" in out and f"winner: {result['winner']}" in out
    means = {m: result["summary"][m]["pediatric_validation"]["roc_auc"]["mean"] for m in ("source", "coral", "dg")}
    assert result["winner"] in means and means[result["winner"]] == max(means.values())
    for method, run in (("source", "init"), ("coral", "seed0"), ("dg", "seed0")):
        parts = result["runs"][method][run]
        assert parts["adult_validation"]["n"] == parts["adult_test"]["n"] == 6
        assert parts["pediatric_test"]["n"] == 60 and parts["pediatric_validation"]["n"] > 0
    tuned = torch.load(tmp_path / "runs" / "coral" / "seed0" / "models" / "model.pt", weights_only=True)
    assert tuned["provenance"]["config"]["alignment"] == "coral"
    augmented = torch.load(tmp_path / "runs" / "dg" / "seed0" / "models" / "model.pt", weights_only=True)
    config = augmented["provenance"]["config"]
    assert config["domain_weight"] == 0 and "RandSimulateLowResolutiond" in json.dumps(config["augmentation"])


def _trained_images(run: Path) -> list[str]:
    """The distinct images a benchmark run trained on, from its resolved config."""
    from monai.bundle import ConfigParser

    from custom.evaluation.benchmark import parse_overrides

    record = json.loads((run / "run.json").read_text())
    parser = ConfigParser()
    parser.read_config([str(ROOT / c) for c in record["configs"]])
    parser.update({"bundle_root": str(ROOT), **parse_overrides(record["args"])})
    return [item["image"] for item in parser.get_parsed_content("train_items")]


def test_vary_values_as_fire_passes_them():
    """`--values` as fire hands it over: a ';'-separated string, or one literal that fire already parsed (a list, an
    int) and that must stay one value; no value at all is an error, not an empty benchmark."""
    from custom.evaluation.benchmark import vary_variants

    assert vary_variants(None, "") == {"": []}
    assert vary_variants("lung_mode", "crop; none") == {"lung_mode=crop": ["--lung_mode", "crop"],
                                                        "lung_mode=none": ["--lung_mode", "none"]}
    assert vary_variants("image_size", "[128,128];[224,224]") == {
        "image_size=[128,128]": ["--image_size", "[128,128]"], "image_size=[224,224]": ["--image_size", "[224,224]"]}
    assert vary_variants("image_size", [224, 224]) == {"image_size=[224,224]": ["--image_size", "[224,224]"]}
    assert vary_variants("encoder_feature_stages", []) == {"encoder_feature_stages=[]": ["--encoder_feature_stages", "[]"]}
    assert vary_variants("max_epochs", 10) == {"max_epochs=10": ["--max_epochs", "10"]}
    with pytest.raises(ValueError, match="--vary lung_mode needs --values"):
        vary_variants("lung_mode", " ; ")
