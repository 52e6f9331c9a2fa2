"""MONAI Label app serving the cxr-pneumonia bundle as a 2D classification model.

    monailabel start_server --app bundle/monailabel --studies /path/to/cxr_images [--conf bundle_root /path/to/bundle]

`bundle_root` defaults to the repository this app lives in. The model id is the bundle's metadata name,
`cxr_pneumonia_classification`: `POST /infer/cxr_pneumonia_classification?output=json` with a `file` upload.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from cxr_infer import CXRClassificationInfer, model_name
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

logger = logging.getLogger(__name__)

DEFAULT_BUNDLE_ROOT = str(Path(__file__).resolve().parents[2])


class CXRPneumoniaApp(MONAILabelApp):
    """Inference-only app: one infer task built from the bundle's `configs/inference.json`."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundle_root = os.path.abspath(conf.get("bundle_root", DEFAULT_BUNDLE_ROOT))
        with open(os.path.join(self.bundle_root, "configs", "metadata.json")) as f:
            metadata = json.load(f)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name=metadata["name"],
                         description=metadata["description"], version=metadata["version"])

    def init_infers(self) -> dict[str, InferTask]:
        name = model_name(self.bundle_root)
        logger.info(f"+++ Adding bundle {self.bundle_root} as infer model {name}")
        return {name: CXRClassificationInfer(self.bundle_root, self.conf)}
