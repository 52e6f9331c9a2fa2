# Sourced by bundle/*/install.sh. `layered_venv NAME [VENV_DIR]` checks that $PYTHON (default: python) has the project
# installed (pip install -e .), creates VENV_DIR (default: .venv-NAME in the bundle root) on top of that environment
# (--system-site-packages, so the project's pins stay as they are) and sets $venv to it.
layered_venv() {
    local root python="${PYTHON:-python}"
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="${2:-$root/.venv-$1}"
    "$python" -c "import monai, torch, custom" || { echo "install.sh: run it with the project's python (pip install -e .)" >&2; exit 1; }
    "$python" -m venv --system-site-packages "$venv"
}
