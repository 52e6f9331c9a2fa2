"""The bundle end to end through `python -m monai.bundle`: train (and resume), evaluate, infer, bad input, metadata.

Runs on the embedded sample (real Kermany images) at 64 px so that the whole file takes a few minutes on 2 cores.
"""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from custom.models.inferers import native_bf16

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "data" / "sample"
FAST = ["--image_size", "[64,64]", "--batch_size", "16"]


def bundle(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def train(tmp: Path, *extra: str, epochs: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    return bundle("run", "training", "--config_file", "configs/train.json", "--output_dir", str(tmp / "train"),
                  "--ckpt_dir", str(tmp / "models"), "--max_epochs", str(epochs), *FAST, *extra, check=check)


def tiny_datalist(path: Path, train_per_class: int, val_per_class: int) -> None:
    """A datalist JSON of the first few sample images per class (for the slow MedSAM encoder on CPU)."""
    from custom.data.datalists import build_kermany, write_datalist

    full = build_kermany(SAMPLE, val_fraction=0.15, seed=0)
    first = lambda split, n: [it for c in (0, 1) for it in [i for i in full[split] if i["label"] == c][:n]]  # noqa: E731
    write_datalist({"class_names": full["class_names"], "test": [], "training": first("training", train_per_class),
                    "validation": first("validation", val_per_class)}, path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Two real epochs of the main job (ResNet18, embedded sample), then resumed to a third."""
    tmp = tmp_path_factory.mktemp("bundle")
    train(tmp, epochs=2)
    return tmp


def test_training_writes_checkpoint_threshold_metrics_and_plots(trained):
    checkpoint = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"model", "operating_point", "provenance"}
    default_rule = json.loads((ROOT / "configs" / "train.json").read_text())["threshold_method"]
    assert checkpoint["operating_point"]["method"] == default_rule
    assert 0.0 <= checkpoint["operating_point"]["threshold"] <= 1.0
    history = json.loads((trained / "train" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    for key in ("train_loss", "train_accuracy", "val_accuracy", "val_roc_auc", "val_sensitivity", "val_specificity", "val_f1"):
        assert all(0 <= h[key] < 10 for h in history), key
    metrics = json.loads((trained / "train" / "val_metrics.json").read_text())
    assert metrics["n"] == 41 and len(metrics["confusion_matrix"]) == 2
    for name in ("class_distribution", "samples", "augmented", "training_curves"):
        assert (trained / "train" / f"{name}.png").stat().st_size > 5000, name
    assert list((trained / "train").glob("events.out.tfevents.*")), "TensorBoard log missing"


def test_checkpoint_carries_provenance_and_report_prints_it(trained):
    from custom.data.datalists import build_kermany
    from custom.models.provenance import datalist_hash

    record = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)["provenance"]
    assert record["seed"] == 0 and record["split_seed"] == 0 and record["bundle"]["version"]
    assert record["datalist_hash"] == datalist_hash(build_kermany(SAMPLE, val_fraction=0.15, seed=0))
    assert record["datalist_sizes"] == {"training": 229, "validation": 41, "test": 60}
    assert record["config"]["image_size"] == [64, 64] and record["config"]["network_def"]["arch"] == "resnet18"
    assert len(record["config_hash"]) == 64 and record["git"]["commit"] != ""
    assert record["started_at"] <= record["saved_at"] and record["versions"]["torch"] == torch.__version__
    assert "--max_epochs 2" in record["command"] and record["device"] == "cpu"
    printed = subprocess.run([sys.executable, "scripts/report.py", "provenance", str(trained / "models" / "model.pt")],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert json.loads(printed) == {k: v for k, v in record.items() if k != "config"}


def test_training_resumes_from_last_epoch(trained):
    weights_before = torch.load(trained / "models" / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=False)
    result = train(trained, epochs=3)
    assert "resumed from" in result.stdout + result.stderr
    resumed = torch.load(trained / "models" / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)["provenance"]
    assert resumed["started_at"] == weights_before["provenance"]["started_at"], "resume keeps the original record"
    assert len(resumed["resumed_at"]) == 1 and "--max_epochs 3" in resumed["resumed_at"][0]["command"]
    history = json.loads((trained / "train" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert (trained / "models" / "checkpoint_epoch=3.pt").exists()
    assert weights_before["trainer"]["iteration"] == 2 * weights_before["trainer"]["epoch_length"]


def test_resume_refuses_a_checkpoint_of_other_data_then_starts_over(trained, tmp_path):
    """The README sequence: the sample run, then another dataset with the same --ckpt_dir: it must not 'resume'."""
    shutil.copytree(trained / "models", tmp_path / "models")
    tiny_datalist(tmp_path / "other.json", train_per_class=8, val_per_class=4)
    other = ["--datalist_file", str(tmp_path / "other.json"), "--make_plots", "False"]
    refused = train(tmp_path, *other, epochs=4, check=False)
    assert refused.returncode != 0 and "Epoch[" not in refused.stdout + refused.stderr, "stopped before training"
    message = refused.stdout + refused.stderr
    assert "will not resume" in message and "data (datalist)" in message
    assert "--resume False" in message and "--ckpt_dir" in message
    fresh = train(tmp_path, *other, "--resume", "False", epochs=1)
    assert "resumed from" not in fresh.stdout + fresh.stderr
    assert sorted(p.name for p in (tmp_path / "models").glob("checkpoint_epoch=*.pt")) == ["checkpoint_epoch=1.pt"]
    record = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)["provenance"]
    assert record["datalist_sizes"]["training"] == 16
    changed = train(tmp_path, *other, "--learning_rate", "0.01", epochs=2, check=False)
    assert changed.returncode != 0 and "its config differ" in changed.stdout + changed.stderr


def test_finetune_starts_from_the_init_checkpoint_on_a_label_budget(tmp_path):
    """configs/finetune.json: the weights start from the shipped pediatric model (one step at lr 1e-4 leaves them
    within a few per cent of it), and the training part is the budget's items, repeated to min_epoch_items."""
    result = bundle("run", "training", "--config_file", "['configs/train.json','configs/finetune.json']",
                    "--output_dir", str(tmp_path / "train"), "--ckpt_dir", str(tmp_path / "models"), "--batch_size", "16",
                    "--label_budget", "4", "--min_epoch_items", "16", "--train_samples", "16", "--make_plots", "False")
    assert "Epoch[1] Complete" in result.stdout + result.stderr and "Epoch[2]" not in result.stdout + result.stderr
    tuned = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    shipped = torch.load(ROOT / "models" / "model_pediatric.pt", map_location="cpu", weights_only=True)["model"]
    for name in ("net.conv1.weight", "net.fc.weight"):
        change = (tuned["model"][name] - shipped[name]).abs().mean() / shipped[name].abs().mean()
        assert 0 < change < 0.05, (name, change)
    assert tuned["provenance"]["datalist_sizes"]["training"] > 16  # the whole part is recorded; 4 of it trained
    assert tuned["provenance"]["config"]["label_budget"] == 4
    from custom.io import file_sha256

    assert tuned["provenance"]["init_checkpoint"]["sha256"] == file_sha256(ROOT / "models" / "model_pediatric.pt")


def test_seeds_share_the_validation_split_of_one_split_seed():
    from monai.bundle import ConfigParser

    def validation(**overrides):
        parser = ConfigParser()
        parser.read_config("configs/train.json")
        parser.update({"bundle_root": str(ROOT), **overrides})
        return [item["image"] for item in parser.get_parsed_content("datalist")["validation"]]

    assert validation(seed=0) == validation(seed=1) == validation(seed=2, split_seed=0)
    assert validation(split_seed=1) != validation(split_seed=0)


def test_evaluate_on_test_split(trained):
    out = trained / "eval"
    bundle("run", "evaluating", "--config_file", "['configs/train.json','configs/evaluate.json']",
           "--ckpt_dir", str(trained / "models"), "--output_dir", str(out), *FAST)
    metrics = json.loads((out / "test_metrics.json").read_text())
    saved = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=False)
    assert metrics["n"] == 60
    assert metrics["threshold"] == pytest.approx(saved["operating_point"]["threshold"])
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert sum(map(sum, metrics["confusion_matrix"])) == 60
    rows = list(csv.DictReader(open(out / "test_predictions.csv")))
    assert len(rows) == 60 and {r["true_label"] for r in rows} == {"NORMAL", "PNEUMONIA"}
    assert (out / "test_roc.png").exists() and (out / "test_confusion_matrix.png").exists()
    rerun = subprocess.run([sys.executable, "scripts/report.py", "threshold", "--predictions", str(out / "test_predictions.csv"),
                            "--threshold", str(metrics["threshold"])], cwd=ROOT, capture_output=True, text=True, check=True)
    again = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert again["confusion_matrix"] == metrics["confusion_matrix"]
    assert again["roc_auc"] == pytest.approx(metrics["roc_auc"], abs=1e-5)


def test_inference_predicts_good_files_and_lists_bad_ones(trained, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    images = sorted((SAMPLE / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]
    for p in images:
        shutil.copy(p, folder / p.name)
    shutil.copy(SHARED / "dicom_cxr" / "RG1_UNCI.dcm", folder / "chest.dcm")
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.jpeg").write_bytes(images[0].read_bytes()[:600])
    out = tmp_path / "out"
    bundle("run", "--config_file", "configs/inference.json", "--dataset_dir", str(folder), "--output_dir", str(out),
           "--ckpt_path", str(trained / "models" / "model.pt"), "--lung_mode", "crop", *FAST)  # the lung step reports
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert sorted(Path(r["file"]).name for r in rows) == sorted([p.name for p in images] + ["chest.dcm"])
    for r in rows:
        assert float(r["prob_NORMAL"]) + float(r["prob_PNEUMONIA"]) == pytest.approx(1.0, abs=1e-4)
        assert r["predicted_label"] in ("NORMAL", "PNEUMONIA")
        assert r["lung_crop"] in ("applied", "fallback"), "the lung step says what it did per image"
    fallbacks = sum(r["lung_crop"] == "fallback" for r in rows)
    assert json.loads((out / "inference_metrics.json").read_text()) == {"n": len(rows), "lung_fallbacks": fallbacks}
    bad = {Path(r["file"]).name: r["reason"] for r in csv.DictReader(open(out / "bad_files.csv"))}
    assert set(bad) == {"notes.txt", "empty.png", "truncated.jpeg"}
    assert "empty" in bad["empty.png"]


def test_inference_fails_when_nothing_is_readable(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_text("garbage")
    result = bundle("run", "--config_file", "configs/inference.json", "--dataset_dir", str(folder),
                    "--output_dir", str(tmp_path / "out"), check=False)
    assert result.returncode != 0
    assert "could be read" in result.stdout + result.stderr


def test_training_checks_whole_datalist_before_starting(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    (data / "train" / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "train" / "PNEUMONIA" / "empty.jpeg").write_bytes(b"")
    result = train(tmp_path, "--dataset_dir", str(data), check=False)
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "broken.jpeg" in log and "empty.jpeg" in log and "2 bad input(s)" in log
    assert not (tmp_path / "models").exists(), "training must not start on a bad datalist"


def test_unknown_label_folder_is_reported(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SAMPLE, data)
    (data / "train" / "COVID").mkdir()
    result = train(tmp_path, "--dataset_dir", str(data), check=False)
    assert result.returncode != 0 and "COVID" in result.stdout + result.stderr


def test_three_class_training_small_cnn(tmp_path):
    """normal / bacterial / viral from the Kermany file names, with the from-scratch CNN."""
    small_cnn = "{'_target_': 'custom.models.networks.SmallCNN', 'in_channels': '@in_channels', 'num_classes': '@num_classes'}"
    result = train(tmp_path, "--label_scheme", "three_class", "--network_def", small_cnn, "--make_plots", "False",
                   "--optimizer#_target_", "torch.optim.NAdam", "--progress_bar", "True")
    optimizer_state = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", weights_only=False)["optimizer"]["state"]
    assert "mu_product" in optimizer_state[0], "NAdam state expected"
    assert "100%" in result.stderr, "progress bar expected"
    metrics = json.loads((tmp_path / "train" / "val_metrics.json").read_text())
    assert metrics["class_names"] == ["NORMAL", "BACTERIAL", "VIRAL"]
    assert len(metrics["confusion_matrix"]) == 3 and set(metrics["per_class"]) == {"NORMAL", "BACTERIAL", "VIRAL"}


def test_metadata_and_network_io_verify():
    bundle("verify_metadata", "--meta_file", "configs/metadata.json",
           "--filepath", str(ROOT.parent / "shared" / "monai" / "meta_schema_20240725.json"))
    bundle("verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json")


def test_shipped_model_loads_into_inference_network():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(ROOT / "configs" / "inference.json")
    parser["bundle_root"] = str(ROOT)
    net = parser.get_parsed_content("network_def")
    state = torch.load(ROOT / "models" / "model.pt", map_location="cpu", weights_only=False)
    net.load_state_dict(state["model"])
    assert 0.0 < state["operating_point"]["threshold"] < 1.0


def test_medsam_frozen_head_trains_from_embedding_cache(tmp_path):
    """LiteMedSAM (real weights) embeds 10 real images once; the MLP head trains from the cache."""
    tiny_datalist(tmp_path / "datalist.json", train_per_class=3, val_per_class=2)
    args = ("--config_file", "['configs/train.json','configs/train_medsam_frozen.json']",
            "--datalist_file", str(tmp_path / "datalist.json"), "--cache_dir", str(tmp_path / "cache"),
            "--make_plots", "False", "--batch_size", "4", "--resume", "False")
    bundle("run", "training", *args, "--output_dir", str(tmp_path / "train"), "--ckpt_dir", str(tmp_path / "models"),
           "--max_epochs", "3")
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 10
    history = json.loads((tmp_path / "train" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[-1]["val_n"] == 4
    files = [r["file"] for r in csv.DictReader(open(tmp_path / "train" / "val_predictions.csv"))]
    assert sorted(files) == sorted(it["image"] for it in json.loads((tmp_path / "datalist.json").read_text())["validation"])
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=False)["model"]
    assert any(k.startswith("head.") or ".head." in k for k in state), list(state)[:5]
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.pt")}
    bundle("run", "training", *args, "--output_dir", str(tmp_path / "train2"), "--ckpt_dir", str(tmp_path / "models2"),
           "--max_epochs", "1")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.pt")} == mtimes, "cache entries recomputed"
    # the cache-trained head runs on images behind the encoder (MedSAMClassifier) through the inference config
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sorted((SAMPLE / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]:
        shutil.copy(p, folder / p.name)
    bundle("run", "--config_file", "['configs/inference.json','configs/inference_medsam.json']", "--dataset_dir", str(folder),
           "--output_dir", str(tmp_path / "inference"), "--ckpt_path", str(tmp_path / "models" / "model.pt"))
    rows = list(csv.DictReader(open(tmp_path / "inference" / "predictions.csv")))
    assert len(rows) == 2 and all(0.0 <= float(r["prob_PNEUMONIA"]) <= 1.0 for r in rows)


def test_shipped_medsam_model_runs_on_images_with_no_other_argument(tmp_path):
    """`models/medsam_head.pt` behind the LiteMedSAM encoder, run on official-test images by the README's command
    alone: the same decisions as its recorded results (cached OpenVINO bfloat16 embeddings) and, on a CPU with native
    bfloat16 (the encoder then runs as it did for those results), the same probabilities within 0.05. Without native
    bf16 the encoder falls back to float32, and the bf16-trained head moves (IM-0003-0001: P(PNEUMONIA) 0.978 bf16,
    0.985 float32; up to 0.45 on other official-test images, docs/results/medsam_backend_openvino_test), so only
    decisions away from the threshold are compared there."""
    recorded = {Path(r["file"]).name: r for r in csv.DictReader(open(ROOT / "docs/results/shipped_medsam_test/test_predictions.csv"))}
    test = SHARED / "pediatric_cxr" / "test"
    images = sorted((test / "NORMAL").glob("*.jpeg"))[:3] + sorted((test / "PNEUMONIA").glob("*.jpeg"))[:3]
    folder = tmp_path / "images"
    folder.mkdir()
    for p in images:
        shutil.copy(p, folder / p.name)
    bundle("run", "--config_file", "['configs/inference.json','configs/inference_medsam.json']",
           "--dataset_dir", str(folder), "--output_dir", str(tmp_path / "out"))
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert sorted(Path(r["file"]).name for r in rows) == sorted(p.name for p in images)
    assert list(csv.DictReader(open(tmp_path / "out" / "bad_files.csv"))) == []
    threshold = torch.load(ROOT / "models" / "medsam_head.pt", weights_only=False)["operating_point"]["threshold"]
    same_encoder = native_bf16("cpu")
    for row in rows:
        expected = recorded[Path(row["file"]).name]
        if same_encoder:
            assert float(row["prob_PNEUMONIA"]) == pytest.approx(float(expected["prob_PNEUMONIA"]), abs=0.05), row
        if abs(float(expected["prob_PNEUMONIA"]) - threshold) > 0.05:  # not at the operating point
            assert row["predicted_label"] == expected["predicted_label"], row


def test_ckpt_export_torchscript_matches_eager(tmp_path):
    """`monai.bundle ckpt_export` of the shipped model; TorchScript and eager agree on real images."""
    from monai.bundle import ConfigParser

    bundle("ckpt_export", "network_def", "--filepath", str(tmp_path / "model.ts"), "--ckpt_file", "models/model.pt",
           "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json", "--key_in_ckpt", "model")
    parser = ConfigParser()
    parser.read_config(ROOT / "configs" / "inference.json")
    parser["bundle_root"] = str(ROOT)
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(ROOT / "models" / "model.pt", map_location="cpu", weights_only=False)["model"])
    preprocessing = parser.get_parsed_content("preprocessing")
    images = sorted((SAMPLE / "test" / "PNEUMONIA").glob("*.jpeg"))[:2] + sorted((SAMPLE / "test" / "NORMAL").glob("*.jpeg"))[:2]
    batch = torch.stack([preprocessing({"image": str(p)})["image"].as_tensor() for p in images])
    scripted = torch.jit.load(str(tmp_path / "model.ts")).eval()
    with torch.no_grad():
        assert (scripted(batch) - net(batch)).abs().max() < 1e-4


def test_medsam_finetune_trains_encoder_and_head(tmp_path):
    """Mode 2: LiteMedSAM (real weights) and the head trained together, encoder at the lower learning rate."""
    from custom.medsam.encoders import build_encoder

    tiny_datalist(tmp_path / "datalist.json", train_per_class=2, val_per_class=1)
    bundle("run", "training", "--config_file", "['configs/train.json','configs/train_medsam_finetune.json']",
           "--datalist_file", str(tmp_path / "datalist.json"), "--output_dir", str(tmp_path / "train"),
           "--ckpt_dir", str(tmp_path / "models"), "--max_epochs", "1", "--batch_size", "2", "--make_plots", "False")
    checkpoint = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)
    assert [g["initial_lr"] for g in checkpoint["optimizer"]["param_groups"]] == pytest.approx([3e-5, 3e-4])
    trained = checkpoint["model"]
    original = build_encoder("lite").state_dict()
    changed = [k for k, v in original.items() if not torch.equal(v, trained[f"encoder.{k}"])]
    assert changed, "the encoder must be updated when fine-tuning"
    assert any(k.startswith("classifier.head.") for k in trained)


def test_benchmark_lists_parse_what_fire_passes():
    from custom.evaluation.benchmark import parse_list

    assert parse_list(0, int) == [0] and parse_list((0, 1), int) == [0, 1] and parse_list("0,2", int) == [0, 2]
    assert parse_list("resnet18") == ["resnet18"] and parse_list(("a", "b")) == ["a", "b"]


def test_benchmark_picks_on_validation_only():
    from custom.evaluation.benchmark import pick_on_validation

    stats = lambda auc, acc: {"roc_auc": {"mean": auc}, "accuracy": {"mean": acc}}  # noqa: E731
    assert pick_on_validation({"a": stats(0.95, 0.9), "b": stats(0.97, 0.8)}) == "b"
    assert pick_on_validation({"a": stats(0.9700, 0.9), "b": stats(0.9705, 0.8)}) == "a", "tie -> accuracy"


def test_benchmark_compares_on_validation_reuses_matching_runs_and_reruns_changed_ones(tmp_path):
    base = [sys.executable, "scripts/benchmark_cnn.py", "--dataset_dir", str(SAMPLE), "--models", "small_cnn",
            "--max_epochs", "1", "--output_dir", str(tmp_path), "--vary", "learning_rate"]
    fast = "--extra=--image_size [64,64] --make_plots False"
    args = [*base, "--seeds", "0,1", "--values", "0.001;0.003", fast]
    first = subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True, timeout=900)
    summary = json.loads((tmp_path / "summary.json").read_text())
    options = ["small_cnn/learning_rate=0.001", "small_cnn/learning_rate=0.003"]
    assert list(summary["validation"]) == options == list(summary["test"])
    for option in options:
        runs = [summary["runs"][f"{option}/seed{s}"] for s in (0, 1)]
        for split in ("validation", "test"):
            mean = (runs[0][split]["roc_auc"] + runs[1][split]["roc_auc"]) / 2
            assert summary[split][option]["roc_auc"]["mean"] == pytest.approx(mean)
        record = json.loads((tmp_path / "small_cnn" / option.split("/")[1] / "seed0" / "run.json").read_text())
        assert record["validation"]["n"] == 41 and record["test"]["n"] == 60 and "ece" in record["validation"]
    best = max(options, key=lambda o: summary["validation"][o]["roc_auc"]["mean"])
    assert summary["winner"] == best or abs(summary["validation"][best]["roc_auc"]["mean"]
                                            - summary["validation"][summary["winner"]]["roc_auc"]["mean"]) <= 0.001
    out = first.stdout
    assert out.index("Validation") < out.index("Rule:") < out.index("Test (reported") and summary["winner"] in out
    again = subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    assert "Epoch[" not in again.stdout + again.stderr, "finished runs with the same key must be reused"
    key_before = json.loads((tmp_path / "small_cnn" / "learning_rate=0.001" / "seed0" / "run.json").read_text())["key"]
    changed = subprocess.run([*base, "--seeds", "0", "--values", "0.001", fast + " --label_smoothing 0.1"],
                             cwd=ROOT, check=True, capture_output=True, text=True, timeout=900)
    assert "running it again" in changed.stdout + changed.stderr and "Epoch[" in changed.stdout + changed.stderr
    record = json.loads((tmp_path / "small_cnn" / "learning_rate=0.001" / "seed0" / "run.json").read_text())
    assert record["key"] != key_before and "--label_smoothing" in record["args"]
