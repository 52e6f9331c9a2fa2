"""MONAI Label app serving the cxr-pneumonia bundle as a 2D classification model.

    monailabel start_server --app bundle/monailabel --studies /path/to/cxr_images [--conf bundle_root /path/to/bundle]

`bundle_root` defaults to the repository this app lives in. The model id is the bundle's metadata name,
`cxr_pneumonia_classification`: `POST /infer/cxr_pneumonia_classification?output=json` with a `file` upload. The
MedSAM model (LiteMedSAM encoder + head, `models/medsam_head.pt`) is served beside it as
`cxr_pneumonia_classification_medsam`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from cxr_infer import CXRClassificationInfer, MedSAMClassificationInfer, model_name
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

logger = logging.getLogger(__name__)

DEFAULT_BUNDLE_ROOT = str(Path(__file__).resolve().parents[2])


class CXRPneumoniaApp(MONAILabelApp):
    """Inference-only app: the bundle's CNN (`configs/inference.json`) and its MedSAM model
    (`configs/inference_medsam.json` over it) as two infer tasks."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundle_root = os.path.abspath(conf.get("bundle_root", DEFAULT_BUNDLE_ROOT))
        with open(os.path.join(self.bundle_root, "configs", "metadata.json")) as f:
            metadata = json.load(f)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name=metadata["name"],
                         description=metadata["description"], version=metadata["version"])

    def init_infers(self) -> dict[str, InferTask]:
        name = model_name(self.bundle_root)
        logger.info(f"+++ Adding bundle {self.bundle_root} as infer models {name}, {name}_medsam")
        return {name: CXRClassificationInfer(self.bundle_root, self.conf),
                f"{name}_medsam": MedSAMClassificationInfer(self.bundle_root, self.conf)}
