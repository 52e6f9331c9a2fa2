"""MONAI Deploy application: a folder of DICOM files in; `result.json` and a DICOM Basic Text SR out.

DICOMDataLoaderOperator -> DICOMSeriesSelectorOperator (CR / DX / DR series) -> CXRSeriesToImageOperator (2D
radiograph, this bundle's DICOM presentation: modality LUT, VOI LUT / window, MONOCHROME1 inverted) ->
CXRBundleInferenceOperator (`MonaiBundleInferenceOperator` on this bundle's `configs/inference.json`, running the
network `bundle/deploy/predict.py` loads: `models/model.ts` only while it matches `models/model.pt`) ->
CXRResultOperator (decision at the bundle's operating point, `result.json`) -> DICOMTextSRWriterOperator.

    pip install monai-deploy-app-sdk==4.0.0 highdicom==0.28.2
    python bundle/deploy/app.py -i ../shared/data/dicom_cxr -o output   # CXR_BUNDLE_ROOT: another bundle folder
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `custom` and `bundle.deploy` when run as a plain script

try:
    from holoscan.conditions import CountCondition
    from monai.deploy.core import (
        AppContext,
        Application,
        Fragment,
        Image,
        IOType,
        Model,
        Operator,
        OperatorSpec,
    )
    from monai.deploy.core.domain import DICOMSeries
    from monai.deploy.operators import (
        BundleConfigNames,
        DICOMDataLoaderOperator,
        DICOMSeriesSelectorOperator,
        DICOMTextSRWriterOperator,
        IOMapping,
        ModelInfo,
        MonaiBundleInferenceOperator,
    )
except ImportError as err:
    raise ImportError(
        "bundle/deploy/app.py needs the MONAI Deploy App SDK (which brings NVIDIA Holoscan): "
        "`pip install monai-deploy-app-sdk==4.0.0 highdicom==0.28.2`. Without it, `python bundle/deploy/predict.py` gives "
        f"the same result.json and SR. ({type(err).__name__}: {err})"
    ) from err
import numpy as np  # noqa: E402

from bundle.deploy.predict import bundle_parser, load_network  # noqa: E402
from bundle.deploy.result import classify, read_operating_point, result_text  # noqa: E402
from custom.data.transforms import LoadCXRd, dicom_to_array  # noqa: E402
from custom.io import write_json  # noqa: E402
from custom.models.trained_model import bundle_info  # noqa: E402

RADIOGRAPH_RULES = """{
    "selections": [{"name": "CXR", "conditions": {"Modality": "(?i)(CR|DX|DR)"}}]
}"""


class CXRSeriesToImageOperator(Operator):
    """Selected series -> `Image` (1, W, H) float32 of its first instance, in `custom.data.transforms` orientation.

    Named input: "study_selected_series_list"; named output: "image".
    """

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("study_selected_series_list")
        spec.output("image")

    def compute(self, op_input, op_output, context) -> None:
        selected = op_input.receive("study_selected_series_list")
        series: list[DICOMSeries] = [s.series for study in selected or [] for s in study.selected_series]
        if not series:
            raise ValueError("no CR/DX/DR radiograph series in the input DICOM files")
        ds = series[0].get_sop_instances()[0].get_native_sop_instance()
        try:
            pixels = dicom_to_array(ds)
        except Exception as err:
            uid = ds.get("SOPInstanceUID", "?")
            raise ValueError(f"DICOM SOPInstanceUID {uid}: cannot read pixels: {err}") from err
        image = np.ascontiguousarray(pixels.T)[None].astype(np.float32)  # (rows, cols) -> (1, W, H)
        op_output.emit(Image(image, metadata={"SOPInstanceUID": str(ds.get("SOPInstanceUID", ""))}), "image")


def bundle_model(bundle_root: Path) -> Model:
    """The bundle as the SDK `Model` the inference operator runs: its predictor is the network `load_network` picks
    (the SDK's own loader would take `models/model.ts` whenever it exists, stale or not)."""
    parser = bundle_parser(bundle_root)
    model = Model(str(bundle_root), name=bundle_root.name)
    model.predictor = load_network(bundle_root, parser, parser.get_parsed_content("device"))
    return model


class CXRBundleInferenceOperator(MonaiBundleInferenceOperator):
    """`MonaiBundleInferenceOperator` that also drops this bundle's file loader (`LoadCXRd`) from `preprocessing`:
    the image arrives in memory, already (1, W, H)."""

    def _get_compose(self, obj_name, disallowed_prefixes):
        return super()._get_compose(obj_name, [*disallowed_prefixes, LoadCXRd.__name__])


class CXRResultOperator(Operator):
    """Bundle output {"probabilities": (C,)} -> decision at the bundle's operating point; writes
    `<output_folder>/result.json` and emits the result text for the SR writer (named output "text")."""

    def __init__(self, fragment: Fragment, *args, bundle_root: Path, output_folder: Path, **kwargs) -> None:
        self.class_names = bundle_info(bundle_root)["class_names"]
        self.operating_point = read_operating_point(bundle_root)
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("pred")
        spec.output("text")

    def compute(self, op_input, op_output, context) -> None:
        result = classify(op_input.receive("pred")["probabilities"], self.class_names, self.operating_point)
        write_json(result, self.output_folder / "result.json")
        logging.getLogger(__name__).info("result: %s", result)
        op_output.emit(result_text(result), "text")


class CXRPneumoniaApp(Application):
    """DICOM in (`-i`), `result.json` + DICOM SR out (`-o`); the bundle is `-m` when that is a bundle folder
    (has `configs/metadata.json`), else `CXR_BUNDLE_ROOT`, else this repository."""

    def compose(self) -> None:
        app_context: AppContext = Application.init_app_context(self.argv)
        input_folder, output_folder = Path(app_context.input_path), Path(app_context.output_path)
        model_path = Path(app_context.model_path or "")
        is_bundle = (model_path / "configs" / "metadata.json").is_file()
        bundle_root = (model_path if is_bundle else Path(os.environ.get("CXR_BUNDLE_ROOT", ROOT))).resolve()
        app_context.models = bundle_model(bundle_root)  # the operator reads the bundle's configs from its path
        info = bundle_info(bundle_root)
        model_info = ModelInfo("cxr-pneumonia contributors", info["name"], info["version"], "")

        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=input_folder, name="dicom_loader")
        selector = DICOMSeriesSelectorOperator(self, rules=RADIOGRAPH_RULES, name="series_selector")
        to_image = CXRSeriesToImageOperator(self, name="series_to_image")
        inference = CXRBundleInferenceOperator(
            self, app_context=app_context, bundle_path=bundle_root, name="bundle_inference",
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", dict, IOType.IN_MEMORY)],
            bundle_config_names=BundleConfigNames(config_names=["inference"]))
        result = CXRResultOperator(self, bundle_root=bundle_root, output_folder=output_folder, name="result")
        sr_writer = DICOMTextSRWriterOperator(self, output_folder=output_folder, model_info=model_info,
                                              copy_tags=True, name="sr_writer")

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(selector, to_image, {("study_selected_series_list", "study_selected_series_list")})
        self.add_flow(to_image, inference, {("image", "image")})
        self.add_flow(inference, result, {("pred", "pred")})
        self.add_flow(result, sr_writer, {("text", "text")})
        self.add_flow(selector, sr_writer, {("study_selected_series_list", "study_selected_series_list")})


if __name__ == "__main__":
    CXRPneumoniaApp().run()
