"""kernels/cuda/resources.py: the occupancy arithmetic, the reading of ptxas's
report and the checks of the launch plans, with figures given here (no compiling;
tests/test_cuda_backend.py runs the whole check on ptxas's real figures). The
expected counts are worked out by hand from the CUDA occupancy calculator's
rules, as the comments show."""
import pytest

from numlstm.kernels.cuda import resources
from numlstm.kernels.cuda.resources import ARCHS, Usage, blocks_per_sm, parse_ptxas

A100, L40S, H100 = ARCHS


def _usage(registers, shared=0, spill=0):
    return Usage(registers, shared, spill, spill, 0)


@pytest.mark.parametrize("arch, usage, threads, dynamic, want", [
    # registers per warp (x 32 lanes, in units of 256) from each of 4 sub-partitions
    # of 16384: 160 registers = 5120 a warp, 3 warps a sub-partition, 12 an SM: one
    # block of 8 warps
    (A100, _usage(160), 256, 0, 1),
    # 32 registers: 1024 a warp, 64 warps an SM, 8 blocks; threads allow 2048 / 256 = 8
    (A100, _usage(32), 256, 0, 8),
    # 88 registers round up to 2816 a warp: 16384 // 2816 = 5 a sub-partition, 20
    # one-warp blocks (a pooled 65536 // 2816 would say 23)
    (H100, _usage(88), 32, 0, 20),
    # 48 KiB dynamic + 1 KiB the driver keeps: 100 KiB // 49 KiB = 2
    (L40S, _usage(32), 32, 48 * 1024, 2),
    # no registers, one warp: the SM's 24 blocks are the limit (L40S)
    (L40S, _usage(0), 32, 0, 24),
    # 255 registers round up to 8192 a warp, x 16 warps = 131072 > 65536: none fits
    (H100, _usage(255), 512, 0, 0),
    # static shared memory past the SM's: none fits
    (L40S, _usage(32, shared=120 * 1024), 32, 0, 0),
])
def test_blocks_per_sm(arch, usage, threads, dynamic, want):
    assert blocks_per_sm(arch, usage, threads, dynamic) == want


REPORT = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN6cudapy4kern' for 'sm_90'
ptxas info    : Function properties for _ZN6cudapy4kern
    16 bytes stack frame, 24 bytes spill stores, 20 bytes spill loads
ptxas info    : Used 142 registers, used 1 barriers, 2048 bytes smem, 380 bytes cmem[0]
ptxas info    : Compile time = 401.2 ms
"""


def test_parse_ptxas():
    assert parse_ptxas(REPORT) == {"_ZN6cudapy4kern": Usage(142, 2048, 24, 20, 16)}
    no_smem = REPORT.replace(", 2048 bytes smem", "")
    assert parse_ptxas(no_smem)["_ZN6cudapy4kern"].shared == 0


@pytest.mark.parametrize("cut", ["Used 142 registers", "16 bytes stack frame"])
def test_a_report_without_its_figures_is_an_error(cut):
    """Zeros read from a report in another format would pass every check."""
    with pytest.raises(RuntimeError, match="no register count or spill line"):
        parse_ptxas(REPORT.replace(cut, "something else"))


def _figures(persistent=_usage(64), other=_usage(64)):
    """usage_of for plans(): `persistent` for the persistent kernels, `other` for the rest."""
    def usage_of(kernel, sig):
        u = persistent if "persistent" in kernel.py_func.__name__ else other
        return {a.sm: u for a in ARCHS}
    return usage_of


def test_plans_fit_and_persistent_grids_are_co_resident():
    rows = resources.plans(dtypes=("float32",), usage_of=_figures())
    assert rows and not [p for r in rows for p in r.problems]
    cells = {(r.cell, r.pass_) for r in rows}
    assert len(cells) == 8  # lstm, lstm+layer_norm, gru, rnn; forward and backward
    for r in rows:
        if r.plan.persistent:
            assert r.plan.blocks <= r.co_resident
            assert r.plan.shared <= 48 * 1024
            want = blocks_per_sm(r.arch, _usage(64), r.plan.threads, r.plan.shared) * r.arch.sms
            assert r.co_resident == want
    # H=64, B=1: one unit a block, 64 blocks, on every part
    small = [r for r in rows if r.H == 64 and r.B == 1]
    assert all(r.plan.persistent and r.plan.blocks == 64 for r in small)


def test_a_persistent_kernel_that_cannot_be_resident_is_never_planned():
    # static shared memory no L40S SM holds: every recurrence runs per step there
    rows = resources.plans(dtypes=("float32",), usage_of=_figures(
        persistent=_usage(64, shared=120 * 1024)))
    l40s = [r for r in rows if r.arch is L40S]
    assert l40s and not any(r.plan.persistent for r in l40s)
    # ... which, where the persistent kernel should run (float32, H <= 256, B <= 16),
    # is reported, and nothing else is
    for r in rows:
        should = r.arch is L40S and r.H <= 256 and r.B <= 16
        assert [p for p in r.problems if "should be persistent" in p] == (
            [r.problems[0]] if should else []), r
        assert len(r.problems) == should


def test_a_launch_that_does_not_fit_is_reported():
    rows = resources.plans(dtypes=("float32",), cells=["rnn"], usage_of=_figures(
        persistent=_usage(64, shared=120 * 1024), other=_usage(64, shared=120 * 1024)))
    problems = [p for r in rows if r.arch is L40S for p in r.problems]
    assert any("does not fit on an SM" in p for p in problems)
    assert all("does not fit on an SM" in p or "should be persistent" in p for p in problems)
    assert not [p for r in rows if r.arch is not L40S for p in r.problems]


def test_spills_of_a_float32_kernel_are_reported():
    rows = resources.plans(dtypes=("float32",), cells=["gru"],
                           usage_of=_figures(persistent=_usage(64, spill=8)))
    assert any("spills 8 bytes" in p for r in rows for p in r.problems)
