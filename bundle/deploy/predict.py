"""DICOM radiograph -> `result.json` + DICOM SR with the bundle, without the MONAI Deploy SDK, through the same
contract `MonaiBundleInferenceOperator` relies on: `configs/inference.json` ids `preprocessing` (run here without its
loader, on the in-memory image), `inferer`, `postprocessing`, `network_def`, `device`, `bundle_root`, and the weights
as `models/model.ts` (TorchScript, used only while it was exported from the current `models/model.pt`, see
`custom.models.export.bundle_weights`) or `network_def` + `models/model.pt` (`{"model", "operating_point"}`).

    python bundle/deploy/predict.py --input ../shared/data/dicom_cxr/RG1_UNCI.dcm --output_dir out/
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import fire
import pydicom
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `custom` and `bundle.deploy` when run as a plain script

from bundle.deploy.result import classify, read_operating_point, write_outputs  # noqa: E402
from custom.data.checks import write_bad_files  # noqa: E402
from custom.data.isolation import StageError, apply_stages, failure_reason  # noqa: E402
from custom.data.transforms import DICOM_SUFFIXES, LoadCXR, LoadCXRd  # noqa: E402
from custom.models.export import bundle_weights  # noqa: E402
from custom.models.trained_model import bundle_config, bundle_info, configured_network  # noqa: E402

logger = logging.getLogger(__name__)

REQUIRED_IDS = ("bundle_root", "device", "preprocessing", "inferer", "postprocessing", "network_def")


def bundle_parser(bundle_root: str | os.PathLike = ROOT, config_name: str = "inference") -> ConfigParser:
    """`configs/metadata.json` + `configs/<config_name>.json` of a bundle (`custom.models.trained_model.bundle_config`),
    checked for the ids the deploy operator reads."""
    config_file = Path("configs") / f"{config_name}.json"
    parser = bundle_config(bundle_root, config_file)
    missing = [key for key in REQUIRED_IDS if key not in parser]
    if missing:
        raise KeyError(f"{Path(bundle_root) / config_file}: missing ids {missing}")
    return parser


def in_memory_preprocessing(parser: ConfigParser) -> Compose:
    """The bundle's `preprocessing` without its file loader (`LoadCXRd`): input {"image": (1, W, H) tensor}."""
    compose = parser.get_parsed_content("preprocessing")
    return Compose([t for t in compose.transforms if not isinstance(t, LoadCXRd)])


def load_network(bundle_root: str | os.PathLike, parser: ConfigParser, device: torch.device) -> torch.nn.Module:
    """The file `bundle_weights` picks: `models/model.ts` while it matches `models/model.pt`, else `network_def`
    with the "model" weights of `models/model.pt` (`custom.models.trained_model.configured_network`); eval mode."""
    path = bundle_weights(Path(bundle_root) / "models")
    if path.suffix == ".ts":
        return torch.jit.load(str(path), map_location=device).eval()
    return configured_network(parser, path, device)


class BundlePredictor:
    """Holds the parsed bundle; `__call__` maps one (1, W, H) image to (C,) class probabilities."""

    def __init__(self, bundle_root: str | os.PathLike = ROOT, device: str | None = None) -> None:
        self.bundle_root = Path(bundle_root)
        self.parser = bundle_parser(self.bundle_root)
        self.device = torch.device(device) if device else self.parser.get_parsed_content("device")
        self.preprocessing = in_memory_preprocessing(self.parser)
        self.inferer = self.parser.get_parsed_content("inferer")
        self.postprocessing = self.parser.get_parsed_content("postprocessing")
        self.network = load_network(self.bundle_root, self.parser, self.device)
        info = bundle_info(self.bundle_root)
        self.class_names, self.model_name, self.model_version = info["class_names"], info["name"], info["version"]
        self.operating_point = read_operating_point(self.bundle_root)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.infer(self.preprocessing({"image": image}))

    @torch.no_grad()
    def infer(self, data: dict) -> torch.Tensor:
        """Preprocessed {"image": (C, W, H)} -> (C,) class probabilities."""
        data = {**data, "pred": self.inferer(data["image"][None].to(self.device), self.network)[0]}
        return self.postprocessing(data)["pred"].cpu()


def dicom_files(path: str | os.PathLike) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in DICOM_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{path}: no DICOM files ({', '.join(DICOM_SUFFIXES)})")
    return files


def predict_file(file: Path, predictor: BundlePredictor, loader: LoadCXR, out: Path) -> dict:
    """One DICOM file -> its result, written to `out`; raises `StageError` naming the step that failed: "read",
    a preprocessing transform's class name, "inference" or "write"."""
    name = str(file)
    try:
        source = pydicom.dcmread(file, stop_before_pixels=True)
    except Exception as err:
        raise StageError("read", f"not a readable DICOM file: {failure_reason(err, name)}") from err
    try:
        image = loader(file)
    except Exception as err:
        raise StageError("read", failure_reason(err, name)) from err
    data = apply_stages(predictor.preprocessing.flatten().transforms, {"image": image}, name)
    try:
        result = classify(predictor.infer(data), predictor.class_names, predictor.operating_point)
    except Exception as err:
        raise StageError("inference", failure_reason(err, name)) from err
    result["source"] = {"file": name, "SOPInstanceUID": str(source.get("SOPInstanceUID", "")),
                        "StudyInstanceUID": str(source.get("StudyInstanceUID", ""))}
    try:
        write_outputs(result, source, out, predictor.model_name, predictor.model_version)
    except Exception as err:
        raise StageError("write", failure_reason(err, name)) from err
    return result


def predict(input: str, output_dir: str = "output", bundle_root: str = str(ROOT),
            device: str | None = None) -> list[dict]:
    """Classifies each DICOM file (or each one in a folder); writes `<output_dir>/<file stem>/result.json` and
    `result_sr.dcm` (or straight into `output_dir` for a single file) and returns the results. A file that fails
    is skipped and listed in `<output_dir>/bad_files.csv` (file, stage, reason); RuntimeError if every file failed."""
    files = dicom_files(input)
    predictor, loader = BundlePredictor(bundle_root, device), LoadCXR()
    results, bad = [], []
    for file in files:
        out = Path(output_dir) if len(files) == 1 else Path(output_dir) / file.stem
        try:
            results.append(predict_file(file, predictor, loader, out))
        except StageError as err:
            logger.warning("skipping %s (%s): %s", file, err.stage, err.reason)
            bad.append((str(file), err.stage, err.reason))
    bad_files_csv = Path(output_dir) / "bad_files.csv"
    write_bad_files(bad_files_csv, bad)
    if not results:
        raise RuntimeError(f"none of the {len(files)} DICOM file(s) could be processed; reasons in {bad_files_csv}")
    return results


if __name__ == "__main__":
    fire.Fire(predict)
