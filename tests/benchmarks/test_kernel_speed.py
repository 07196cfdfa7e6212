"""Per-kernel timings as pytest-benchmark tests: each CPU kernel variant (cell, plan,
pass) at a few shapes, checked against the reference before it is timed
(numlstm.kernels.harness does the work).

The README's test command runs these once each with the timing off (pytest-benchmark
turns itself off under xdist, and pyproject passes --benchmark-disable), so they are
exercised, not timed. To time them and keep the numbers, on an idle machine:

    python3 -m pytest tests/benchmarks -p no:xdist --benchmark-enable --benchmark-autosave

and after a change, to see whether any kernel got slower:

    python3 -m pytest tests/benchmarks -p no:xdist --benchmark-enable --benchmark-compare
"""
import numpy as np
import pytest

from numlstm.kernels import harness

SHAPES = [(16, 8, 32, 64), (64, 32, 64, 128)]
# (cell, plan): the plans each cell's float32 loops have (the RNN has no batch split,
# only the LSTM fuses the input projection into it)
VARIANTS = [("lstm", "auto"), ("lstm", "one"), ("lstm", "units"), ("lstm", "rows"),
            ("lstm", "rows-fused"), ("gru", "auto"), ("gru", "units"), ("gru", "rows"),
            ("rnn", "auto"), ("rnn", "units")]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("pass_", ["inference", "training"])
@pytest.mark.parametrize("cell, plan", VARIANTS, ids=lambda v: str(v))
def test_kernel_speed(benchmark, cell, plan, pass_, shape):
    case = harness.Case(cell, "plain", np.float32, shape, seed=3)
    runner = harness.Runner("cpu")
    packed = runner.kernels[cell].pack(*case.weights, **case.pack_options)
    extra, text = runner.plan(case, packed, plan, pass_ == "training")
    err = runner.check(case, packed, pass_, extra)
    assert err <= case.rtol, f"{cell} {plan} {pass_}: error {err:.2e} > {case.rtol:.0e}"
    call = runner.call(case, packed, pass_, extra)
    benchmark.extra_info.update(plan=text, gflop=runner.flops(case, pass_) / 1e9)
    benchmark(call)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_step_speed(benchmark, cell):
    """One streaming step at B=1 (the call a live model makes per input)."""
    case = harness.Case(cell, "plain", np.float32, (1, 1, 64, 128), seed=4)
    runner = harness.Runner("cpu")
    packed = runner.kernels[cell].pack(*case.weights, **case.pack_options)
    assert runner.check(case, packed, "step", {}) <= case.rtol
    benchmark(runner.call(case, packed, "step", {}))
