"""Domain adaptation: gradient reversal, its schedule, SupConLoss, the DANN trainer step, and DANN training through
`python -m monai.bundle` on real images (6 + 2 Kermany source, 3 + 3 adult COVID-19 Radiography target, LiteMedSAM
embeddings cached once and reused by every test here)."""

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer
from torch.utils.data import DataLoader

from custom.adaptation.domain import (
    DANNClassifier,
    GradientReversal,
    dann_lambda,
    target_datalist,
)
from custom.adaptation.engines import DANNTrainer
from custom.adaptation.losses import SupConLoss
from custom.medsam.embedding_cache import PrepareEmbeddingBatch
from tests.test_bundle import ROOT, SAMPLE, SHARED, bundle, tiny_datalist

ADULT = SHARED / "adult_cxr"
CLASS_MAP = {"NORMAL": "NORMAL", "OTHER_COVID": "PNEUMONIA"}
CONFIGS = "['configs/train.json','configs/train_medsam_frozen.json','configs/train_dann.json']"


@pytest.fixture(scope="module")
def dann(tmp_path_factory) -> Path:
    """Two epochs of DANN (batch 2) from a tiny source datalist and a 3 + 3 image target folder."""
    tmp = tmp_path_factory.mktemp("dann")
    tiny_datalist(tmp / "datalist.json", train_per_class=3, val_per_class=1)
    for folder in CLASS_MAP:
        (tmp / "target" / folder).mkdir(parents=True)
        for p in sorted((ADULT / folder).glob("*.png"))[:3]:
            shutil.copy(p, tmp / "target" / folder / p.name)
    result = bundle("run", "training", *common_args(tmp), "--output_dir", str(tmp / "train"),
                    "--ckpt_dir", str(tmp / "models"), "--max_epochs", "2", "--batch_size", "2")
    (tmp / "log.txt").write_text(result.stdout + result.stderr)
    return tmp


def common_args(tmp: Path) -> tuple[str, ...]:
    return ("--config_file", CONFIGS, "--datalist_file", str(tmp / "datalist.json"),
            "--target_dataset_dir", str(tmp / "target"), "--target_test_fraction", "0.34",
            "--cache_dir", str(tmp / "cache"), "--make_plots", "False", "--resume", "False")


@pytest.fixture(scope="module")
def embeddings(dann) -> dict:
    """Real cached (256, 16, 16) float16 maps of the run above: source maps + labels, target maps."""
    by_source = {}
    for entry in (dann / "cache").rglob("*.pt"):
        stored = torch.load(entry, map_location="cpu", weights_only=True)
        by_source[stored["source"]] = stored["embedding"]
    source = json.loads((dann / "datalist.json").read_text())["training"]
    target = sorted(str(p) for p in (dann / "target").rglob("*.png"))
    return {"source": torch.stack([by_source[item["image"]] for item in source]),
            "labels": torch.tensor([item["label"] for item in source]),
            "target": torch.stack([by_source[p] for p in target])}


@pytest.mark.parametrize("lambda_", [0.0, 0.3, 1.0, 2.5])
def test_gradient_reversal_is_identity_forward_and_scales_gradient_by_minus_lambda(lambda_):
    torch.manual_seed(0)
    x = torch.randn(4, 5, requires_grad=True)
    w = torch.randn(4, 5)
    grl = GradientReversal(lambda_=1.0)
    grl.lambda_ = lambda_
    y = grl(x)
    assert torch.equal(y, x)
    (reversed_grad,) = torch.autograd.grad((torch.sin(y) * w).sum(), x)
    (plain_grad,) = torch.autograd.grad((torch.sin(x) * w).sum(), x)
    assert torch.allclose(reversed_grad, -lambda_ * plain_grad)


def test_dann_lambda_schedule():
    values = [dann_lambda(p / 20) for p in range(21)]
    assert values[0] == 0.0
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(1.0, abs=1e-3)
    assert dann_lambda(0.5, gamma=1.0) < dann_lambda(0.5)


def test_supcon_loss_prefers_clustered_embeddings_and_ignores_scale():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    centres = torch.randn(2, 16)
    clustered = centres[labels] + 0.05 * torch.randn(8, 16)
    mixed = torch.randn(8, 16)
    loss = SupConLoss(temperature=0.1)
    assert loss(clustered, labels) < loss(mixed, labels)
    assert loss(3.7 * mixed, labels) == pytest.approx(float(loss(mixed, labels)), rel=1e-5)
    projections = mixed.clone().requires_grad_(True)
    loss(projections, labels).backward()
    assert torch.isfinite(projections.grad).all() and projections.grad.abs().sum() > 0
    assert float(loss(mixed[:2], torch.tensor([0, 1]))) == 0.0  # no positive pair


def test_target_datalist_needs_a_folder_and_strips_adaptation_labels(tmp_path):
    with pytest.raises(ValueError, match="target_dataset_dir is not set"):
        target_datalist(None, CLASS_MAP, ["NORMAL", "PNEUMONIA"])
    for folder in CLASS_MAP:
        (tmp_path / folder).mkdir()
        for p in sorted((ADULT / folder).glob("*.png"))[:3]:
            shutil.copy(p, tmp_path / folder / p.name)
    datalist = target_datalist(tmp_path, CLASS_MAP, ["NORMAL", "PNEUMONIA"], test_fraction=0.34, seed=0)
    assert len(datalist["training"]) == 4 and len(datalist["test"]) == 2
    assert all("label" not in item and "class_name" not in item for item in datalist["training"])
    assert sorted(item["label"] for item in datalist["test"]) == [0, 1]
    assert not {i["image"] for i in datalist["training"]} & {i["image"] for i in datalist["test"]}


def test_grl_reverses_the_domain_gradient_on_the_extractor(embeddings):
    torch.manual_seed(0)
    net = DANNClassifier()
    x = torch.cat([embeddings["source"], embeddings["target"]])
    domains = torch.cat([torch.zeros(len(embeddings["source"])), torch.ones(len(embeddings["target"]))]).long()
    adapter, head = net.features[0].weight, net.domain_head[0].weight
    net.grl.lambda_ = 0.7
    plain = torch.autograd.grad(F.cross_entropy(net.domain_head(net.forward_features(x)), domains), [adapter, head])
    reversed_ = torch.autograd.grad(F.cross_entropy(net.domain_logits(net.forward_features(x)), domains), [adapter, head])
    assert plain[0].abs().sum() > 0
    assert torch.allclose(reversed_[0], -0.7 * plain[0], atol=1e-7)  # extractor: maximises the domain loss
    assert torch.allclose(reversed_[1], plain[1])  # domain head: minimises it


def _loaders(embeddings, with_target: bool = True):
    source = [{"embedding": e, "label": y} for e, y in zip(embeddings["source"], embeddings["labels"])]
    target = [{"embedding": e, "label": 1} for e in embeddings["target"]]  # labels present but never read
    return (DataLoader(source, batch_size=len(source)),
            DataLoader(target, batch_size=len(target)) if with_target else None)


def test_dann_step_with_domain_loss_only_moves_extractor_against_domain_gradient(embeddings):
    torch.manual_seed(0)
    net = DANNClassifier()
    before = copy.deepcopy(net.state_dict())
    x = torch.cat([embeddings["source"], embeddings["target"]])
    domains = torch.cat([torch.zeros(len(embeddings["source"])), torch.ones(len(embeddings["target"]))]).long()
    (plain,) = torch.autograd.grad(F.cross_entropy(net.domain_head(net.forward_features(x)), domains),
                                   net.features[0].weight)
    source_loader, target_loader = _loaders(embeddings)
    trainer = DANNTrainer(device="cpu", max_epochs=1, train_data_loader=source_loader, network=net,
                          optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                          loss_function=lambda pred, label: pred.sum() * 0.0,  # label loss off
                          prepare_batch=PrepareEmbeddingBatch(), target_data_loader=target_loader,
                          target_key="embedding", domain_weight=1.0)
    trainer.run()
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.startswith("label_head.") for k in changed), changed
    assert any(k.startswith("domain_head.") for k in changed) and "features.0.weight" in changed
    # one SGD step on -lambda * grad: the adapter moves up the domain-loss gradient (lambda = dann_lambda(1/1))
    delta = after["features.0.weight"] - before["features.0.weight"]
    assert torch.allclose(delta, 0.1 * dann_lambda(1.0) * plain, atol=1e-6)
    assert float((delta * plain).sum()) > 0
    output = trainer.state.output[0]
    assert output["lambda"] == pytest.approx(dann_lambda(1.0))
    assert output["domain_loss"] > 0 and output["label_loss"] == 0.0 and output["pred"].shape == (2,)


def test_domain_weight_zero_is_source_only_training(embeddings):
    torch.manual_seed(0)
    net = DANNClassifier()
    reference = copy.deepcopy(net)
    source_loader, _ = _loaders(embeddings, with_target=False)
    common = dict(device="cpu", max_epochs=2, train_data_loader=source_loader, loss_function=torch.nn.CrossEntropyLoss(),
                  prepare_batch=PrepareEmbeddingBatch())
    DANNTrainer(network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), domain_weight=0.0, **common).run()
    SupervisedTrainer(network=reference, optimizer=torch.optim.SGD(reference.parameters(), lr=0.1), **common).run()
    for (name, p), q in zip(net.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_bundle_dann_training_adapts_and_reports_on_target(dann):
    assert len(list((dann / "cache").rglob("*.pt"))) == 14  # 6 + 2 source, 6 target
    state = torch.load(dann / "models" / "model.pt", map_location="cpu", weights_only=False)
    assert any(k.startswith("domain_head.") for k in state["model"]) and 0.0 <= state["operating_point"]["threshold"] <= 1.0
    history = json.loads((dann / "train" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert 0 < h["train_label_loss"] < 10 and 0 < h["train_domain_loss"] < 10 and h["train_contrastive_loss"] == 0
    assert history[0]["train_lambda"] < history[1]["train_lambda"]
    log = (dann / "log.txt").read_text()
    lambdas = [float(v) for v in re.findall(r"Iter: \d+/\d+ -- .*lambda: ([0-9.]+)", log)]
    assert len(lambdas) == 6 and all(a < b for a, b in zip(lambdas, lambdas[1:])), lambdas  # 3 iterations x 2 epochs
    assert lambdas[-1] == pytest.approx(dann_lambda(1.0), abs=1e-4)
    expected = target_datalist(dann / "target", CLASS_MAP, ["NORMAL", "PNEUMONIA"], test_fraction=0.34, seed=0)
    metrics = json.loads((dann / "train" / "target_metrics.json").read_text())
    assert metrics["n"] == len(expected["test"]) == 2
    assert metrics["threshold"] == pytest.approx(state["operating_point"]["threshold"])
    assert json.loads((dann / "train" / "val_metrics.json").read_text())["n"] == 2


def test_bundle_dann_with_contrastive_term(dann):
    mtimes = {p: p.stat().st_mtime_ns for p in (dann / "cache").rglob("*.pt")}
    bundle("run", "training", *common_args(dann), "--output_dir", str(dann / "train_supcon"),
           "--ckpt_dir", str(dann / "models_supcon"), "--max_epochs", "1", "--batch_size", "4",
           "--contrastive_weight", "0.5")
    assert {p: p.stat().st_mtime_ns for p in (dann / "cache").rglob("*.pt")} == mtimes, "cache entries recomputed"
    (row,) = json.loads((dann / "train_supcon" / "history.json").read_text())
    assert row["train_contrastive_loss"] > 0  # a batch of 4 from 3 + 3 always holds a same-class pair
    assert row["train_loss"] > row["train_label_loss"]
    assert json.loads((dann / "train_supcon" / "target_metrics.json").read_text())["n"] == 2


def test_benchmark_medsam_aggregates_source_and_target_metrics_over_seeds(dann):
    """scripts/benchmark_medsam.py: pooling and DANN methods over 2 seeds from the cached embeddings of the run above;
    the frozen-head runs are also evaluated on the exact OpenVINO float32 embeddings (`--compare_backend`)."""
    from custom.models.export import openvino_supports_bf16

    datalist = json.loads((dann / "datalist.json").read_text())
    (dann / "bench_datalist.json").write_text(json.dumps({**datalist, "test": datalist["validation"]}))
    output = dann / "benchmark"
    args = [sys.executable, "scripts/benchmark_medsam.py", "--dataset_dir", str(SAMPLE), "--cache_dir", str(dann / "cache"),
            "--target_dataset_dir", str(dann / "target"), "--methods", "avg,dann", "--seeds", "0,1",
            "--output_dir", str(output), "--compare_backend", "openvino", "--results_file", str(dann / "medsam.json"),
            f"--extra=--datalist_file {dann / 'bench_datalist.json'} --max_epochs 1 --batch_size 2 --target_test_fraction 0.34"
            " --encoder_feature_stages []"]  # the frozen head on the embedding alone, as DANN: one cache serves both
    subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True, timeout=900)
    summary = json.loads((dann / "medsam.json").read_text())
    assert set(summary["test"]) == {"avg", "dann"} and set(summary["target"]) == {"dann"}, "target only for DANN methods"
    for split, method in (("test", "avg"), ("test", "dann"), ("target", "dann")):
        runs = [summary["runs"][f"{method}/seed{s}"][split] for s in (0, 1)]
        assert summary[split][method]["roc_auc"]["mean"] == pytest.approx((runs[0]["roc_auc"] + runs[1]["roc_auc"]) / 2)
    assert json.loads((output / "dann" / "seed1" / "eval" / "test_metrics.json").read_text())["n"] == 2
    compared = summary["runs"]["avg/seed0"]["openvino"]["test"]
    assert compared["roc_auc_change"] == pytest.approx(compared["roc_auc"] - summary["runs"]["avg/seed0"]["test"]["roc_auc"])
    assert "openvino" not in summary["runs"]["dann/seed0"], "domain methods are not re-evaluated"
    assert summary["backend_comparison"]["backend"] == "openvino"
    assert summary["backend_comparison"]["test"]["max_abs_roc_auc_change"] >= 0
    # bf16 CPUs: the exact backend adds entries for the 2 evaluation images; elsewhere both backends share them
    entries = 14 + (2 if openvino_supports_bf16() else 0)
    assert len(list((dann / "cache").rglob("*.pt"))) == entries, "the benchmark must reuse the embedding cache"
    again = subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    assert "| dann | 2 |" in again.stdout and "Epoch" not in again.stderr, "finished runs must be reused"
    assert "ROC-AUC change on openvino embeddings" in again.stdout


def test_benchmark_medsam_compares_values_of_a_config_id_and_scores_every_domain(dann, tmp_path):
    """`--vary lung_mode --values "none;crop"`: each method once per value (the lung-cropped encoder input gets cache
    entries of its own); `--domains_datalist`: every frozen run also scored on each domain of a datalist's test part,
    per run and as the mean over seeds."""
    datalist = json.loads((dann / "datalist.json").read_text())
    (tmp_path / "bench.json").write_text(json.dumps({**datalist, "test": datalist["validation"]}))
    adult = [{"image": str(p), "label": label, "class_name": name, "patient_id": p.stem, "domain": "adult"}
             for label, (folder, name) in enumerate(CLASS_MAP.items())
             for p in sorted((dann / "target" / folder).glob("*.png"))[:1]]
    (tmp_path / "domains.json").write_text(json.dumps({**datalist, "test": datalist["validation"] + adult}))
    cache = tmp_path / "cache"
    shutil.copytree(dann / "cache", cache)
    before = len(list(cache.rglob("*.pt")))
    args = [sys.executable, "scripts/benchmark_medsam.py", "--dataset_dir", str(SAMPLE), "--cache_dir", str(cache),
            "--methods", "avg", "--seeds", "0", "--vary", "lung_mode", "--values", "none;crop",
            "--output_dir", str(tmp_path / "benchmark"), "--results_file", str(tmp_path / "summary.json"),
            "--domains_dir", str(tmp_path), "--domains_datalist", str(tmp_path / "domains.json"),
            f"--extra=--datalist_file {tmp_path / 'bench.json'} --max_epochs 1 --batch_size 2 --encoder_feature_stages []"]
    result = subprocess.run(args, cwd=ROOT, check=True, capture_output=True, text=True, timeout=900)
    summary = json.loads((tmp_path / "summary.json").read_text())
    options = {"avg/lung_mode=none", "avg/lung_mode=crop"}
    assert set(summary["validation"]) == set(summary["test"]) == set(summary["domains"]) == options
    assert summary["winner"] in options
    for option in options:
        run = tmp_path / "benchmark" / Path(option) / "seed0"
        per_domain = json.loads((run / "eval_domains" / "test_metrics.json").read_text())["domains"]
        assert {name: m["n"] for name, m in per_domain.items()} == {"pediatric": 2, "adult": 2}
        for name in ("pediatric", "adult"):
            recorded = summary["runs"][f"{option}/seed0"]["domains"][name]["roc_auc"]
            assert recorded == per_domain[name]["roc_auc"] == summary["domains"][option][name]["roc_auc"]["mean"]
    # the crop embeds the 8 training / validation images again; both options embed the 2 adult images
    assert len(list(cache.rglob("*.pt"))) >= before + 8 + 2
    assert "Test part of domain adult" in result.stdout


def test_bundle_dann_with_augmentation_trains_live_encoder_stages_on_augmented_images(dann, tmp_path):
    """train_dann_augment.json: images (not the cache) through LiteMedSAM under strong MONAI augmentation, both domains;
    with trainable_stages=1 the encoder's neck adapts under the gradient reversal, earlier stages stay fixed."""
    from monai.bundle import ConfigParser

    from custom.medsam.encoders import build_encoder

    configs = "['configs/train.json','configs/train_medsam_frozen.json','configs/train_dann.json','configs/train_dann_augment.json']"
    args = ("--config_file", configs, "--datalist_file", str(dann / "datalist.json"),
            "--target_dataset_dir", str(dann / "target"), "--target_test_fraction", "0.34", "--make_plots", "False",
            "--resume", "False", "--trainable_stages", "1", "--batch_size", "2", "--max_epochs", "1",
            "--cache_dir", str(tmp_path / "cache"))
    result = bundle("run", "training", *args, "--output_dir", str(tmp_path / "train"), "--ckpt_dir", str(tmp_path / "models"))
    assert not (tmp_path / "cache").exists(), "images must go through the encoder, not the embedding cache"
    assert "lambda" in result.stderr + result.stdout
    parser = ConfigParser()
    parser.read_config([ROOT / "configs" / f for f in ("train.json", "train_medsam_frozen.json", "train_dann.json",
                                                       "train_dann_augment.json")])
    names = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing", lazy=False).transforms]
    assert {"RandAffined", "RandHistogramShiftd", "EncoderPreprocessd"} <= set(names), names
    state = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=False)["model"]
    original = build_encoder("lite").state_dict()
    changed = {k for k, v in original.items() if not torch.equal(v, state[f"encoder.{k}"])}
    assert changed and all(k.startswith("net.neck.") for k in changed), sorted(changed)[:5]
    history = json.loads((tmp_path / "train" / "history.json").read_text())
    assert history[0]["train_domain_loss"] > 0 and history[0]["train_label_loss"] > 0
    assert json.loads((tmp_path / "train" / "target_metrics.json").read_text())["n"] == 2
