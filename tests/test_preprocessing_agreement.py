"""Every MedSAM config gets its image chain from one place (`custom.medsam.encoders.encoder_input_transforms`), so
training, inference and saliency turn a real image into the same encoder input. (The CNN configs' agreement is
checked in tests/test_lung_segmentation.py against the shipped model's provenance.)"""

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

ROOT = Path(__file__).resolve().parents[1]
IMAGE = sorted((ROOT.parent / "shared" / "data" / "pediatric_cxr" / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
COMBOS = {
    "inference": ["inference.json", "inference_medsam.json"],
    "finetune": ["train.json", "train_medsam_finetune.json"],
    "dann_augment": ["train.json", "train_medsam_frozen.json", "train_dann.json", "train_dann_augment.json"],
    "saliency": ["train.json", "train_medsam_frozen.json", "evaluate.json", "saliency.json", "saliency_medsam.json"],
}


def encoder_input(files: list[str]) -> torch.Tensor:
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / f) for f in files])
    parser["bundle_root"] = str(ROOT)
    return Compose(parser.get_parsed_content("preprocessing_transforms"))({"image": str(IMAGE)})["image"]


def test_medsam_chain_is_written_once():
    written = [f.name for f in (ROOT / "configs").glob("*.json") if "EncoderPreprocessd" in f.read_text()]
    assert written == [], f"MedSAM preprocessing written out in {written}: use encoder_input_transforms"
    for files in COMBOS.values():
        assert "encoder_input_transforms" in json.loads((ROOT / "configs" / files[-1]).read_text())["preprocessing_transforms"]


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return {name: encoder_input(files) for name, files in COMBOS.items()}


def test_training_inference_and_saliency_feed_the_encoder_alike(inputs):
    reference = inputs["inference"]
    assert reference.shape == (3, 256, 256) and reference.dtype == torch.float32  # LiteMedSAM input
    assert 0.0 <= float(reference.min()) and float(reference.max()) <= 1.0 and float(reference.std()) > 0.05
    for name, tensor in inputs.items():
        assert torch.equal(tensor.as_tensor(), reference.as_tensor()), f"{name} preprocesses differently from inference"
