"""`configs/multi_gpu_train.json` under `torchrun --nproc_per_node 2` on CPU (gloo), one epoch on real Kermany images."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from custom.data.datalists import write_datalist
from custom.models.networks import TorchvisionClassifier

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PEDIATRIC = SHARED / "pediatric_cxr" / "train"

# Test-only probe merged last: each rank writes the files its trainer loaded in epoch 1 and its validation iterations.
PROBE = {
    "seen": "$[]",
    "training": [
        "$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_STARTED, lambda e: @seen.extend(e.state.batch['image'].meta['filename_or_obj']))",
        "$@train#trainer.run()",
        "$custom.io.write_json({'train_files': @seen, 'val_iterations': @validate#evaluator.state.iteration}, os.path.join(@output_dir, 'seen_rank%d.json' % torch.distributed.get_rank()))",
    ],
}


def tiny_datalist(path: Path, train_per_class: int = 12, val_per_class: int = 4) -> None:
    items = {"training": [], "validation": []}
    for label, name in enumerate(("NORMAL", "PNEUMONIA")):
        files = sorted((PEDIATRIC / name).glob("*.jpeg"))[: train_per_class + val_per_class]
        rows = [{"image": str(f), "label": label, "class_name": name, "patient_id": f.stem, "domain": "pediatric"}
                for f in files]
        items["training"] += rows[:train_per_class]
        items["validation"] += rows[train_per_class:]
    write_datalist({"class_names": ["NORMAL", "PNEUMONIA"], "test": [], **items}, path)


def test_two_process_gloo_training(tmp_path):
    datalist = tmp_path / "datalist.json"
    tiny_datalist(datalist)
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps(PROBE))
    configs = str(["configs/train.json", "configs/multi_gpu_train.json", str(probe)])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "monai.bundle", "run", "training", "--config_file", configs, "--dataset_dir", str(PEDIATRIC),
           "--datalist_file", str(datalist), "--output_dir", str(tmp_path / "train"), "--ckpt_dir", str(tmp_path / "models"),
           "--max_epochs", "1", "--batch_size", "4", "--image_size", "[64,64]", "--make_plots", "False"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]

    # both ranks trained, on disjoint halves that together cover the training split
    probes = [json.loads((tmp_path / "train" / f"seen_rank{r}.json").read_text()) for r in (0, 1)]
    seen = [p["train_files"] for p in probes]
    train_files = {item["image"] for item in json.loads(datalist.read_text())["training"]}
    assert len(seen[0]) == len(seen[1]) == 12
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == train_files

    # validation ran once, on rank 0 (8 images, batch 4); checkpoint, resume state and metrics written once
    assert [p["val_iterations"] for p in probes] == [2, 0]
    models = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert models == ["checkpoint_epoch=1.pt", "model.pt"], models
    metrics = json.loads((tmp_path / "train" / "val_metrics.json").read_text())
    assert metrics["n"] == 8
    history = json.loads((tmp_path / "train" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1]

    # the saved weights are the plain network's (DistributedDataParallel unwrapped), loadable for inference
    checkpoint = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"model", "operating_point", "provenance"}
    assert checkpoint["provenance"]["seed"] == 0 and checkpoint["provenance"]["datalist_sizes"]["validation"] == 8
    net = TorchvisionClassifier(arch="resnet18", in_channels=1, num_classes=2)
    net.load_state_dict(checkpoint["model"])
