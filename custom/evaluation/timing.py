"""Wall-clock timing for the benchmark scripts, and the record (date, command, device, versions) that starts each
one's results file, so that every number in the docs can name the machine and the command that measured it.

torch is imported only where it is needed: `run_record` describes torch (threads, GPU, version) only when the calling
script has imported it, so a torch-free script (a load-test client, a metrics report) stays torch-free.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable


def best_seconds(fn: Callable[[], object], repeats: int = 3, device=None) -> float:
    """Best of `repeats` wall-clock times (s) of ``fn()`` after one warm-up call; CUDA is synchronised around each."""
    import torch

    cuda = torch.device(device or "cpu").type == "cuda"
    fn()
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The first "model name" of `cpuinfo` (Linux x86), else ``platform.processor()``, else ``platform.machine()``."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    module = sys.modules.get(package)
    if getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_info(device=None) -> dict:
    """CPU model, CPU count, ``OMP_NUM_THREADS``; if torch is imported also torch's intra-op threads, the GPU name
    (when CUDA is available) and `device` (where the measured work ran)."""
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = torch.cuda.is_available()
        info.update({"torch_threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name(
            device if device is not None and torch.device(device).type == "cuda" else None) if cuda else None,
            "used": str(device) if device is not None else None})
    return info


def run_record(device=None, packages: Iterable[str] = ()) -> dict:
    """What every results file starts with: ``date`` (UTC, ISO 8601), ``command`` (``python`` + argv), ``device``
    (`device_info`) and ``versions`` (Python, torch when imported, and each of `packages`, e.g. ``onnxruntime``)."""
    versions = {"python": platform.python_version()}
    for package in (["torch"] if "torch" in sys.modules else []) + list(packages):
        versions[package] = _version(package)
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", *sys.argv]), "device": device_info(device), "versions": versions}
