"""The bad-input suite (docs/bad_input.md): every class of `tests/bad_inputs.py` through the three ways an image comes
in: the reader / training's datalist check (`LoadCXR`, `require_readable`), batch inference (`configs/inference.json`,
one run over a folder holding every class plus good images) and the MONAI Label endpoint (a real server).

Rejected classes: one clear message naming the file, the rest of the batch finished. Valid variants (16-bit, RGBA,
palette, CMYK, MONOCHROME1): read as the same grey radiograph as the source JPEG.
"""

from __future__ import annotations

import csv
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from custom.data.transforms import LoadCXR, UnreadableImageError
from tests.bad_inputs import (
    BY_NAME,
    CLASSES,
    SOURCE_JPEG,
    is_root,
    make_all,
    reference,
    unreadable_permissions,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GOOD = [SHARED / "pediatric_cxr" / "test" / "NORMAL" / "IM-0003-0001.jpeg",
        SHARED / "pediatric_cxr" / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"]
REJECTED = [c.name for c in CLASSES if not c.valid]
VALID = [c.name for c in CLASSES if c.valid]
# valid variants re-encode the source: their probabilities stay within this of the source JPEG's (CMYK is a lossy
# JPEG re-encoding; MONOCHROME1 stores 12 bits)
PROB_TOLERANCE = 0.05

pytestmark = pytest.mark.skipif(not SOURCE_JPEG.is_file(), reason=f"shared data not found at {SHARED}")


def corr(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel())[0, 1])


# ------------------------------------------------------------------------------------ unreadable permissions as root
def world_readable_dir() -> Path:
    """A folder that user `nobody` can enter (pytest's tmp_path is 0700 under root)."""
    folder = Path(tempfile.mkdtemp(prefix="bad_input_"))
    folder.chmod(0o777)
    return folder


def as_nobody(fn):
    """Runs `fn()` in a thread whose filesystem uid/gid are `nobody` (65534), so that file permissions apply even when
    the tests run as root (Linux setfsuid is per thread and drops CAP_DAC_OVERRIDE; threads started inside inherit it).
    Skips when this is not possible."""
    if not is_root():
        return fn()
    if not sys.platform.startswith("linux"):
        pytest.skip("running as root: file permissions do not apply, and setfsuid is Linux-only")
    libc = ctypes.CDLL(None, use_errno=True)
    outcome = {}

    def run():
        libc.setfsgid(65534)
        libc.setfsuid(65534)
        try:
            outcome["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller
            outcome["error"] = err
        finally:
            libc.setfsuid(0)
            libc.setfsgid(0)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.fixture
def no_permission_file():
    """A good JPEG with mode 000 in a folder `nobody` can enter; checked to be really unreadable under `as_nobody`."""
    folder = world_readable_dir()
    try:
        path = unreadable_permissions(folder)

        def opens() -> bool:
            try:
                with open(path, "rb"):
                    return True
            except PermissionError:
                return False

        if as_nobody(opens):
            pytest.skip("file permissions are not enforced here (root without setfsuid)")
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------ (1) reader + datalist check
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every class but the permissions one (see `no_permission_file`), built once."""
    return make_all(tmp_path_factory.mktemp("bad_inputs"), names=[c.name for c in CLASSES
                                                                   if c.name != "unreadable_permissions"])


@pytest.fixture(scope="module")
def source_tensor():
    return LoadCXR()(SOURCE_JPEG)


def _check_rejected(path: Path, message: str, run=lambda f: f()) -> None:
    from custom.data.checks import require_readable

    with pytest.raises(UnreadableImageError) as excinfo:
        run(lambda: LoadCXR()(path))
    text = str(excinfo.value)
    assert text.startswith(f"{path}: ") and message in text.lower(), text
    assert "\n" not in text, "one line"
    with pytest.raises(ValueError) as excinfo:
        run(lambda: require_readable({"training": [{"image": str(path), "label": 0},
                                                   {"image": str(SOURCE_JPEG), "label": 1}]}, num_classes=2))
    text = str(excinfo.value)
    assert "1 bad input(s)" in text and f"{path}: " in text and message in text.lower(), text
    assert str(SOURCE_JPEG) not in text, "the good image is not listed"


@pytest.mark.parametrize("name", REJECTED)
def test_reader_and_datalist_check_reject_with_message_naming_the_file(name, files, request):
    if name == "unreadable_permissions":
        path = request.getfixturevalue("no_permission_file")
        _check_rejected(path, BY_NAME[name].message, run=as_nobody)
    else:
        _check_rejected(files[name], BY_NAME[name].message)


@pytest.mark.parametrize("name", VALID)
def test_reader_and_datalist_check_read_valid_variants_as_the_source_radiograph(name, files, source_tensor):
    from custom.data.checks import require_readable

    image = LoadCXR()(files[name])
    assert image.dtype == torch.float32 and tuple(image.shape) == (1, 224, 224)
    assert corr(image[0].numpy(), reference(name)) > 0.999  # same grey image, same orientation, bone bright
    assert corr(image.numpy(), source_tensor.numpy()) > 0.999
    require_readable({"training": [{"image": str(files[name]), "label": 0}]}, num_classes=2)  # no error


def test_decompression_bomb_is_refused_before_decoding(files):
    """Refused from the header: no 900 MB allocation, no MemoryError, no time spent decoding."""
    import time

    start = time.perf_counter()
    with pytest.raises(UnreadableImageError, match="decompression bomb"):
        LoadCXR()(files["decompression_bomb"])
    assert time.perf_counter() - start < 2.0


def test_image_above_the_pixel_limit_but_below_pillows_error_is_refused_too(tmp_path, monkeypatch):
    """Pillow only warns between its limit and twice it (and would decode); the reader refuses from its limit."""
    from PIL import Image

    from custom.data import transforms

    path = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(path)
    monkeypatch.setattr(transforms, "MAX_IMAGE_PIXELS", 300 * 299)
    with pytest.raises(UnreadableImageError, match=r"decompression bomb: 300 x 300 = 0 megapixels, over the limit"):
        LoadCXR()(path)


def test_directory_and_fifo_named_like_images_are_not_regular_files(tmp_path):
    folder = tmp_path / "scan.jpg"
    folder.mkdir()
    with pytest.raises(UnreadableImageError, match="not a regular file \\(a directory\\)"):
        LoadCXR()(folder)
    fifo = tmp_path / "stream.png"
    os.mkfifo(fifo)
    with pytest.raises(UnreadableImageError, match="not a regular file \\(a FIFO"):
        LoadCXR()(fifo)  # never opened: opening a FIFO without a writer would block


# ------------------------------------------------------------------------------------ (2) batch inference
def bundle_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=ROOT, capture_output=True,
                          check=False, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def inference(tmp_path_factory):
    """One `configs/inference.json` run (shipped model) over a folder with every class and three good images
    (the source JPEG itself among them). The permissions class is in it unless running as root (where it would be
    read; `test_inference_lists_unreadable_permissions_file` covers it). Returns (folder, output dir, result)."""
    tmp = tmp_path_factory.mktemp("bad_inference")
    folder = tmp / "in"
    names = [c.name for c in CLASSES if not (c.name == "unreadable_permissions" and is_root())]
    paths = make_all(folder, names)
    for good in [SOURCE_JPEG, *GOOD]:
        shutil.copy(good, folder / good.name)
    out = tmp / "out"
    result = bundle_run("--config_file", "configs/inference.json", "--dataset_dir", str(folder),
                        "--output_dir", str(out))
    assert result.returncode == 0, f"inference failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return paths, out, result


def _predictions(out: Path) -> dict[str, dict]:
    with open(out / "predictions.csv") as f:
        return {Path(row["file"]).name: row for row in csv.DictReader(f)}


def _bad_files(out: Path) -> dict[str, str]:
    """file name -> reason (the `stage` column, if any, is not needed here)."""
    with open(out / "bad_files.csv") as f:
        return {Path(row["file"]).name: row["reason"] for row in csv.DictReader(f)}


def test_inference_finishes_the_batch(inference):
    paths, out, _ = inference
    predicted = _predictions(out)
    bad = _bad_files(out)
    assert {SOURCE_JPEG.name, *(g.name for g in GOOD)} <= set(predicted)
    assert not set(predicted) & set(bad)
    folder = next(iter(paths.values())).parent
    assert set(predicted) | set(bad) == {p.name for p in folder.iterdir()}, "every file predicted or listed"
    for row in predicted.values():
        assert float(row["prob_NORMAL"]) + float(row["prob_PNEUMONIA"]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("name", REJECTED)
def test_inference_lists_rejected_file_with_reason(name, request):
    if name == "unreadable_permissions" and is_root():
        pytest.skip("as root the file is readable; see test_inference_lists_unreadable_permissions_file")
    paths, out, _ = request.getfixturevalue("inference")
    bad = _bad_files(out)
    file = paths[name]
    assert file.name in bad, f"{file.name} not in bad_files.csv: {bad}"
    assert BY_NAME[name].message in bad[file.name].lower(), bad[file.name]
    assert file.name not in _predictions(out)


@pytest.mark.parametrize("name", VALID)
def test_inference_predicts_valid_variant_like_the_source(name, inference):
    paths, out, _ = inference
    predicted = _predictions(out)
    file = paths[name]
    assert file.name in predicted, f"{file.name} not predicted; bad_files: {_bad_files(out)}"
    source = predicted[SOURCE_JPEG.name]
    assert float(predicted[file.name]["prob_PNEUMONIA"]) == pytest.approx(float(source["prob_PNEUMONIA"]),
                                                                        abs=PROB_TOLERANCE)


def test_inference_lists_unreadable_permissions_file(no_permission_file, tmp_path):
    """Root-proof: the inference step that writes bad_files.csv (`partition_readable`), run with nobody's file
    permissions, on the mode-000 file and a good one."""
    import custom.data

    if not hasattr(custom.data, "partition_readable"):
        pytest.skip("custom.data.partition_readable is gone; the grouped inference run covers non-root runs")
    out = world_readable_dir()
    try:
        items = [{"image": str(no_permission_file)}, {"image": str(SOURCE_JPEG)}]
        good = as_nobody(lambda: custom.data.partition_readable(items, out / "bad_files.csv"))
        assert good == [{"image": str(SOURCE_JPEG)}]
        bad = _bad_files(out)
        assert list(bad) == [no_permission_file.name] and "permission denied" in bad[no_permission_file.name].lower()
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_checkpoint_of_another_architecture_fails_naming_both_shapes(tmp_path):
    """A ResNet50 checkpoint given to the ResNet18 bundle: the run fails (no predictions) and says which parameter
    does not fit, with its shape in the checkpoint and in the network."""
    from custom.models.networks import TorchvisionClassifier

    ckpt = tmp_path / "resnet50.pt"
    torch.save({"model": TorchvisionClassifier("resnet50", 1, 2).state_dict(),
                "operating_point": {"threshold": 0.5, "method": "fixed", "positive_index": 1}}, ckpt)
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SOURCE_JPEG, folder)
    result = bundle_run("--config_file", "configs/inference.json", "--dataset_dir", str(folder),
                        "--output_dir", str(tmp_path / "out"), "--ckpt_path", str(ckpt))
    log = result.stdout + result.stderr
    assert result.returncode != 0
    error = next((line for line in log.splitlines() if line.startswith("ValueError:") and "do not fit" in line), "")
    assert f"{ckpt}: 'model' weights do not fit the network TorchvisionClassifier" in error, log[-3000:]
    assert "(64, 64, 1, 1)" in error and "(64, 64, 3, 3)" in error, error
    assert not (tmp_path / "out" / "predictions.csv").exists()


# ------------------------------------------------------------------------------------ (3) MONAI Label endpoint
@pytest.fixture(scope="module")
def ml_server(tmp_path_factory):
    from tests.test_monailabel import ML_PYTHON, running_server

    if not ML_PYTHON.exists():
        pytest.skip(f"MONAI Label not installed: run `bash bundle/monailabel/install.sh` (expects {ML_PYTHON})")
    with running_server(tmp_path_factory.mktemp("monailabel_bad"), ROOT) as url:
        yield url


@pytest.fixture(scope="module")
def source_answer(ml_server):
    from tests.test_monailabel import infer

    response = infer(ml_server, SOURCE_JPEG.name, SOURCE_JPEG.read_bytes())
    assert response.status_code == 200, response.text
    return {p["label"]: p["score"] for p in response.json()["prediction"]}


@pytest.mark.parametrize("name", [c.name for c in CLASSES if c.upload])
def test_monailabel_upload(name, files, ml_server, source_answer):
    """Bad upload: 422 with the reader's reason; valid variant: 200 with the source JPEG's scores."""
    from tests.test_monailabel import infer

    path = files[name]
    response = infer(ml_server, path.name, path.read_bytes())
    if BY_NAME[name].valid:
        assert response.status_code == 200, response.text
        scores = {p["label"]: p["score"] for p in response.json()["prediction"]}
        assert scores["PNEUMONIA"] == pytest.approx(source_answer["PNEUMONIA"], abs=PROB_TOLERANCE)
    else:
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "uploaded image could not be read" in detail and BY_NAME[name].message in detail.lower(), detail


def test_monailabel_still_answers_after_the_bad_uploads(ml_server, source_answer):
    """The rest of the batch: after every bad upload above, a good image still gets its answer."""
    from tests.test_monailabel import infer

    response = infer(ml_server, GOOD[0].name, GOOD[0].read_bytes())
    assert response.status_code == 200, response.text
    assert json.loads(response.text)["label"] in ("NORMAL", "PNEUMONIA")
