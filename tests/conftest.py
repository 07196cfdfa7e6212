"""Fixtures shared by every test.

Where the machine has no NVIDIA GPU, the CUDA kernels run in Numba's simulator:
NUMBA_ENABLE_CUDASIM is set here, before anything imports numba.cuda (numlstm
imports it only for backend="cuda"). Tests that need a real GPU are marked
`gpu` and skip elsewhere.
"""
import os
import sys
import zlib

import numpy as np
import pytest

HAS_GPU = os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")
if "NUMBA_ENABLE_CUDASIM" not in os.environ and not HAS_GPU:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    if "numba" in sys.modules:  # numba read the environment already
        sys.modules["numba"].config.ENABLE_CUDASIM = 1
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a real NVIDIA GPU (skips elsewhere)")


def pytest_collection_modifyitems(config, items):
    if SIMULATED or not HAS_GPU:
        skip = pytest.mark.skip(reason="needs a real NVIDIA GPU (none here, or the CUDA "
                                       "simulator is on)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: fresh per test, reproducible per run."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
