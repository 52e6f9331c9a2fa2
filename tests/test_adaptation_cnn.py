"""Unsupervised adaptation of the CNN end to end on images (`configs/adapt_cnn.json`,
`custom.adaptation.engines.DANNTrainer` with a `DomainDiscriminator`, CORAL, MMD): gradient reversal on the CNN's own
features, the alignment losses, what the trainer reads of the adult domain, and real iterations on real images."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from custom.adaptation.domain import DomainDiscriminator
from custom.adaptation.engines import DANNTrainer
from custom.adaptation.losses import coral_loss, mmd_loss
from custom.data import domain_items
from custom.data.datalists import write_datalist
from custom.evaluation.benchmark import joint_datalist
from custom.models.trained_model import bundle_config, load_bundle

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "data" / "sample"
CONFIGS = [str(ROOT / "configs" / n) for n in ("train.json", "adapt_cnn.json")]

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """(8, 1, 128, 128): 4 adult and 4 pediatric real images through the shipped model's preprocessing."""
    from tests.test_adabn import adult_datalist

    model = load_bundle(ROOT)
    adult = [i["image"] for i in adult_datalist(per_class=2)["training"]]
    pediatric = sorted((SAMPLE / "test").rglob("*.jpeg"))[:4]
    return torch.stack([model.preprocessing({"image": str(p)})["image"] for p in [*pediatric, *adult]])


def test_cnn_features_feed_the_label_head_exactly():
    model = load_bundle(ROOT)
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(model.network.label_head(model.network.forward_features(x)), model.network(x))
    assert model.network.forward_features(x).shape == (2, model.network.feature_dim) == (2, 512)


def test_gradient_reversal_on_cnn_features_flips_and_scales_and_reaches_the_extractor(images):
    net = load_bundle(ROOT).network.train()
    disc = DomainDiscriminator(net.feature_dim)
    domains = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    features = net.forward_features(images)
    plain = features.detach().requires_grad_()
    F.cross_entropy(disc.head(plain), domains).backward()
    for lambda_ in (0.5, 1.0):
        reversed_ = features.detach().requires_grad_()
        disc.grl.lambda_ = lambda_
        F.cross_entropy(disc(reversed_), domains).backward()
        torch.testing.assert_close(reversed_.grad, -lambda_ * plain.grad)
    # the domain loss alone trains the feature extractor (conv1 .. layer4), never the label head
    net.zero_grad()
    F.cross_entropy(disc(features), domains).backward()
    assert net.net.conv1.weight.grad.abs().sum() > 0 and net.net.layer4[1].conv2.weight.grad.abs().sum() > 0
    assert net.net.fc.weight.grad is None


def test_coral_and_mmd_measure_the_domain_gap_of_real_features(images):
    net = load_bundle(ROOT).network.eval()
    with torch.no_grad():
        features = net.forward_features(images)
    pediatric, adult = features[:4], features[4:]
    for loss in (coral_loss, mmd_loss):
        assert loss(pediatric, pediatric).item() == pytest.approx(0.0, abs=1e-6)
        assert loss(pediatric, adult).item() > 0
        shifted = pediatric.clone().requires_grad_()
        value = loss(shifted, adult)
        value.backward()
        assert shifted.grad.abs().sum() > 0  # the loss reaches the features it aligns


def test_trainer_refuses_what_it_cannot_train():
    net = load_bundle(ROOT).network
    common = dict(device="cpu", max_epochs=1, train_data_loader=[], network=net, optimizer=torch.optim.SGD(
        net.parameters(), lr=0.1), loss_function=torch.nn.CrossEntropyLoss(), target_data_loader=[])
    with pytest.raises(ValueError, match="adversarial alignment needs a domain_head: TorchvisionClassifier"):
        DANNTrainer(**common)
    with pytest.raises(ValueError, match="unknown alignment 'kl'"):
        DANNTrainer(alignment="kl", **common)
    with pytest.raises(ValueError, match="contrastive_weight > 0 needs a network with a projection head"):
        DANNTrainer(alignment="coral", contrastive_weight=1.0, **common)
    DANNTrainer(alignment="mmd", **common)
    DANNTrainer(domain_head=DomainDiscriminator(net.feature_dim), **common)


def test_domain_items_names_the_domains_it_found():
    datalist = {"training": [{"image": "a.png", "label": 0, "class_name": "NORMAL", "domain": "adult"}]}
    assert domain_items(datalist, "training", "adult", labelled=False) == [{"image": "a.png"}]
    with pytest.raises(ValueError, match=r"no 'training' items of domain 'pediatric'.*\['adult'\]"):
        domain_items(datalist, "training", "pediatric")


def test_domain_generalising_augmentation_extends_the_training_chain():
    """configs/augment_domain.json appends appearance transforms to train.json's augmentation; on a real adult image
    every draw stays a (1, H, W) image of the config's image_size in [0, 1], and the draws differ."""
    from tests.test_adabn import adult_datalist

    parser = bundle_config(ROOT, [str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "augment_domain.json")],
                           dataset_dir=str(SAMPLE))
    names = [type(t).__name__ for t in parser.get_parsed_content("augmentation")]
    assert names[:2] == ["RandAffined", "RandAdjustContrastd"]  # train.json's own come first
    assert {"RandHistogramShiftd", "RandGaussianSmoothd", "RandSimulateLowResolutiond"} <= set(names)
    chain = parser.get_parsed_content("train#preprocessing")
    chain.set_random_state(0)
    image = adult_datalist(per_class=1)["training"][0]["image"]
    draws = [chain({"image": image})["image"] for _ in range(6)]
    assert all(d.shape == (1, *parser["image_size"]) and 0 <= d.min() and d.max() <= 1 for d in draws)
    assert len({round(float(d.mean()), 5) for d in draws}) == 6


@pytest.fixture(scope="module")
def two_domain_datalist(tmp_path_factory) -> str:
    """The embedded pediatric sample + 3 + 3 images per part of the real adult split, tagged by domain."""
    from tests.test_adabn import adult_datalist

    folder = tmp_path_factory.mktemp("two_domains")
    write_datalist(adult_datalist(per_class=3), folder / "adult.json")
    return joint_datalist(str(SAMPLE), str(folder / "adult.json"), str(SHARED), folder / "pediatric_adult.json")


def test_config_reads_adult_images_without_labels_and_selects_on_pediatric_validation(two_domain_datalist):
    parser = bundle_config(ROOT, CONFIGS, dataset_dir=str(SHARED), datalist_file=two_domain_datalist, num_workers=0)
    full = json.loads(Path(two_domain_datalist).read_text())
    trainer = parser.get_parsed_content("train#trainer")
    target = trainer.target_data_loader.dataset.data
    assert target and all(set(item) == {"image"} for item in target)  # what the domain loss reads: images only
    assert {Path(i["image"]).name for i in target} == {Path(i["image"]).name for i in full["training"]
                                                       if i["domain"] == "adult"}
    assert {i["domain"] for i in trainer.data_loader.dataset.data} == {"pediatric"}  # labels: children only
    assert {i["domain"] for i in parser.get_parsed_content("validate#dataset").data} == {"pediatric"}
    assert trainer.alignment == "adversarial" and isinstance(trainer.domain_head, DomainDiscriminator)
    assert any(p is next(trainer.domain_head.parameters()) for g in trainer.optimizer.param_groups for p in g["params"])
    # evaluation merges evaluate.json last: every domain of the split is evaluated again
    evaluation = bundle_config(ROOT, [*CONFIGS, str(ROOT / "configs" / "evaluate.json")], dataset_dir=str(SHARED),
                               datalist_file=two_domain_datalist, num_workers=0, eval_split="validation")
    assert {i["domain"] for i in evaluation.get_parsed_content("validate#dataset").data} == {"pediatric", "adult"}


@pytest.mark.parametrize("alignment", ["adversarial", "coral", "mmd"])
def test_adaptation_trains_from_the_shipped_pediatric_model(two_domain_datalist, tmp_path, alignment):
    """Two real iterations (4 pediatric + 4 adult images each, 64 px) from the shipped pediatric weights: the loss
    terms are logged, the weights move, the domain head is saved for resume and provenance names the start
    checkpoint."""
    from monai.bundle import run as bundle_run

    start = torch.load(ROOT / "models" / "model_pediatric.pt", weights_only=True)["model"]
    bundle_run("training", config_file=CONFIGS, bundle_root=str(ROOT), dataset_dir=str(SHARED),
               datalist_file=two_domain_datalist, output_dir=str(tmp_path / "train"), ckpt_dir=str(tmp_path / "models"),
               alignment=alignment, max_epochs=1, epoch_length=2, batch_size=4, num_workers=0, make_plots=False)
    saved = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    assert saved["domain_head"] and saved["provenance"]["init_checkpoint"]["path"].endswith("models/model_pediatric.pt")
    moved = [k for k, v in saved["model"].items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert "net.conv1.weight" in moved and "net.fc.weight" in moved
    epoch = json.loads((tmp_path / "train" / "history.json").read_text())[-1]
    assert epoch["train_domain_loss"] > 0 and epoch["train_label_loss"] > 0
