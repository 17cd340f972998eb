"""Suite-wide settings: one torch thread (the tensors here are tiny; two threads on a loaded 2-core
machine make each small matmul wait on the other), and deterministic seeds per test."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
