"""CPU images/s of the exported paths side by side, printed as a Markdown table (and one JSON line, also written to
`--results_file` with date, command, device and versions):
the shipped CNN (eager, TorchScript, ONNX Runtime fp32) and the LiteMedSAM encoder (eager fp32, eager bf16 autocast,
ONNX Runtime fp32 with one or two concurrent sessions, ONNX Runtime int8 dynamic quantisation, OpenVINO fp32,
where the CPU has native bf16 OpenVINO bf16, and OpenVINO static int8 matrix products (NNCF, calibrated on
`--calibration_dir`), each with one or two streams), on real preprocessed images, with the
agreement with eager (max abs difference of CNN probabilities; min cosine of encoder embeddings over all timed
images). Every path runs one image per call except the two-stream ones, which get all encoder images in one call.
`--feature_stages 1,2` times the encoder with those TinyViT stages appended to its embedding (the frozen-MedSAM
configs' `encoder_feature_stages`), exported as such.

    OMP_NUM_THREADS=2 python scripts/benchmark_export.py --images ../shared/data/pediatric_cxr/test \
        --encoder_images 16 --results_file docs/results/export_cpu.json
"""

import json
import sys
import tempfile
from pathlib import Path

import fire
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from custom.evaluation.timing import best_seconds, run_record  # noqa: E402


def _cnn(images: list[str], config: str, ckpt_path: str, workdir: Path, repeats: int) -> list[dict]:
    from custom.models.export import OnnxModule, export_onnx
    from custom.models.trained_model import load_bundle

    trained = load_bundle(".", config, ckpt_path, "cpu")
    net, preprocessing, parser = trained.network, trained.preprocessing, trained.config
    x = torch.stack([preprocessing({"image": p})["image"].as_tensor() for p in images])
    with torch.no_grad():
        scripted = torch.jit.freeze(torch.jit.trace(net, x[:1]))
    paths = {"eager": net, "TorchScript (trace + freeze)": scripted,
             "ONNX Runtime fp32": OnnxModule(export_onnx(net, workdir / "cnn.onnx", [1, *x.shape[1:]]))}
    return _rows(f"CNN {parser.get('network_def#arch', 'network_def')}", paths, x, "max abs dP",
                 lambda ref, out: (ref.softmax(1) - out.softmax(1)).abs().max(), repeats)


def _encoder(images: list[str], workdir: Path, repeats: int, calibration_dir: str,
             feature_stages: list[int]) -> list[dict]:
    from custom.data.transforms import LoadCXR
    from custom.medsam.encoders import (
        AutocastEncoder,
        OnnxEncoder,
        OpenVinoEncoder,
        build_encoder,
        encoder_preprocess,
    )
    from custom.models.export import openvino_supports_bf16

    eager = build_encoder("lite", feature_stages=feature_stages)
    load = LoadCXR()
    x = torch.stack([encoder_preprocess(load(p), eager.input_size, eager.keep_aspect) for p in images])
    streams = "ONNX Runtime fp32, 2 streams x half the threads (exact)"
    paths = {"eager fp32": eager, "eager bf16 autocast (approximate)": AutocastEncoder(eager),
             "ONNX Runtime fp32 (exact)": OnnxEncoder(eager, workdir / "lite.onnx"),
             streams: OnnxEncoder(eager, workdir / "lite.onnx", streams=2),
             "ONNX Runtime int8 dynamic (approximate)": OnnxEncoder(eager, workdir / "lite-int8.onnx", int8=True),
             "OpenVINO fp32 (exact)": OpenVinoEncoder(eager, workdir / "lite.onnx"),
             "OpenVINO fp32, 2 streams (exact)": OpenVinoEncoder(eager, workdir / "lite.onnx", streams=2)}
    if openvino_supports_bf16():
        paths["OpenVINO bf16 (approximate)"] = OpenVinoEncoder(eager, workdir / "lite.onnx", bf16=True)
        paths["OpenVINO bf16, 2 streams (approximate)"] = OpenVinoEncoder(eager, workdir / "lite.onnx", bf16=True,
                                                                          streams=2)
    rest = "bf16" if openvino_supports_bf16() else "fp32"
    for streams in (1, 2):
        name = f"OpenVINO int8 matrix products + {rest}{', 2 streams' if streams == 2 else ''} (approximate)"
        paths[name] = OpenVinoEncoder(eager, workdir / "lite.onnx", bf16=True, streams=streams,
                                      calibration_dir=calibration_dir)
    concurrent = [name for name in paths if "2 streams" in name]
    model = f"LiteMedSAM encoder{' + stages ' + ','.join(map(str, feature_stages)) if feature_stages else ''}"
    return _rows(model, paths, x, "min cosine",
                 lambda ref, out: F.cosine_similarity(ref.flatten(1).double(), out.flatten(1).double()).min(), repeats,
                 batches={name: len(x) for name in concurrent})


def _rows(model: str, paths: dict, x: torch.Tensor, agreement: str, compare, repeats: int = 2,
          batches: dict | None = None) -> list[dict]:
    """One row per path: images/s over `x` in calls of `batches[path]` images (default 1; best of `repeats`),
    agreement with the first path (`agreement` names `compare`'s number)."""
    rows = []
    with torch.inference_mode():
        reference = paths[next(iter(paths))](x)
        for name, net in paths.items():
            b = (batches or {}).get(name, 1)
            seconds = best_seconds(lambda: [net(x[i:i + b]) for i in range(0, len(x), b)], repeats)
            rows.append({"model": model, "path": name, "batch": b, "images_per_s": round(len(x) / seconds, 2),
                         "agreement_metric": agreement, "agreement": float(compare(reference, net(x)))})
    return rows


def _agreement(row: dict, first: bool) -> str:
    if first:
        return "(reference)"
    return f"{row['agreement_metric']} {row['agreement']:{'.5f' if 'cosine' in row['agreement_metric'] else '.1e'}}"


def main(images: str = "../shared/data/pediatric_cxr/test", cnn_images: int = 16, encoder_images: int = 8,
         config: str = "configs/inference.json", ckpt_path: str = "models/model.pt", repeats: int = 2,
         results_file: str | None = None, calibration_dir: str = "data/sample/train", feature_stages="") -> None:
    """Times `cnn_images` / `encoder_images` real images (sorted, alternating classes) from `images`, best of
    `repeats` passes; `encoder_images 0` skips the encoder. calibration_dir: images the int8 encoder is calibrated on
    (the configs' default). feature_stages: e.g. "1,2" (TinyViT stages after the embedding; "" = the embedding
    alone). results_file: JSON path written atomically."""
    from custom.data import inference_items
    from custom.io import write_json
    from custom.medsam.encoders import parse_feature_stages

    items = [it["image"] for it in inference_items(images)]
    normal = [p for p in items if "NORMAL" in p]
    pneumonia = [p for p in items if "NORMAL" not in p]
    mixed = [p for pair in zip(normal, pneumonia) for p in pair]
    stages = parse_feature_stages(feature_stages)
    with tempfile.TemporaryDirectory() as tmp:
        rows = _cnn(mixed[:cnn_images], config, ckpt_path, Path(tmp), repeats)
        if encoder_images > 0:
            rows += _encoder(mixed[:encoder_images], Path(tmp), repeats, calibration_dir, stages)
    record = run_record("cpu", packages=("onnxruntime", "openvino"))
    cpu = record["device"]
    print(f"{cpu['cpu']}, {cpu['torch_threads']} threads, {record['date']}, `{record['command']}`\n")
    print("| model | path | batch | images/s | agreement with eager |\n|---|---|---|---|---|")
    for i, r in enumerate(rows):
        first = i == 0 or rows[i - 1]["model"] != r["model"]
        print(f"| {r['model']} | {r['path']} | {r['batch']} | {r['images_per_s']} | {_agreement(r, first)} |")
    result = {**record, "images": images, "cnn_images": len(mixed[:cnn_images]),
              "encoder_images": len(mixed[:encoder_images]) if encoder_images > 0 else 0, "repeats": repeats,
              "calibration_dir": calibration_dir, "feature_stages": stages,
              "rows": rows}
    print(json.dumps(result))
    if results_file:
        write_json(result, results_file)


if __name__ == "__main__":
    fire.Fire(main)
