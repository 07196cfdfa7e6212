"""The kernel harness (python -m numlstm.kernels.harness): it checks every variant
against the reference before it times it, and fails loudly on a mismatch. (Its
CUDA run in Numba's simulator is tools/gpu_check.sh --simulate's, which
tests/test_cuda_backend.py runs.)"""
import os
import re

import numpy as np
import pytest

from numlstm.kernels import harness
from numlstm.kernels.cpu import KERNELS


def test_quick_cpu_run_checks_every_variant(capsys):
    """--quick (what CI runs): every cell, option family, dtype, plan and pass at the
    two smallest shapes, a row each with its error under the tolerance and a time;
    exit 0."""
    assert harness.main(["--backend", "cpu", "--quick"]) == 0
    rows = [l for l in capsys.readouterr().out.splitlines()[2:] if l.strip()]
    families = {(r.split()[0], r.split()[1]) for r in rows}
    assert families == {(c, f) for c in harness.OPTIONS for f in harness.OPTIONS[c]}
    want = {"auto: one thread", "  one thread", "units x2", "rows x2 fused", "rows x2,",
            "auto: the BLAS loop", "the streaming step"}
    assert want == {p for p in want if any(p in r for r in rows)}, rows
    for r in rows:
        assert "MISMATCH" not in r
        # after the error and its tolerance: ms, GFLOP/s (and, on a busy machine, a
        # note that the thread policy held the loop on one thread)
        ms, gflops = (float(v) for v in re.search(r"\(\de-\d+\)\s+(\S+)\s+(\S+)", r).groups())
        assert ms > 0 and gflops > 0, r
    # the plain LSTM's streaming step: 2 dtypes x 2 shapes
    assert sum(r.startswith("lstm  plain ") and " step " in r for r in rows) == 4


def test_a_wrong_kernel_is_reported_and_fails(monkeypatch, capsys):
    """A forward that is off by a little in one value: the row says MISMATCH, no time
    is printed for it, and the run exits 1."""
    good = KERNELS["rnn"]

    def off_by_a_little(*args, **kwargs):
        y, h, cache = good.forward(*args, **kwargs)
        y = y.copy()
        y.flat[-1] += np.float32(1e-3) * max(1.0, float(np.abs(y).max()))
        return y, h, cache

    monkeypatch.setitem(KERNELS, "rnn", good._replace(forward=off_by_a_little))
    code = harness.main(["--backend", "cpu", "--quick", "--cell", "rnn", "--options",
                         "plain", "--dtype", "float32", "--plan", "auto"])
    out = capsys.readouterr()
    assert code == 1
    assert "MISMATCH" in out.out and "did not match the reference" in out.err


@pytest.mark.parametrize("argv, message", [
    (["--plan", "diagonal"], "not a plan of the cpu backend"),
    (["--options", "sparkle"], "unknown ['sparkle']"),
    (["--shapes", "3,2,1"], "expected T,B,I,H"),
    (["--shapes", "3,0,2,2"], "at least 1"),
    (["--resources"], "--resources is of the cuda backend")])
def test_bad_arguments_say_what_was_expected(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        harness.main(["--backend", "cpu"] + argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") != "1",
                    reason="the CUDA simulator is off (a GPU machine)")
def test_resources_needs_a_real_target(capsys):
    """--resources compiles for real GPUs: under the simulator (this session's) it
    says so and exits 2 (the check itself runs in test_cuda_backend.py)."""
    assert harness.main(["--backend", "cuda", "--resources"]) == 2
    assert "without NUMBA_ENABLE_CUDASIM=1" in capsys.readouterr().err


def test_quick_quantized_run_checks_every_variant(capsys):
    """--quantized --quick: each int8 product variant this CPU runs (exact: error 0),
    each bfloat16 one, and the int8 and bfloat16 layers, a row each with a time;
    exit 0."""
    from numlstm.kernels.cpu import qtile
    assert harness.main(["--quantized", "--quick"]) == 0
    rows = [l for l in capsys.readouterr().out.splitlines()[2:] if l.strip()]
    for variant in qtile.VARIANTS:
        mine = [r for r in rows if r.startswith(f"int8 product {variant} ")]
        assert len(mine) == len(harness.QUICK_SHAPES), (variant, rows)
        assert all(" 0.0e+00 " in r for r in mine), mine
    for variant in qtile.BF16_VARIANTS:
        mine = [r for r in rows if r.startswith(f"bf16 product {variant} ")]
        assert len(mine) == len(harness.QUICK_SHAPES), (variant, rows)
    assert sum(r.startswith(("LSTM int8", "LSTM bfloat16")) for r in rows) == 4
    assert not any("MISMATCH" in r for r in rows)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_quick_convlstm_run_checks_both_passes(capsys, backend):
    """--convlstm --quick: a row per shape, dtype and pass (on the CPU per form too:
    the direct one, and Winograd's in float32 with the 3x3 kernel of the first
    shape), each error under its tolerance with a time (the CUDA kernels in the
    simulator, float32 only: the simulator takes half a minute a dtype, and
    tests/kernels/test_cuda_convlstm.py checks both dtypes there); exit 0."""
    if backend == "cuda" and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        pytest.skip("the CUDA simulator is off (a GPU machine runs the full check)")
    dtypes = ("float32",) if backend == "cuda" else ("float32", "float64")
    assert harness.main(["--convlstm", "--backend", backend, "--quick", "--dtype", *dtypes]) == 0
    rows = [l.split() for l in capsys.readouterr().out.splitlines()[2:] if l.strip()]
    want = [(p, d) for p in ("inference", "training") for d in dtypes]
    if backend == "cpu":
        want = [(f"{p}/direct", d) for p, d in want] + [("inference/winograd", "float32"),
                                                       ("training/winograd", "float32")]
    assert sorted({(r[0], r[1]) for r in rows}) == sorted(want)
    assert len(rows) == 2 * len(dtypes) * len(harness.CONVLSTM_QUICK) + (backend == "cpu") * 2
    for r in rows:
        assert float(r[3]) <= float(r[4].strip("()")) and float(r[5]) > 0


def test_quick_attention_run_checks_both_passes(capsys):
    assert harness.main(["--attention", "--quick"]) == 0
    rows = [r.split() for r in capsys.readouterr().out.splitlines()[2:] if r.strip()]
    assert len(rows) == 4 * len(harness.ATTENTION_QUICK)
    for r in rows:
        assert float(r[3]) <= float(r[4].strip("()")) and float(r[5]) > 0


def test_a_wrong_attention_kernel_is_reported(monkeypatch, capsys):
    from numlstm.kernels import cpu
    good = cpu.attention_backward_cpu

    def off(*args):
        dq, dkeys, dvalues, dv = good(*args)
        return dq, dkeys * 1.001, dvalues, dv
    monkeypatch.setattr(cpu, "attention_backward_cpu", off)
    assert harness.main(["--attention", "--quick", "--dtype", "float64"]) == 1
    out = capsys.readouterr()
    assert "training" in out.err and "MISMATCH" in out.out


def test_a_wrong_convlstm_kernel_is_reported(monkeypatch, capsys):
    from numlstm.kernels.cpu import convlstm
    good = convlstm.convlstm_backward_cpu

    def off(*args):
        g = good(*args)
        g["db"] = g["db"] + 1e-3
        return g
    monkeypatch.setattr(convlstm, "convlstm_backward_cpu", off)
    assert harness.main(["--convlstm", "--quick", "--dtype", "float64"]) == 1
    out = capsys.readouterr()
    assert "training" in out.err and "MISMATCH" in out.out
