"""Suite-wide settings: one torch thread (the tensors here are tiny; two threads on a loaded 2-core
machine make each small matmul wait on the other), and deterministic seeds per test."""

import lightning.pytorch  # noqa: F401  (see below)
import pytest
import torch

# Lightning gives its loggers a handler on the sys.stderr of the moment it is first imported. Imported inside a test,
# that is the test's capture, closed when the test ends: every later Lightning message then printed "--- Logging
# error --- Traceback" into the next test's stderr (tests/test_cli.py run alone failed on it). Imported here, at
# collection, the handler writes to the session's stderr.


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
