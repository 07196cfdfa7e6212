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


# The longest tests (seconds from an empty compile cache under -n 2 on two cores,
# 2026-12-07, mostly Numba compiling; a parametrized test's cases together). They
# start first, shared between the two halves of the collection: pytest-xdist's
# worksteal gives each of two workers a contiguous half and lets an idle worker
# steal from the end of the other's queue, so a long test near the end of a half
# ran alone while the other core idled (about two minutes of the suite).
DOCS = "tests/test_docs.py::test_guide_pages_run_in_order"
LONGEST = {
    DOCS: 290,
    "tests/kernels/test_cpu_lstm.py::test_cpu_kernels_match_reference_with_activations": 150,
    "tests/kernels/test_cpu_quantized.py::test_other_cpus_variants_give_the_same_layer": 140,
    "tests/test_cuda_backend.py::test_kernels_compile_and_every_launch_fits": 80,
    "tests/kernels/test_cpu_convlstm.py::test_cpu_convlstm_matches_reference": 50,
    "tests/kernels/test_cpu_lstm.py::test_cpu_kernels_match_reference_with_peepholes": 50,
    "tests/test_properties.py::test_cuda_backend_equals_the_reference": 35,
    "tests/test_layer_norm.py::test_gru_layer_matches_numpy": 25,
    "tests/test_bench.py::test_convlstm_bench_against_torch_and_keras_writes_json": 25,
    "tests/test_zoneout.py::test_projected_layer_backends_agree": 20,
    "tests/test_cuda_backend.py::test_gpu_check_script_runs_under_the_simulator": 20,
    "tests/kernels/test_harness.py::test_quick_convlstm_run_checks_both_passes": 20,
}
# Of those, the ones that compile kernels the docs' pages compile too (a user's
# activation with peepholes, the ConvLSTM's Winograd loops): they run in the docs'
# half, after it, and load those kernels from the cache. Started on the other core
# at the same time, both compiled them (64 s of compile done twice, 2026-12-07).
AFTER_DOCS = ("tests/kernels/test_cpu_lstm.py::test_cpu_kernels_match_reference_with_activations",
              "tests/kernels/test_cpu_convlstm.py::test_cpu_convlstm_matches_reference")


def _longest_first(items):
    """The collection reordered: each half starts with its share of LONGEST (the
    longest placed first, each in the half with less so far, AFTER_DOCS in the
    docs' half); the rest keep their order. Under one process the order makes no
    difference."""
    groups = {prefix: [] for prefix in LONGEST}
    rest = []
    for item in items:
        prefix = next((p for p in LONGEST if item.nodeid.startswith(p)), None)
        (groups[prefix] if prefix else rest).append(item)
    halves, load, docs_half = ([], []), [0, 0], None
    for prefix, seconds in sorted(LONGEST.items(), key=lambda kv: -kv[1]):  # (DOCS first)
        k = load.index(min(load))
        if prefix in AFTER_DOCS and docs_half is not None:
            k = docs_half
        if prefix == DOCS and groups[DOCS]:
            docs_half = k
        halves[k].extend(groups[prefix])
        load[k] += seconds
    cut = max(0, len(items) // 2 - len(halves[0]))
    return halves[0] + rest[:cut] + halves[1] + rest[cut:]


def pytest_collection_modifyitems(config, items):
    items[:] = _longest_first(items)
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
