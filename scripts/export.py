"""Export the bundle network (`network_def` of the inference config + checkpoint weights) or a MedSAM encoder to
ONNX, check it against eager PyTorch in ONNX Runtime and print one JSON line (path, max abs difference); or export
the bundle network to TorchScript `models/model.ts` that records the sha256 of its checkpoint (`custom.models.export.
export_torchscript`; TorchScript is used instead of `models/model.pt` only while that hash matches).

    python scripts/export.py torchscript                              # models/model.pt -> models/model.ts
    python scripts/export.py network --filepath models/model.onnx
    python scripts/export.py network --config_file "['configs/inference.json','configs/inference_medsam.json']" \
        --ckpt_path runs/models/model.pt --filepath models/medsam.onnx --nodynamic_batch
    python scripts/export.py encoder --variant lite --filepath models/lite_medsam_encoder.onnx [--int8]
    python scripts/export.py int8                                     # models/model.pt -> models/model_int8.onnx
"""

import json
import sys
from pathlib import Path

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.models.export import (  # noqa: E402
    OnnxModule,
    export_onnx,
    export_torchscript,
    torchscript_source,
)


def _check(model: torch.nn.Module, onnx: OnnxModule, input_shape, batch: int) -> float:
    """Max abs difference of ORT vs eager outputs on a random batch in [0, 1]."""
    x = torch.rand(batch, *input_shape[1:])
    with torch.inference_mode():
        try:
            return float((model(x) - onnx(x)).abs().max())
        except Exception as e:  # onnxruntime's own error types
            raise RuntimeError(f"{onnx.path} fails at batch {batch} ({e}); export with --nodynamic_batch") from e


def network(config_file="configs/inference.json", ckpt_path: str = "models/model.pt",
            filepath: str = "models/model.onnx", dynamic_batch: bool = True, **override) -> None:
    """`network_def` of `config_file` with the ``model`` weights of `ckpt_path` (into ``network_def.classifier``
    when the config sets ``head_only_checkpoint``) -> `filepath`. ``--nodynamic_batch``: batch fixed to 1 (needed
    for MedSAMClassifier, whose TinyViT graph bakes the batch size in). Other ``--id value`` pairs override the
    config."""
    from custom.models.trained_model import load_bundle

    trained = load_bundle(".", config_file, ckpt_path, "cpu", **override)
    net, parser = trained.network, trained.config
    size = getattr(getattr(net, "encoder", None), "input_size", None)  # MedSAMClassifier: its encoder's input size
    image_size = [size, size] if size else list(parser.get_parsed_content("image_size"))
    shape = [1, parser.get_parsed_content("in_channels"), *image_size]
    path = export_onnx(net, filepath, shape, dynamic_batch)
    print(json.dumps({"onnx": str(path), "input_shape": shape, "dynamic_batch": dynamic_batch,
                      "max_abs_diff_vs_eager": _check(net, OnnxModule(path), shape, 2)}))


def encoder(variant: str = "lite", checkpoint: str | None = None, filepath: str | None = None,
            int8: bool = False) -> None:
    """A MedSAM encoder (`custom.medsam.encoders.OnnxEncoder`, batch 1) -> `filepath` (default: the ONNX cache beside the
    encoder's weights fingerprint, where ``build_encoder(..., backend="onnxruntime")`` looks)."""
    from custom.medsam.encoders import OnnxEncoder, build_encoder

    eager = build_encoder(variant, checkpoint)
    fast = OnnxEncoder(eager, filepath, int8=int8)
    shape = [1, 3, eager.input_size, eager.input_size]
    print(json.dumps({"onnx": fast.net.path, "variant": fast.variant,
                      "max_abs_diff_vs_eager": _check(eager, fast, shape, 1)}))


def int8(ckpt_path: str = "models/model.pt", dataset_dir: str = "../shared/data/pediatric_cxr", split_seed: int = 0,
         images: int = 512, config_file: str = "configs/inference.json") -> None:
    """Static int8 model (`custom.models.quantization`) of the classifier `ckpt_path`, beside it
    (``models/model_int8.onnx``), calibrated on `images` images evenly spaced over the sorted training part of the
    Kermany train split of `dataset_dir` (patient-aware split by `split_seed`; never validation or test),
    preprocessed by `config_file` as inference preprocesses them (no lung step). Prints one JSON line: the file and
    its record."""
    import onnxruntime

    from custom.data import build_kermany
    from custom.io import file_sha256
    from custom.models.quantization import calibration_record, int8_path, quantize_static_int8
    from custom.models.trained_model import load_bundle

    trained = load_bundle(".", config_file, ckpt_path, "cpu", lung_mode="none")
    training = sorted(build_kermany(dataset_dir, seed=split_seed)["training"], key=lambda item: item["image"])
    chosen = [training[i * len(training) // images]["image"] for i in range(min(images, len(training)))]
    inputs = torch.stack([trained.preprocessing({"image": f})["image"].as_tensor() for f in chosen])
    root = Path(dataset_dir).resolve()
    record = {"source_checkpoint": {"file": Path(ckpt_path).name, "sha256": file_sha256(ckpt_path)},
              "calibration": {"dataset": f"{root.name}: Kermany train, training part (split_seed {split_seed})",
                              **calibration_record([str(Path(f).relative_to(root)) for f in chosen])},
              "onnxruntime": onnxruntime.__version__,
              "command": " ".join(["python scripts/export.py int8", *sys.argv[2:]])}
    path = quantize_static_int8(trained.network.eval(), [inputs[i:i + 32] for i in range(0, len(inputs), 32)],
                                int8_path(ckpt_path), record)
    print(json.dumps({"int8": str(path), **record}))


def torchscript(bundle_root: str = ".", ckpt_path: str | None = None, filepath: str | None = None) -> None:
    """`network_def` of `<bundle_root>/configs/inference.json` with the ``model`` weights of `ckpt_path` (default
    `<bundle_root>/models/model.pt`) -> `filepath` (default `<bundle_root>/models/model.ts`); prints the recorded
    source checkpoint."""
    path = export_torchscript(bundle_root, ckpt_path, filepath)
    print(json.dumps({"torchscript": str(path), "source_checkpoint": torchscript_source(path)}))


if __name__ == "__main__":
    fire.Fire({"network": network, "encoder": encoder, "torchscript": torchscript, "int8": int8})
