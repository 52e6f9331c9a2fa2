"""Build a MONAI model-zoo archive of this bundle: `<name>_v<version>.zip` holding one folder `<name>/`.

The folder has `configs/`, `models/`, `docs/README.md`, `LICENSE`, `custom/` (the configs import it),
`data/sample/train` (the radiographs the MedSAM configs calibrate `--encoder_backend openvino-int8` on, 2.2 MB, CC BY
4.0, with `docs/data_license.txt`) and `large_files.yml`, which lists every large weight file by its path in the
bundle, sha256 and size. It names no URL: nothing is uploaded, the files travel inside the archive (add `url` entries once they are hosted somewhere). Name and
version come from `configs/metadata.json`; the version must have a `changelog` entry.

    python bundle/package_zoo.py --output_dir dist
    python bundle/package_zoo.py --output_dir dist --torchscript true   # also export models/model.ts (records
                                                                        # the sha256 of the model.pt it came from)
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `custom` for `custom.io` when run as a plain script

from custom.io import atomic_path, file_sha256  # noqa: E402
from custom.models.export import export_torchscript  # noqa: E402

CONTENT = ("configs", "models", "custom", "docs/README.md", "LICENSE", "data/sample/train", "docs/data_license.txt")
LARGE_FILES_NOTE = """\
# Large files of this bundle, by their path inside it, sha256 and size in bytes. They are inside this archive;
# no url is given because none was uploaded anywhere (`monai.bundle download_large_files` does not apply).
# Check a file with `sha256sum <path>`.
"""


def zoo_name(metadata: dict) -> str:
    """Model-zoo folder name from the metadata's display name: "CXR pneumonia classification" -> "cxr_pneumonia_classification"."""
    return re.sub(r"[^a-z0-9]+", "_", metadata["name"].lower()).strip("_")


def read_metadata(bundle_root: Path) -> dict:
    path = bundle_root / "configs" / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: bundle metadata not found")
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    for key in ("name", "version", "changelog"):
        if key not in metadata:
            raise ValueError(f"{path}: missing '{key}'")
    if metadata["version"] not in metadata["changelog"]:
        raise ValueError(f"{path}: version {metadata['version']} has no 'changelog' entry")
    return metadata


def large_files_yml(folder: Path, large_file_mb: float) -> str:
    """YAML `large_files:` list (path, hash_val, hash_type, size; no url) of the files under `models/` above
    `large_file_mb`, after a comment saying why there is no url."""
    lines = ["large_files:"]
    for path in sorted((folder / "models").rglob("*")):
        if path.is_file() and path.stat().st_size > large_file_mb * 2**20:
            lines += [f'  - path: "{path.relative_to(folder).as_posix()}"', f'    hash_val: "{file_sha256(path)}"',
                      '    hash_type: "sha256"', f"    size: {path.stat().st_size}"]
    return LARGE_FILES_NOTE + "\n".join(lines if len(lines) > 1 else ["large_files: []"]) + "\n"


def package(bundle_root: str = str(ROOT), output_dir: str = "dist", large_file_mb: float = 1.0,
            torchscript: bool = False) -> str:
    """Writes `<output_dir>/<name>_v<version>.zip` (atomically) and returns its path.

    Args:
        bundle_root: the bundle to package (this repository by default).
        output_dir: where the archive goes.
        large_file_mb: files under `models/` bigger than this (MiB) go into `large_files.yml`.
        torchscript: also export `models/model.ts` (TorchScript, with the sha256 of its `models/model.pt`) into the
            archive.
    """
    root = Path(bundle_root).resolve()
    metadata = read_metadata(root)
    name, version = zoo_name(metadata), metadata["version"]
    missing = [c for c in CONTENT if not (root / c).exists()]
    if missing:
        raise FileNotFoundError(f"{root}: bundle is missing {', '.join(missing)}")
    if not (root / "models" / "model.pt").is_file():
        raise FileNotFoundError(f"{root / 'models' / 'model.pt'}: trained weights not found")
    archive = Path(output_dir) / f"{name}_v{version}.zip"
    with tempfile.TemporaryDirectory() as staging:
        folder = Path(staging) / name
        for item in CONTENT:
            src, dst = root / item, folder / item
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        if torchscript:
            export_torchscript(folder)
        (folder / "large_files.yml").write_text(large_files_yml(folder, large_file_mb))
        with atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(staging).as_posix())
    print(f"wrote {archive}")
    return str(archive)


if __name__ == "__main__":
    fire.Fire(package)
