#!/usr/bin/env bash
# Installs the MONAI Deploy App SDK for bundle/deploy/app.py into a venv layered on the project's environment.
#   bash bundle/deploy/install.sh [VENV_DIR]      (default: .venv-deploy in the bundle root)
# Its own venv because the SDK's NVIDIA Holoscan downgrades protobuf (tensorboard in the project needs 7.x).
# Run it with the python that has the project installed (pip install -e .). Then:
#   VENV_DIR/bin/python bundle/deploy/app.py -i DICOM_DIR -o OUT_DIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../layered_venv.sh"
layered_venv deploy "${1:-}"
"$venv/bin/python" -m pip install --quiet monai-deploy-app-sdk==4.0.0 highdicom==0.28.2
# `monai.deploy` is a namespace inside `monai`: the project's monai must sit in the same site-packages as the SDK,
# and the SDK's start-up hook needs filelock there too.
"$venv/bin/python" -m pip install --quiet --no-deps --ignore-installed monai==1.6.1 filelock==3.20.0
"$venv/bin/python" -c "import holoscan, monai.deploy, custom; print('monai-deploy-app-sdk ready in $venv')"
