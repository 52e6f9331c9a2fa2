"""AdaBN (`custom.adaptation.batchnorm`, `configs/adabn.json`) on the shipped model and real adult images of the
shared adult split: BatchNorm statistics change and no weight does, the target images reach it without labels, and
`run evaluating` with adabn.json merged evaluates the adapted network."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from monai.data import DataLoader, Dataset

from custom.adaptation import adapt_batchnorm, unlabelled_images
from custom.adaptation.batchnorm import batchnorm_layers
from custom.data.datalists import load_datalist, write_datalist
from custom.models.trained_model import bundle_config, load_bundle

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CONFIGS = [str(ROOT / "configs" / n) for n in ("train.json", "evaluate.json")]

pytestmark = pytest.mark.usefixtures("single_thread")


def adult_datalist(per_class: int = 4) -> dict:
    """The first `per_class` NORMAL and PNEUMONIA items of each part of the shared adult split."""
    full = load_datalist(ROOT / "data" / "datalists" / "adult_split.json", base_dir=SHARED)
    parts = {split: [i for c in (0, 1) for i in [i for i in full[split] if i["label"] == c][:per_class]]
             for split in ("training", "validation", "test")}
    return {"class_names": full["class_names"], **parts}


def test_adabn_changes_batchnorm_statistics_and_no_weight():
    model = load_bundle(ROOT)
    net = model.network.train()  # the mode must be restored afterwards
    weights = {k: v.clone() for k, v in net.named_parameters()}
    stats = {k: v.clone() for k, v in net.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    items = unlabelled_images(adult_datalist(), "training", "adult")
    loader = DataLoader(Dataset(items, model.preprocessing), batch_size=4)
    assert adapt_batchnorm(net, loader, "cpu") == len(items) == 8
    assert net.training and all(bn.training for bn in batchnorm_layers(net))
    assert all(torch.equal(weights[k], v) for k, v in net.named_parameters())
    after = net.state_dict()
    assert all(not torch.allclose(after[k], v) for k, v in stats.items())
    # the plain average over both batches, not an exponential one: the first BatchNorm's running mean is the mean of
    # the first convolution's output over all 8 images; the layer's momentum is restored
    images = torch.cat([b["image"] for b in loader])
    with torch.no_grad():
        expected = net.net.conv1(images).mean((0, 2, 3))
    torch.testing.assert_close(net.net.bn1.running_mean, expected, rtol=1e-4, atol=1e-5)
    assert net.net.bn1.momentum == 0.1


def test_unlabelled_images_keep_only_the_image_of_the_domain():
    datalist = {"training": [{"image": "a.png", "label": 0, "class_name": "NORMAL", "domain": "adult"},
                             {"image": "b.png", "label": 1, "class_name": "PNEUMONIA", "domain": "pediatric"}]}
    assert unlabelled_images(datalist, "training", "adult") == [{"image": "a.png"}]
    assert unlabelled_images(datalist, "training") == [{"image": "a.png"}, {"image": "b.png"}]
    with pytest.raises(ValueError, match=r"no 'training' items of domain 'rsna' .*\['adult', 'pediatric'\]"):
        unlabelled_images(datalist, "training", "rsna")
    with pytest.raises(ValueError, match="AdaBN has no target images: no 'validation' items"):
        unlabelled_images(datalist, "validation")
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        adapt_batchnorm(torch.nn.Linear(2, 2), [], "cpu")


def test_evaluating_with_adabn_config_uses_adult_images_without_labels(tmp_path):
    from monai.bundle import run as bundle_run

    write_datalist(adult_datalist(), tmp_path / "adult.json")
    common = dict(datalist_file=str(tmp_path / "adult.json"),
                  ckpt_path=str(ROOT / "models" / "model.pt"), train_output_dir=str(tmp_path / "none"),
                  eval_split="test", bootstrap_replicates=20, batch_size=8, num_workers=0)
    parser = bundle_config(ROOT, [*CONFIGS, str(ROOT / "configs" / "adabn.json")], **common)
    read = parser.get_parsed_content("adabn_dataset").data
    assert read and all(set(item) == {"image"} for item in read)  # what AdaBN reads: images only
    assert {Path(i["image"]).name for i in read} == {Path(i["image"]).name for i in adult_datalist()["training"]}

    for name, configs in (("source", CONFIGS), ("adabn", [*CONFIGS, str(ROOT / "configs" / "adabn.json")])):
        bundle_run("evaluating", config_file=configs, bundle_root=str(ROOT), output_dir=str(tmp_path / name), **common)
    source, adapted = (pd.read_csv(tmp_path / n / "test_predictions.csv") for n in ("source", "adabn"))
    assert list(source["file"]) == list(adapted["file"])
    assert (source["prob_PNEUMONIA"] - adapted["prob_PNEUMONIA"]).abs().max() > 1e-3  # AdaBN was applied
    metrics = json.loads((tmp_path / "adabn" / "test_metrics.json").read_text())
    assert metrics["n"] == 8 and metrics["threshold"] == json.loads(
        (tmp_path / "source" / "test_metrics.json").read_text())["threshold"]  # the checkpoint's own threshold
