#!/usr/bin/env bash
# Installs MONAI Label for this bundle into a venv layered on the project's environment, without touching its pins.
#   bash bundle/monailabel/install.sh [VENV_DIR]      (default: .venv-monailabel in the bundle root)
# Run it with the python that has the project installed (pip install -e ".[test]"). Then:
#   VENV_DIR/bin/monailabel start_server --app bundle/monailabel --studies IMAGES_DIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/../layered_venv.sh"
layered_venv monailabel "${1:-}"
"$venv/bin/python" -m pip install --quiet -r "$here/requirements-server.txt"
"$venv/bin/python" -m pip install --quiet --no-deps -r "$here/requirements.txt"
# pydicom-seg 0.4.1 imports a pydicom 2 private module; alias it to pydicom 3's pydicom.uid at interpreter start.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$here/pydicom3_compat.py" "$site/sitecustomize.py"
"$venv/bin/python" -c "import monailabel.app, monailabel.tasks.infer.bundle; print('monailabel', monailabel.__version__, 'ready in $venv')"
