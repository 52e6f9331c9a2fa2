import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a test module (`pytest.mark.usefixtures("single_thread")`): on a small CPU shared with
    other jobs, spinning OpenMP threads only slow things down."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
