"""`custom.models.trained_model`, the one prediction contract: checkpoints written by the training handler load back through
`load_bundle`, its decisions are the inference config's on real images, mismatched or bad checkpoints are named, and
no other module reads a classifier checkpoint or re-codes the decision rule."""

import ast
import csv
import datetime
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.bundle import run
from monai.handlers import CheckpointSaver

from custom.medsam.encoders import feature_channels
from custom.medsam.heads import EmbeddingClassifier
from custom.models.networks import TorchvisionClassifier
from custom.models.trained_model import (
    OperatingPoint,
    bundle_config,
    bundle_info,
    is_positive,
    load_bundle,
    load_checkpoint,
    load_weights,
)

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT.parent / "shared" / "data" / "pediatric_cxr" / "test"
MEDSAM = ["configs/inference.json", "configs/inference_medsam.json"]

pytestmark = [pytest.mark.skipif(not TEST.is_dir(), reason=f"shared data not found at {TEST}"),
              pytest.mark.usefixtures("single_thread")]


def save_with_training_handler(directory: Path, save_dict: dict) -> Path:
    """`directory/model.pt` written by the `CheckpointSaver` that configs/train.json uses (its final save); with
    two or more entries, as there, ignite saves ``{name: state_dict}``."""
    engine = Engine(lambda engine, batch: None)
    CheckpointSaver(str(directory), save_dict, save_final=True, final_filename="model.pt").attach(engine)
    engine.run([0], max_epochs=1)
    return directory / "model.pt"


def test_operating_point_decides_binary_at_threshold_else_argmax():
    point = OperatingPoint(0.3, "youden")
    probs = np.array([[0.7, 0.3], [0.71, 0.29], [0.9, 0.1]], dtype=np.float32)
    assert point.decide(probs).tolist() == [1, 0, 0]  # P(positive) == threshold is positive
    assert point.decide(torch.tensor([[0.2, 0.8]])).tolist() == [1] and point.decide(np.zeros((0, 2))).size == 0
    normal_positive = OperatingPoint(0.3, "youden", positive_index=0)
    assert normal_positive.decide(probs).tolist() == [0, 0, 0] and normal_positive.decide([[0.2, 0.8]]).tolist() == [1]
    assert point.decide([[0.1, 0.5, 0.4], [0.6, 0.1, 0.3]]).tolist() == [1, 0]  # three classes: argmax
    assert is_positive([0.2, 0.3, 0.4], 0.3).tolist() == [False, True, True]
    with pytest.raises(ValueError, match=r"\(N, C\) class probabilities, got shape \(2,\)"):
        point.decide([0.7, 0.3])
    restored = OperatingPoint()
    restored.load_state_dict(point.state_dict())
    assert restored.state_dict() == {"threshold": 0.3, "method": "youden", "positive_index": 1}
    assert OperatingPoint.from_checkpoint(None).state_dict() == {"threshold": 0.5, "method": "default",
                                                                 "positive_index": 1}


def test_training_handler_checkpoint_round_trips_through_load_bundle(tmp_path):
    torch.manual_seed(0)
    network = TorchvisionClassifier("resnet18", in_channels=1, num_classes=2)  # the inference config's network_def
    point = OperatingPoint(0.37, "youden")
    path = save_with_training_handler(tmp_path, {"model": network, "operating_point": point})
    model = load_bundle(ROOT, ckpt_path=path)
    loaded = model.network.state_dict()
    assert loaded.keys() == network.state_dict().keys()
    for name, tensor in network.state_dict().items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)
    assert not model.network.training
    assert model.operating_point.state_dict() == point.state_dict()
    meta = json.loads((ROOT / "configs" / "metadata.json").read_text())
    assert model.class_names == ["NORMAL", "PNEUMONIA"] == bundle_info(ROOT)["class_names"]
    assert bundle_info(ROOT) == {"name": meta["name"], "version": meta["version"], "class_names": model.class_names}
    assert model.provenance is None and model.config["ckpt_path"] == str(path)


def test_shipped_model_decides_as_the_inference_config_on_real_images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("NORMAL", "PNEUMONIA"):
        for image in sorted((TEST / name).glob("*.jpeg"))[:3]:
            shutil.copy(image, folder / image.name)
    # `python -m monai.bundle run --config_file configs/inference.json --dataset_dir ... --output_dir ...`
    run("run", config_file=str(ROOT / "configs" / "inference.json"), bundle_root=str(ROOT), dataset_dir=str(folder),
        output_dir=str(tmp_path / "out"))
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    model = load_bundle(ROOT)
    stored = torch.load(ROOT / "models" / "model.pt", map_location="cpu", weights_only=True)["operating_point"]
    assert model.operating_point.state_dict() == stored
    images = torch.stack([model.preprocessing({"image": row["file"]})["image"] for row in rows])
    probs = model.probabilities(images).numpy()  # through the config's inferer, at its precision
    written = np.array([[float(row[f"prob_{name}"]) for name in model.class_names] for row in rows])
    np.testing.assert_allclose(probs, written, atol=1e-4)
    decided = [model.class_names[i] for i in model.operating_point.decide(probs)]
    assert decided == [row["predicted_label"] for row in rows] and len(rows) == 6
    assert decided == ["PNEUMONIA" if p >= stored["threshold"] else "NORMAL" for p in probs[:, 1]]


def test_wrong_architecture_is_named_with_both_shapes(tmp_path):
    three_class = TorchvisionClassifier("resnet18", in_channels=1, num_classes=3)
    path = save_with_training_handler(tmp_path, {"model": three_class, "operating_point": OperatingPoint()})
    with pytest.raises(ValueError) as err:
        load_bundle(ROOT, ckpt_path=path)
    message = str(err.value)
    assert message.startswith(f"{path}: 'model' weights do not fit the network TorchvisionClassifier")
    assert "'net.fc.weight' has shape (3, 512) in the checkpoint but (2, 512) in the network" in message
    with pytest.raises(ValueError, match=r"^head\.pt: 'model' weights do not fit .* missing from the checkpoint"):
        load_weights(TorchvisionClassifier("resnet18", in_channels=1, num_classes=2),
                     {"model": EmbeddingClassifier("avg").state_dict()}, source="head.pt")


def test_head_only_checkpoint_loads_into_the_medsam_classifier_and_other_pooling_is_named(tmp_path):
    torch.manual_seed(0)
    channels = feature_channels((1, 2))  # 736: the MedSAM configs' encoder_feature_stages
    head = EmbeddingClassifier("avg", num_classes=2, channels=channels)
    path = save_with_training_handler(tmp_path, {"model": head, "operating_point": OperatingPoint(0.42, "youden")})
    with pytest.raises(ValueError, match=r"pooling\.conv\.0\.weight' \(128, 736, 3, 3\) of the network is missing"):
        load_bundle(ROOT, MEDSAM, ckpt_path=path)  # the default pooling is conv
    model = load_bundle(ROOT, MEDSAM, ckpt_path=path, pooling="avg")
    for name, tensor in head.state_dict().items():
        torch.testing.assert_close(model.network.classifier.state_dict()[name], tensor, rtol=0, atol=0)
    assert model.operating_point.threshold == 0.42
    other = tmp_path / "avgmax"
    other.mkdir()
    path = save_with_training_handler(other, {"model": EmbeddingClassifier("avgmax", num_classes=2, channels=channels),
                                              "operating_point": OperatingPoint()})
    with pytest.raises(ValueError) as err:
        load_weights(model.network.classifier, path)
    assert str(err.value).startswith(f"{path}: 'model' weights do not fit the network EmbeddingClassifier")
    assert "in the checkpoint but (" in str(err.value) and f"(128, {2 * channels})" in str(err.value)


def test_medsam_configs_load_the_shipped_head_by_default():
    model = load_bundle(ROOT, MEDSAM)
    assert Path(model.config.get_parsed_content("ckpt_path")).resolve() == ROOT / "models" / "medsam_head.pt"
    assert model.provenance["seed"] == 0 and not model.provenance["git"]["dirty"]
    assert type(model.network.classifier.pooling).__name__ == "ConvAttentionPool"
    assert model.provenance["config"]["encoder_feature_stages"] == [1, 2]  # the 0.14.0 validation winner
    assert model.network.classifier.pooling.conv[0].in_channels == feature_channels((1, 2))


def test_medsam_configs_run_eager_encoders_on_one_stream_without_being_told():
    """Concurrent sessions exist only for ONNX Runtime / OpenVINO: the MedSAM configs default to 2 streams there and
    to 1 for the eager backends, so ``--encoder_backend torch`` alone builds the encoder (the head loads on it)."""
    for configs in (MEDSAM, ["configs/train.json", "configs/train_medsam_frozen.json"]):
        assert bundle_config(ROOT, configs).get_parsed_content("encoder_streams") == 2
        assert bundle_config(ROOT, configs, encoder_backend="torch-bf16").get_parsed_content("encoder_streams") == 1
    model = load_bundle(ROOT, MEDSAM, encoder_backend="torch")
    assert type(model.network.encoder).__name__ == "LiteMedSAMEncoder"  # eager: no sessions to run concurrently


def refused_bundle_run(tmp_path: Path, configs: list[str], **overrides) -> str:
    """Runs the bundle's own workflow (`run` for inference.json, else `evaluating`) on one real test image and returns
    the message of the ValueError its config expressions raised (the test fails if the run does not fail)."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    shutil.copy(next((TEST / "NORMAL").glob("*.jpeg")), images)
    with pytest.raises(RuntimeError) as err:
        run(config_file=[str(ROOT / c) for c in configs], bundle_root=str(ROOT), dataset_dir=str(images),
            output_dir=str(tmp_path / "out"), meta_file=str(ROOT / "configs" / "metadata.json"),
            logging_file=str(ROOT / "configs" / "logging.conf"),
            run_id="run" if "configs/inference.json" in configs else "evaluating", **overrides)
    return str(err.value.__cause__)


def test_a_head_trained_on_another_map_size_is_refused_naming_both(tmp_path):
    """The weights of a head fit any map size: the training run's map_size (provenance) is what tells them apart."""
    checkpoint = load_checkpoint(ROOT / "models" / "medsam_head.pt")
    checkpoint["provenance"]["config"]["map_size"] = 8
    torch.save(checkpoint, tmp_path / "head8.pt")
    message = r"head8\.pt: trained with map_size = 8, but this config has map_size = 16; run it with --map_size 8"
    with pytest.raises(ValueError, match=message):
        load_bundle(ROOT, MEDSAM, ckpt_path=tmp_path / "head8.pt")
    load_bundle(ROOT, MEDSAM, ckpt_path=tmp_path / "head8.pt", map_size=8)  # its own setting loads
    for configs in (MEDSAM, ["configs/train.json", "configs/train_medsam_frozen.json", "configs/evaluate.json"]):
        refusal = refused_bundle_run(tmp_path, configs, ckpt_path=str(tmp_path / "head8.pt"),
                                     cache_dir=str(tmp_path / "cache"))
        assert re.search(message, refusal), refusal


def test_a_cnn_runs_only_at_the_image_size_it_was_trained_at(tmp_path):
    """A ResNet18's weights fit any input size (global pooling): the training run's image_size (provenance) is what
    tells a 224 px model from a 128 px one. Inference and evaluation refuse the shipped model at another size, naming
    both; the seed ensemble, whose members were trained at 128 px, runs at 128 px."""
    model = load_bundle(ROOT, "configs/inference.json")
    assert model.provenance["config"]["image_size"] == [224, 224] == model.config["image_size"]
    message = (r"model\.pt: trained with image_size = \[224, 224\], but this config has image_size = \[128, 128\]; "
               r"run it with --image_size \[224, 224\]")
    with pytest.raises(ValueError, match=message):
        load_bundle(ROOT, "configs/inference.json", image_size=[128, 128])
    refusal = refused_bundle_run(tmp_path, ["configs/train.json", "configs/evaluate.json"],
                                 ckpt_path=str(ROOT / "models" / "model.pt"), image_size=[128, 128])
    assert re.search(message, refusal), refusal
    assert load_bundle(ROOT, ["configs/inference.json", "configs/ensemble.json"]).config["image_size"] == [128, 128]


def test_a_head_on_lung_cropped_embeddings_runs_behind_the_crop_and_only_there(tmp_path):
    """The MedSAM image configs put the lung step before the encoder when asked (`--lung_mode crop`); the run's
    lung_mode in the head's provenance must match, either way."""
    checkpoint = load_checkpoint(ROOT / "models" / "medsam_head.pt")
    checkpoint["provenance"]["config"]["lung_mode"] = "crop"
    torch.save(checkpoint, tmp_path / "head_crop.pt")
    with pytest.raises(ValueError, match=r"head_crop\.pt: trained with lung_mode = 'crop', but this config has "
                                         r"lung_mode = 'none'; run it with --lung_mode 'crop'"):
        load_bundle(ROOT, MEDSAM, ckpt_path=tmp_path / "head_crop.pt")
    with pytest.raises(ValueError, match=r"medsam_head\.pt: trained with lung_mode = 'none'"):
        load_bundle(ROOT, MEDSAM, lung_mode="crop")
    model = load_bundle(ROOT, MEDSAM, ckpt_path=tmp_path / "head_crop.pt", lung_mode="crop")
    steps = [type(t).__name__ for t in model.config.get_parsed_content("preprocessing").transforms]
    assert steps[steps.index("LungPreprocessd") - 1:steps.index("LungPreprocessd") + 2] == [
        "ScaleIntensityd", "LungPreprocessd", "EncoderPreprocessd"]
    assert model.config.get_parsed_content("lung_step").mode == "crop"


def test_bad_checkpoints_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pt: cannot read checkpoint"):
        load_checkpoint(tmp_path / "empty.pt")
    torch.save({"model": {}, "saved_on": datetime.date(2024, 1, 1)}, tmp_path / "pickled.pt")  # needs full unpickling
    with pytest.raises(ValueError, match=r"pickled\.pt: cannot read checkpoint: UnpicklingError"):
        load_checkpoint(tmp_path / "pickled.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: not a bundle checkpoint .*got \['state_dict'\]"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text('{"name": "x", "version": "1"}')
    with pytest.raises(ValueError, match=r"metadata\.json: no bundle metadata"):
        bundle_info(tmp_path)


# modules that read their own files with torch.load (the allowed policy, weights_only=True), not classifier checkpoints
OWN_FILES = {"custom/models/trained_model.py": "the one checkpoint reader", "custom/medsam/embedding_cache.py": "embedding entries",
             "custom/medsam/encoders.py": "MedSAM encoder weights", "custom/models/networks.py": "torchvision pretrained weights",
             "custom/lung/segmentation.py": "the lung UNet"}


def _threshold_comparisons(tree: ast.AST) -> list[str]:
    """Order comparisons with a threshold, e.g. `p >= threshold`, `float(probs[1]) < self.op.threshold`."""
    orders = (ast.Gt, ast.GtE, ast.Lt, ast.LtE)
    return [ast.unparse(node) for node in ast.walk(tree)
            if isinstance(node, ast.Compare) and any(isinstance(op, orders) for op in node.ops)
            and any(re.search(r"threshold[\]'\")]*$", ast.unparse(side)) for side in [node.left, *node.comparators])]


def test_no_module_reads_checkpoints_or_recodes_the_decision_rule_on_its_own():
    files = sorted(p for folder in ("custom", "scripts", "bundle") for p in (ROOT / folder).rglob("*.py"))
    assert len(files) > 30
    problems = []
    for path in files:
        name = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), name)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and ast.unparse(node.func.value) == "torch"):
                policy = {k.arg: ast.unparse(k.value) for k in node.keywords}.get("weights_only")
                if name not in OWN_FILES or policy != "True":
                    problems.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
        if name != "custom/models/trained_model.py":
            problems += [f"{name}: {text}" for text in _threshold_comparisons(tree)]
    assert not problems, ("use custom.models.trained_model (load_checkpoint / load_weights / load_bundle, "
                          "OperatingPoint.decide / is_positive):\n" + "\n".join(problems))
