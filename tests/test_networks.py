"""Tests for custom.models.networks: shapes and gradients, local pretrained weights, layer freezing.

Never downloads weights: every "pretrained" file is a seeded random torchvision state dict saved to tmp_path.
"""

from pathlib import Path

import pytest
import torch
import torchvision
from monai.networks.nets import DenseNet121
from torch import nn

from custom.data.transforms import LoadCXR
from custom.models.networks import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SmallCNN,
    TorchvisionClassifier,
    freeze_all_but_last,
    load_torchvision_weights,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
KERMANY_TRAIN = SHARED / "pediatric_cxr" / "train"


pytestmark = pytest.mark.usefixtures("single_thread")


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def check_forward_backward(model: nn.Module, in_channels: int, num_classes: int, size: int = 224):
    torch.manual_seed(0)
    x = torch.rand(2, in_channels, size, size)
    model.train()
    logits = model(x)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, num_classes - 1]))
    loss.backward()
    conv = first_conv(model)
    assert conv.in_channels == in_channels
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    assert conv.weight.grad.abs().sum() > 0  # the gradient reaches the first layer
    last = [p for p in model.parameters() if p.requires_grad][-1]
    assert last.grad is not None and last.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("in_channels, num_classes", [(1, 2), (3, 3)])
def test_small_cnn(in_channels, num_classes):
    check_forward_backward(SmallCNN(in_channels=in_channels, num_classes=num_classes), in_channels, num_classes)


@pytest.mark.parametrize(
    "arch, in_channels, num_classes, size",
    [
        ("resnet18", 1, 2, 224),
        ("resnet18", 3, 3, 224),
        ("resnet50", 1, 2, 224),
        ("resnet50", 3, 3, 224),
        ("vgg16", 1, 2, 64),  # adaptive pooling: a small input keeps vgg16 cheap on CPU
        ("vgg16", 3, 3, 64),
    ],
)
def test_torchvision_classifier(arch, in_channels, num_classes, size):
    model = TorchvisionClassifier(arch, in_channels=in_channels, num_classes=num_classes)
    head = model.net.fc if arch.startswith("resnet") else model.net.classifier[-1]
    assert head.out_features == num_classes
    check_forward_backward(model, in_channels, num_classes, size)


def test_monai_densenet121():
    model = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2)
    check_forward_backward(model, 1, 2)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="arch"):
        TorchvisionClassifier("resnet34")
    with pytest.raises(ValueError, match="in_channels"):
        TorchvisionClassifier("resnet18", in_channels=2)


# ---------------------------------------------------------------------------------------------------- pretrained weights
@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    torch.manual_seed(1234)
    state = torchvision.models.resnet18(weights=None).state_dict()
    for key, value in state.items():  # make BN statistics non-default so loading them is visible too
        if key.endswith(("running_mean", "running_var")):
            state[key] = value + torch.rand_like(value)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("in_channels", [3, 1])
def test_resnet18_local_pretrained(resnet18_weights, in_channels):
    path, saved = resnet18_weights
    torch.manual_seed(99)  # a different random init than the saved weights
    model = TorchvisionClassifier("resnet18", in_channels=in_channels, num_classes=2, pretrained=str(path))
    loaded = model.net.state_dict()
    assert set(loaded) == set(saved)
    for key, value in saved.items():
        if key.startswith("fc."):
            continue
        if key == "conv1.weight" and in_channels == 1:
            assert loaded[key].shape == (64, 1, 7, 7)
            torch.testing.assert_close(loaded[key], value.sum(1, keepdim=True))
        else:
            assert torch.equal(loaded[key], value), key
    assert model.net.fc.weight.shape == (2, 512)  # new head, not the 1000-class one
    assert not torch.equal(model.net.fc.weight, saved["fc.weight"][:2])


def test_state_dict_wrapped_in_checkpoint(tmp_path, resnet18_weights):
    _, saved = resnet18_weights
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": saved}, path)
    loaded = load_torchvision_weights("resnet18", str(path))
    assert set(loaded) == set(saved)
    assert torch.equal(loaded["layer3.0.conv1.weight"], saved["layer3.0.conv1.weight"])


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(FileNotFoundError) as excinfo:
        TorchvisionClassifier("resnet18", pretrained=str(path))
    assert str(path) in str(excinfo.value)


@pytest.fixture(scope="module")
def vgg16_weights(tmp_path_factory):
    """A full vgg16 state dict, cheap to write: random convolutions, the two big linear layers are constant
    (stored as expanded scalars: a few bytes on disk instead of 470 MB)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.vgg16(weights=None).state_dict().items()}
    generator = torch.Generator().manual_seed(4321)
    state = {}
    for key, shape in shapes.items():
        if key in ("classifier.0.weight", "classifier.3.weight"):
            state[key] = torch.tensor(0.0123).expand(shape)
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
    torch.save(state, path)
    assert path.stat().st_size < 100e6
    return path, state


@pytest.mark.parametrize("in_channels", [1, 3])
def test_vgg16_local_pretrained(vgg16_weights, in_channels):
    path, saved = vgg16_weights
    model = TorchvisionClassifier("vgg16", in_channels=in_channels, num_classes=3, pretrained=str(path))
    net = model.net
    conv0 = net.features[0]
    if in_channels == 1:
        assert conv0.weight.shape == (64, 1, 3, 3)
        torch.testing.assert_close(conv0.weight.data, saved["features.0.weight"].sum(1, keepdim=True))
    else:
        assert torch.equal(conv0.weight.data, saved["features.0.weight"])
    assert torch.equal(conv0.bias.data, saved["features.0.bias"])
    assert torch.equal(net.features[28].weight.data, saved["features.28.weight"])
    assert torch.equal(net.classifier[0].weight.data, saved["classifier.0.weight"])
    assert torch.equal(net.classifier[3].bias.data, saved["classifier.3.bias"])
    assert net.classifier[6].weight.shape == (3, 4096)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_normalize_defaults_on_when_pretrained(resnet18_weights, in_channels):
    path, _ = resnet18_weights
    mean = torch.tensor(IMAGENET_MEAN)
    std = torch.tensor(IMAGENET_STD)
    if in_channels == 1:
        mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
    pretrained = TorchvisionClassifier("resnet18", in_channels=in_channels, pretrained=str(path)).eval()
    torch.testing.assert_close(pretrained.mean.flatten(), mean)
    torch.testing.assert_close(pretrained.std.flatten(), std)
    # the forward pass really normalises: same result as the bare network on normalised input
    # the forward pass really normalises: the first convolution sees (x - mean) / std
    seen = []
    pretrained.net.conv1.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    x = torch.rand(1, in_channels, 32, 32)
    with torch.no_grad():
        pretrained(x)
    torch.testing.assert_close(seen[0], (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))

    scratch = TorchvisionClassifier("resnet18", in_channels=in_channels)
    assert torch.equal(scratch.mean, torch.zeros(1, in_channels, 1, 1))
    assert torch.equal(scratch.std, torch.ones(1, in_channels, 1, 1))
    off = TorchvisionClassifier("resnet18", in_channels=in_channels, pretrained=str(path), normalize=False)
    assert torch.equal(off.mean, torch.zeros(1, in_channels, 1, 1))
    on = TorchvisionClassifier("resnet18", in_channels=in_channels, normalize=True)
    torch.testing.assert_close(on.mean.flatten(), mean)


# ---------------------------------------------------------------------------------------------------- freezing
def check_frozen(model: TorchvisionClassifier, n_units: int, trainable: int):
    units = model.units()
    assert len(units) == n_units
    for i, unit in enumerate(units):
        params = list(unit.parameters())
        assert params, f"unit {i} has no parameters"
        expected = i >= n_units - trainable
        assert all(p.requires_grad == expected for p in params), (i, trainable)
    # the units cover every parameter of the network: nothing outside them stays trainable by accident
    in_units = {id(p) for u in units for p in u.parameters()}
    assert in_units == {id(p) for p in model.parameters()}


def test_resnet_units_and_freezing():
    model = TorchvisionClassifier("resnet18", in_channels=1)
    n = model.net
    units = model.units()
    assert [list(u.parameters()) for u in units[1:]] == [list(m.parameters()) for m in
                                                           (n.layer1, n.layer2, n.layer3, n.layer4, n.fc)]
    assert {id(p) for p in units[0].parameters()} == {id(p) for m in (n.conv1, n.bn1) for p in m.parameters()}
    assert all(p.requires_grad for p in model.parameters())  # trainable_layers=None trains everything
    for trainable in range(7):
        check_frozen(TorchvisionClassifier("resnet18", in_channels=1, trainable_layers=trainable), 6, trainable)
    check_frozen(TorchvisionClassifier("resnet50", in_channels=3, num_classes=3, trainable_layers=2), 6, 2)


def test_vgg16_units_and_freezing():
    model = TorchvisionClassifier("vgg16", in_channels=1, trainable_layers=3)
    units = model.units()
    assert [type(u) for u in units] == [nn.Conv2d] * 13 + [nn.Linear] * 3
    assert units[0] is model.net.features[0] and units[-1] is model.net.classifier[6]
    check_frozen(model, 16, 3)  # the 3 linear layers train, all 13 convolutions are frozen
    for trainable in (0, 1, 4, 16):
        freeze_all_but_last(model.units(), trainable)
        check_frozen(model, 16, trainable)


@pytest.mark.parametrize("arch, bad", [("resnet18", 7), ("resnet18", -1), ("vgg16", 17)])
def test_trainable_layers_out_of_range(arch, bad):
    with pytest.raises(ValueError, match="trainable_layers"):
        TorchvisionClassifier(arch, trainable_layers=bad)


@pytest.fixture(scope="module")
def real_batch():
    """Two real radiographs (NORMAL, PNEUMONIA) as a (2, 1, 224, 224) batch in [0, 1]."""
    loader = LoadCXR()
    paths = [sorted((KERMANY_TRAIN / label).glob("*.jpeg"))[0] for label in ("NORMAL", "PNEUMONIA")]
    images = torch.stack([loader(p).as_tensor() / 255.0 for p in paths])
    assert images.shape == (2, 1, 224, 224)
    return images, torch.tensor([0, 1])


@pytest.mark.parametrize("trainable", [2, 1])
def test_optimizer_step_only_changes_trainable_units(real_batch, trainable):
    torch.manual_seed(0)
    model = TorchvisionClassifier("resnet18", in_channels=1, num_classes=2, trainable_layers=trainable)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images, labels = real_batch
    model.train()
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    trainable_names = {name for name, p in model.named_parameters() if p.requires_grad}
    expected_prefixes = {2: ("net.layer4.", "net.fc."), 1: ("net.fc.",)}[trainable]
    assert trainable_names == {name for name in before if name.startswith(expected_prefixes)}
    for name, p in model.named_parameters():
        if name in trainable_names:
            assert not torch.equal(p, before[name]), f"trainable {name} did not change"
        else:
            assert p.grad is None
            assert torch.equal(p, before[name]), f"frozen {name} changed"
