"""Wall-clock timing for the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def best_seconds(fn: Callable[[], object], repeats: int = 3, device: torch.device | str = "cpu") -> float:
    """Best of `repeats` wall-clock times (s) of ``fn()`` after one warm-up call; CUDA is synchronised around each."""
    cuda = torch.device(device).type == "cuda"
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
