import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` (README's test command): one core per xdist worker, for its torch ops and for the OpenMP / BLAS
    # pools of the bundle runs it starts as subprocesses (they inherit the environment)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a test module (`pytest.mark.usefixtures("single_thread")`): on a small CPU shared with
    other jobs, spinning OpenMP threads only slow things down."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
