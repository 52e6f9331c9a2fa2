"""MONAI Label infer task for the cxr-pneumonia bundle: 2D image in, class probabilities and decided label out.

Built on MONAI Label's `BundleInferTask`, which reads `configs/inference.json` (`network_def`, `preprocessing`,
`inferer`, `postprocessing`), `configs/metadata.json` (labels from `network_data_format.outputs.pred.channel_def`)
and `models/model.pt` (`{"model": state_dict, "operating_point": {...}}`). Three things differ from the generic task:

- no spatial restore of the output (the prediction is a (C,) vector, not an image);
- an unreadable upload (`UnreadableImageError` from `LoadCXRd`: corrupt, truncated, text, empty) is answered with
  HTTP 422 and the reader's message, instead of the 500 MONAI Label returns for any exception; every other error is
  the server's own and stays a 500 (the server logs its traceback);
- the JSON answer adds the label decided at the checkpoint's operating point (`custom.models.trained_model`), so it matches
  the bundle's own `inference.json` prediction (`predictions.csv`);
- the `model_filename` option offers the task's own checkpoint only (the generic task lists every ``models/*.pt``, so
  the CNN could be pointed at the MedSAM head and fail, or at the ensemble and decide with another model's
  threshold); a request that names another file is answered with HTTP 422 naming the files offered.

`MedSAMClassificationInfer` serves the bundle's second model the same way: `configs/inference_medsam.json` merged
over `configs/inference.json` (LiteMedSAM encoder + head) and the head checkpoint `models/medsam_head.pt`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fastapi import HTTPException
from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask

from custom.data.transforms import UnreadableImageError
from custom.models.trained_model import OperatingPoint, bundle_info, configured_network, load_checkpoint


def model_name(bundle_root: str) -> str:
    """The bundle's metadata `name` as a URL-safe model id, e.g. "cxr_pneumonia_classification"."""
    return "_".join(bundle_info(bundle_root)["name"].lower().split())


class CXRClassificationInfer(BundleInferTask):
    """Classification infer task. Request: an uploaded image file; answer (`output=json`):
    `{"prediction": [{"idx", "label", "score"}...], "label": str, "threshold": float, ...}` where the scores are the
    C softmax probabilities (sum 1) and `label` is the class decided with the checkpoint's operating point."""

    def __init__(self, bundle_root: str, conf: dict[str, str], const: BundleConstants | None = None) -> None:
        const = const or BundleConstants()
        super().__init__(bundle_root, conf, const=const, type=InferType.CLASSIFICATION, post_filter=None,
                         add_post_restore=False, load_strict=True)
        if not self.is_valid():
            raise ValueError(f"{bundle_root}: not a loadable bundle (needs configs/{const.configs()[0]} and "
                             f"models/{const.model_pytorch()})")
        checkpoint = load_checkpoint(self.path[0])
        if "operating_point" not in checkpoint:
            raise ValueError(f"{self.path[0]}: checkpoint has no 'operating_point' (expected {{'model', 'operating_point'}})")
        self.operating_point = OperatingPoint.from_checkpoint(checkpoint)
        self.class_names = bundle_info(bundle_root)["class_names"]
        self.labels = {name: i for i, name in enumerate(self.class_names)}  # MONAI Label lower-cases them
        self._config["model_filename"] = [os.path.basename(self.path[0])]  # the checkpoint the operating point is from

    def __call__(self, request, callbacks=None):
        """MONAI Label's inference; a failed request removes its upload copy, and only bad input (the upload is no
        readable image, or `model_filename` names a file this model does not offer) becomes HTTP 422: any other
        error goes on, to be answered with 500."""
        try:
            requested = request.get("model_filename")
            if requested:
                name = requested if isinstance(requested, str) else requested[0]
                if name not in self._config["model_filename"]:
                    raise HTTPException(status_code=422, detail=f"model_filename {name!r} is not served by this "
                                                                f"model; offered: {self._config['model_filename']}")
            return super().__call__(request, callbacks)
        except Exception as err:
            path = request.get("image")
            if isinstance(path, str) and os.path.dirname(path) == tempfile.gettempdir():
                Path(path).unlink(missing_ok=True)  # its cleanup task is dropped when the request fails
            if isinstance(err, UnreadableImageError):
                raise HTTPException(status_code=422, detail=f"uploaded image could not be read: {err}") from err
            raise

    def writer(self, data, extension=None, dtype=None):
        result_file, result_json = super().writer(data, extension, dtype)
        probs = data[self.output_label_key].detach().float().cpu().numpy().reshape(1, -1)  # (1, C)
        decided = int(self.operating_point.decide(probs)[0])
        result_json.update(label=self.class_names[decided], threshold=self.operating_point.threshold)
        return result_file, result_json


class MedSAMConstants(BundleConstants):
    """The MedSAM model's files: `configs/inference_medsam.json` over `configs/inference.json`, `models/medsam_head.pt`."""

    overlays = ("inference_medsam.json",)

    def configs(self):
        return ["inference.json"]

    def model_pytorch(self) -> str:
        return "medsam_head.pt"


class MedSAMClassificationInfer(CXRClassificationInfer):
    """The LiteMedSAM encoder + head as a second MONAI Label model: same request and answer as
    `CXRClassificationInfer`. Its checkpoint holds the head only, so the network is built as `load_bundle` builds it
    (`custom.models.trained_model.configured_network`: the head loaded into ``network_def.classifier``, checked
    against the config's `trained_with`), once per device."""

    def __init__(self, bundle_root: str, conf: dict[str, str]) -> None:
        super().__init__(bundle_root, conf, const=MedSAMConstants())

    def _load_bundle_config(self, path, config):
        parser = ConfigParser()
        parser.read_config([config, *(os.path.join(path, "configs", c) for c in MedSAMConstants.overlays)])
        parser.config.update({self.const.key_bundle_root(): path})
        return parser

    def _get_network(self, device, data):
        if device not in self._networks:
            network = configured_network(self.bundle_config, self.path[0], device)
            self._networks[device] = (network, os.stat(self.path[0]).st_mtime)
        return self._networks[device][0]
