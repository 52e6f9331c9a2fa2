"""The bundle served by MONAI Label (`bundle/monailabel`): a real server on 127.0.0.1, real Kermany test images.

Needs MONAI Label, installed beside the project by `bash bundle/monailabel/install.sh` (a venv in
`.venv-monailabel`, or `$MONAILABEL_PYTHON`); the server runs there, the test talks to it over HTTP.
"""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the server runs in MONAI Label's own venv (bundle/monailabel/install.sh); this test only talks HTTP to it
ML_PYTHON = Path(os.environ.get("MONAILABEL_PYTHON", ROOT / ".venv-monailabel" / "bin" / "python"))

pytestmark = pytest.mark.skipif(
    not ML_PYTHON.exists(),
    reason=f"MONAI Label not installed: run `bash bundle/monailabel/install.sh` (expects {ML_PYTHON})")
SHARED = ROOT.parent / "shared" / "data"
KERMANY_TEST = SHARED / "pediatric_cxr" / "test"
MODEL = "cxr_pneumonia_classification"
MEDSAM_MODEL = f"{MODEL}_medsam"  # LiteMedSAM encoder + head: configs/inference_medsam.json, models/medsam_head.pt
CONFIGS = {MODEL: "configs/inference.json",
           MEDSAM_MODEL: "['configs/inference.json','configs/inference_medsam.json']"}
IMAGES = [KERMANY_TEST / "NORMAL" / "IM-0001-0001.jpeg", KERMANY_TEST / "NORMAL" / "IM-0003-0001.jpeg",
          KERMANY_TEST / "PNEUMONIA" / "person100_bacteria_475.jpeg"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(tmp: Path, bundle_root: Path):
    """Base URL of a MONAI Label server running a copy of the app (so its logs/ and model/ stay out of the checkout)
    on `bundle_root`; its output goes to `tmp/server.log`."""
    requests = pytest.importorskip("requests")
    app, studies = tmp / "app", tmp / "studies"
    shutil.copytree(ROOT / "bundle" / "monailabel", app, ignore=shutil.ignore_patterns("logs", "model", "__pycache__"))
    studies.mkdir()
    for image in IMAGES:
        shutil.copy(image, studies)
    port = free_port()
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([str(ML_PYTHON), "-m", "monailabel.main", "start_server", "--app", str(app),
                             "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port),
                             "--conf", "bundle_root", str(bundle_root)],
                            cwd=tmp, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # 26-65 s measured on 2 contended cores, more when LiteMedSAM is exported
        while True:
            if proc.poll() is not None:
                pytest.fail(f"MONAI Label server exited ({proc.returncode}):\n{(tmp / 'server.log').read_text()[-5000:]}")
            try:
                if requests.get(f"{url}/info/", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"MONAI Label server not up after 300 s:\n{(tmp / 'server.log').read_text()[-5000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("monailabel"), ROOT) as url:
        yield url


@pytest.fixture(scope="module")
def buggy_server(tmp_path_factory):
    """(URL, log) of a server on a bundle copy whose preprocessing ends in a step that fails on every image with a
    ValueError: a bug of the server, not bad input."""
    tmp = tmp_path_factory.mktemp("monailabel_bug")
    bundle = tmp / "bundle"
    shutil.copytree(ROOT / "configs", bundle / "configs")
    (bundle / "models").symlink_to(ROOT / "models")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    failing_step = "monai.transforms.Lambdad('image', lambda x: int('bug'))"
    config["preprocessing"]["transforms"] = f"$@preprocessing_transforms + [{failing_step}]"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with running_server(tmp, bundle) as url:
        yield url, tmp / "server.log"


def infer(url: str, name: str, content: bytes, model: str = MODEL):
    import requests

    return requests.post(f"{url}/infer/{model}", params={"output": "json"}, files={"file": (name, content)}, timeout=120)


def test_info_lists_both_classification_models(server):
    import requests

    info = requests.get(f"{server}/info/", timeout=30).json()
    assert set(CONFIGS) <= set(info["models"]), list(info["models"])
    for name in CONFIGS:
        model = info["models"][name]
        assert model["type"] == "classification"
        assert model["dimension"] == 2
        assert model["labels"] == {"NORMAL": 0, "PNEUMONIA": 1}


def test_each_model_offers_only_its_own_checkpoint(server):
    """`model_filename` lists the task's own file; asking the CNN for the MedSAM head (or any other file) is a 422
    that names what is offered, and naming its own file works."""
    import json

    import requests

    info = requests.get(f"{server}/info/", timeout=30).json()["models"]
    offered = {name: info[name]["config"]["model_filename"] for name in CONFIGS}
    assert offered == {MODEL: ["model.pt"], f"{MODEL}_medsam": ["medsam_head.pt"]}
    image = IMAGES[0]
    for filename, status in (("medsam_head.pt", 422), ("ensemble.pt", 422), ("model.pt", 200)):
        response = requests.post(f"{server}/infer/{MODEL}", params={"output": "json"},
                                 files={"file": (image.name, image.read_bytes())},
                                 data={"params": json.dumps({"model_filename": filename})}, timeout=120)
        assert response.status_code == status, (filename, response.text)
        if status == 422:
            assert f"model_filename '{filename}' is not served" in response.json()["detail"]
            assert "['model.pt']" in response.json()["detail"]


@pytest.mark.parametrize("model", list(CONFIGS))
def test_infer_matches_bundle_inference(server, tmp_path, model):
    """Probabilities and decided label for each image equal those of `monai.bundle run` with the model's configs."""
    images = tmp_path / "images"
    images.mkdir()
    for image in IMAGES:
        shutil.copy(image, images)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", CONFIGS[model],
           "--dataset_dir", str(images), "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "out" / "predictions.csv") as f:
        expected = {Path(row["file"]).name: row for row in csv.DictReader(f)}
    assert len(expected) == len(IMAGES)

    labels = set()
    for image in IMAGES:
        response = infer(server, image.name, image.read_bytes(), model)
        assert response.status_code == 200, response.text
        answer = response.json()
        scores = {p["label"]: p["score"] for p in answer["prediction"]}
        assert set(scores) == {"NORMAL", "PNEUMONIA"}
        assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
        row = expected[image.name]
        assert scores["NORMAL"] == pytest.approx(float(row["prob_NORMAL"]), abs=1e-4)
        assert scores["PNEUMONIA"] == pytest.approx(float(row["prob_PNEUMONIA"]), abs=1e-4)
        assert answer["label"] == row["predicted_label"]
        labels.add(answer["label"])
    assert labels == {"NORMAL", "PNEUMONIA"}  # the shipped model tells these images apart


@pytest.mark.parametrize("name, make, message", [
    ("truncated.jpeg", lambda: IMAGES[0].read_bytes()[:3000], "truncated"),
    ("notes.txt", lambda: b"patient notes, not an image\n" * 20, "not a readable image format"),
    ("empty.png", lambda: b"", "empty file"),
])
def test_bad_upload_is_422_with_message(server, name, make, message):
    response = infer(server, name, make())
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "uploaded image could not be read" in detail and message in detail
    upload = detail.split("could not be read: ")[1].split(":")[0]  # the server's temporary copy of the upload
    assert not os.path.exists(upload), f"{upload}: failed upload left on the server"


def test_server_bug_is_500_with_traceback_logged(buggy_server):
    """A ValueError of the server's own code on a good image is no "could not be read" 422."""
    url, log = buggy_server
    response = infer(url, IMAGES[0].name, IMAGES[0].read_bytes())
    assert response.status_code == 500, response.text
    assert "could not be read" not in response.text
    deadline = time.monotonic() + 10
    while "ValueError: invalid literal for int()" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "ValueError: invalid literal for int()" in text, text[-3000:]
