"""Faults: `kill -9` in the middle of training and of the MedSAM embedding cache fill, then the same command again.

Training (configs/train.json on 16 + 8 sample images at 64 px) is killed as soon as its first periodic checkpoint is
on disk; a kill during the write of the next checkpoint is added by truncating a copy of it (CheckpointSaver does not
write atomically). The rerun must set the truncated one aside, resume from the last good one and complete.
The embedding cache (scripts/embed.py) is killed as soon as its first entry is on disk; no entry left may be corrupt
(entries are written to a temp file and renamed), and the rerun completes, reusing them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_bundle import FAST, ROOT, SAMPLE, tiny_datalist

SHARED = ROOT.parent / "shared" / "data"
HIRES = SHARED / "pediatric_cxr_hires512" / "train"

pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"sample data not found at {SAMPLE}")


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def kill_when(proc: subprocess.Popen, ready, log: Path, timeout: float = 600) -> None:
    """SIGKILL `proc` as soon as `ready()` is true; fails if it exits first or never gets there."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"kill point not reached in {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def test_training_killed_with_sigkill_resumes_and_completes(tmp_path):
    tiny_datalist(tmp_path / "tiny.json", train_per_class=8, val_per_class=4)
    models = tmp_path / "models"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
           "--output_dir", str(tmp_path / "train"), "--ckpt_dir", str(models), "--max_epochs", "3", *FAST,
           "--datalist_file", str(tmp_path / "tiny.json"), "--make_plots", "False"]
    kill_when(start(cmd, tmp_path / "killed.log"), lambda: (models / "checkpoint_epoch=1.pt").exists(),
              tmp_path / "killed.log")

    def loads(path: Path) -> bool:
        try:
            torch.load(path, map_location="cpu", weights_only=True)
            return True
        except Exception:  # noqa: BLE001 - truncated by the kill
            return False

    saved = sorted((int(p.stem.split("=")[1]), p) for p in models.glob("checkpoint_epoch=*.pt"))
    good = [n for n, p in saved if loads(p)]
    last = max(good, default=0)
    assert last < 3, "the run finished before the kill: nothing tested"
    # and a kill during the write of the next checkpoint: its first half on disk
    reference = models / f"checkpoint_epoch={last}.pt" if last else None
    if reference is not None:
        data = reference.read_bytes()
        (models / f"checkpoint_epoch={last + 1}.pt").write_bytes(data[: len(data) // 2])

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-5000:]
    if last:
        assert f"resumed from {models / f'checkpoint_epoch={last}.pt'}" in log, log[-3000:]
        assert (models / f"checkpoint_epoch={last + 1}.pt.corrupt").exists()
        assert "cannot read checkpoint" in log
    history = json.loads((tmp_path / "train" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    final = torch.load(models / "checkpoint_epoch=3.pt", map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == 3 * final["trainer"]["epoch_length"]
    assert set(torch.load(models / "model.pt", map_location="cpu", weights_only=True)) >= {"model", "operating_point"}


def test_embedding_cache_killed_with_sigkill_leaves_no_corrupt_entry(tmp_path):
    from custom.data.datalists import write_datalist

    images = sorted((HIRES / "NORMAL").glob("*.jpeg"))[:4] + sorted((HIRES / "PNEUMONIA").glob("*.jpeg"))[:4]
    if len(images) < 8:
        pytest.skip(f"shared data not found at {HIRES}")
    write_datalist({"class_names": ["NORMAL", "PNEUMONIA"], "validation": [], "test": [],
                    "training": [{"image": str(p), "label": int("PNEUMONIA" in str(p))} for p in images]},
                   tmp_path / "tiny.json")
    cache_dir = tmp_path / "cache"
    cmd = [sys.executable, "scripts/embed.py", "--datalist", str(tmp_path / "tiny.json"), "--cache_dir", str(cache_dir),
           "--splits", "training", "--batch_size", "1", "--progress", "False", "--device", "cpu",
           "--backend", "torch", "--feature_stages", ""]  # 1 stream: the default for eager
    kill_when(start(cmd, tmp_path / "killed.log"), lambda: any(cache_dir.glob("??/*.pt")), tmp_path / "killed.log")

    entries = list(cache_dir.glob("??/*.pt"))
    assert 1 <= len(entries) < len(images), "the run finished before the kill: nothing tested"
    for entry in entries:  # every entry under its final name is complete and consistent
        stored = torch.load(entry, map_location="cpu", weights_only=True)
        assert stored["key"] == entry.stem and tuple(stored["embedding"].shape) == (256, 16, 16)
        import hashlib

        assert hashlib.sha256(stored["embedding"].contiguous().numpy().tobytes()).hexdigest() == stored["sha256"]

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout[rerun.stdout.index("{"):])
    assert summary["corrupt_entries_recomputed"] == 0
    split = summary["splits"]["training"]
    assert split["failed"] == 0 and split["hits"] == len(entries) and split["hits"] + split["misses"] == len(images)
    assert len(list(cache_dir.glob("??/*.pt"))) == len(images)
