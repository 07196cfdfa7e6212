"""backend="cuda" end to end: layers against the CPU backend, device arrays in and
out, the errors, and (on a real GPU only) parity at real sizes.

Without a GPU the kernels run in Numba's simulator (tests/conftest.py sets it),
so shapes stay tiny. tests/kernels/test_cuda_*.py check each kernel against the
NumPy reference; here the whole layer path is checked.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import HAS_GPU, SIMULATED
from helpers import assert_close

import numlstm

cuda = pytest.importorskip("numba.cuda")

CLASSES = {"lstm": numlstm.LSTM, "gru": numlstm.GRU, "rnn": numlstm.RNN}
RTOL = {np.float32: 3e-5, np.float64: 1e-12}
I, H = 3, 4


def _pair(cell, backend, **kw):
    kw.setdefault("seed", 5)
    return CLASSES[cell](I, H, backend=backend, **kw)


def _run(layer, x, dy, lengths=None):
    y, state = layer(x, training=True, lengths=lengths)
    dx, dstate = layer.backward(dy)
    flat = lambda s: list(s) if isinstance(s, tuple) else [s]  # noqa: E731
    return ([y] + flat(state) + [dx] + flat(dstate) +
            [layer.grads[k] for k in sorted(layer.grads)])


@pytest.mark.parametrize("cell,dtype,layers,bidirectional,lengths,options", [
    ("lstm", np.float32, 2, True, True, {}),
    ("lstm", np.float64, 1, False, False, {}),
    ("gru", np.float32, 2, True, True, {}),
    ("gru", np.float64, 1, True, False, {"reset_after": False}),
    ("rnn", np.float32, 1, True, True, {"nonlinearity": "relu"}),
    ("rnn", np.float64, 2, False, False, {}),
])
def test_cuda_layer_matches_cpu(rng, cell, dtype, layers, bidirectional, lengths, options):
    T, B = 3, 2
    x = rng.standard_normal((T, B, I)).astype(dtype)
    D = 2 if bidirectional else 1
    dy = rng.standard_normal((T, B, D * H)).astype(dtype)
    lens = np.array([3, 1]) if lengths else None
    kw = dict(num_layers=layers, bidirectional=bidirectional, dtype=dtype, **options)
    got = _run(_pair(cell, "cuda", **kw), x, dy, lens)
    want = _run(_pair(cell, "cpu", **kw), x, dy, lens)
    assert all(isinstance(a, np.ndarray) for a in got), "NumPy in must give NumPy out"
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, RTOL[dtype], f"{cell} output {i}")


def test_device_arrays_in_device_arrays_out(rng):
    x = rng.standard_normal((2, 3, I)).astype(np.float32)  # batch_first [B,T,I]
    dy = rng.standard_normal((2, 3, 2 * H)).astype(np.float32)
    kw = dict(bidirectional=True, batch_first=True, merge_mode="concat")
    gpu = _pair("lstm", "auto", **kw)  # auto: cuda, because x lives on the device
    y, (h, c) = gpu(cuda.to_device(x), training=True)
    dx, (dh0, dc0) = gpu.backward(cuda.to_device(dy))
    for arr in (y, h, c, dx, dh0, dc0):
        assert numlstm.dispatch.is_device_array(arr), type(arr)
    host = _pair("lstm", "cpu", **kw)
    y_c, (h_c, c_c) = host(x, training=True)
    dx_c, _ = host.backward(dy)
    for a, b, what in ((y, y_c, "y"), (h, h_c, "h"), (c, c_c, "c"), (dx, dx_c, "dx")):
        assert_close(a.copy_to_host(), b, 3e-5, what)


@pytest.mark.parametrize("mode", ["sum", "ave", "mul", None])
def test_merge_modes_and_unbatched_input_on_cuda(rng, mode):
    x = rng.standard_normal((3, I)).astype(np.float32)  # unbatched [T,I]
    outs = []
    for backend in ("cuda", "cpu"):
        layer = _pair("gru", backend, bidirectional=True, merge_mode=mode)
        y, h = layer(x, training=True)
        dy = tuple(np.ones_like(p) for p in y) if mode is None else np.ones_like(y)
        dx, dh0 = layer.backward(dy)
        outs.append((list(y) if mode is None else [y]) + [h, dx, dh0])
    for i, (a, b) in enumerate(zip(*outs)):
        assert_close(a, b, 3e-5, f"output {i}")


def test_step_and_stateful_on_cuda(rng):
    x = rng.standard_normal((3, 2, I)).astype(np.float32)
    layer = _pair("lstm", "cuda", num_layers=2, stateful=True)
    y_seq, (h_seq, c_seq) = _pair("lstm", "cpu", num_layers=2)(x)
    for t in range(3):
        y_t, (h, c) = layer.step(x[t])
        assert_close(y_t, y_seq[t], 3e-5, f"y at step {t}")
    assert_close(h, h_seq, 3e-5, "h_n")
    assert_close(c, c_seq, 3e-5, "c_n")
    layer.reset_state()
    y_again, _ = layer.step(x[0])
    assert_close(y_again, y_seq[0], 3e-5, "y after reset_state")


def test_sequential_protocol_on_cuda(rng):
    """A model's forward/backward_output (batch-first, many-to-one) on the GPU."""
    x = rng.standard_normal((2, 3, I)).astype(np.float32)
    res = []
    for backend in ("cuda", "cpu"):
        layer = _pair("lstm", backend, bidirectional=True, merge_mode="sum",
                      return_sequences=False)
        out = layer.forward(x, training=True)
        dx = layer.backward_output(np.ones_like(out))
        res.append([out, dx] + [layer.grads[k] for k in sorted(layer.grads)])
    for i, (a, b) in enumerate(zip(*res)):
        assert_close(a, b, 3e-5, f"result {i}")


def test_mixed_host_and_device_arrays_are_refused(rng):
    x = cuda.to_device(rng.standard_normal((3, 2, I)).astype(np.float32))
    h0 = np.zeros((1, 2, H), np.float32)
    with pytest.raises(RuntimeError, match="h0 is a host .NumPy. array but x is a CUDA "
                                           "device array"):
        _pair("gru", "cuda")(x, h0)
    layer = _pair("gru", "cuda")
    layer(np.zeros((3, 2, I), np.float32), training=True)
    with pytest.raises(RuntimeError, match="dy is a CUDA device array but x is a host"):
        layer.backward(cuda.to_device(np.zeros((3, 2, H), np.float32)))


def test_cpu_backend_refuses_a_device_array(rng):
    x = cuda.to_device(np.zeros((3, 2, I), np.float32))
    with pytest.raises(RuntimeError, match="backend='cpu' runs on the CPU, but x is a CUDA"):
        _pair("rnn", "cpu")(x)


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")
def test_no_gpu_gives_a_clear_error():
    code = ("import numpy as np, numlstm\n"
            "numlstm.LSTM(3, 4, backend='cuda')(np.zeros((2, 1, 3), np.float32))")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode != 0
    assert "RuntimeError: backend='cuda' needs an NVIDIA GPU and its driver" in run.stderr
    assert "looked for the CUDA driver library (libcuda)" in run.stderr
    assert "pip install 'numlstm[cuda]'" in run.stderr


@pytest.mark.parametrize("available, nvvm_error, numba_cuda, want, unwanted", [
    (False, None, True, ["needs an NVIDIA GPU", "(no libcuda)", "pip install 'numlstm[cuda]'",
                         "NUMBA_ENABLE_CUDASIM=1"], ["built-in target"]),
    (False, None, False, ["pip install 'numlstm[cuda]'", "numba's built-in target"], []),
    (True, "NvvmSupportError: libNVVM cannot be found", True,
     ["found a GPU, but not NVVM", "libNVVM cannot be found", "pip install 'numlstm[cuda]'"],
     ["needs an NVIDIA GPU"]),
])
def test_what_backend_cuda_says_is_missing(available, nvvm_error, numba_cuda, want, unwanted):
    """dispatch.cuda_problem: what stops backend='cuda' and what to install, for a
    machine with no GPU (numba-cuda or numba's built-in target) and one with a GPU
    but no NVVM (which a machine with a GPU is needed to reach for real)."""
    from numlstm.dispatch import cuda_problem
    text = cuda_problem(available, "no libcuda" if not available else None, nvvm_error,
                        numba_cuda)
    assert all(w in text for w in want) and not any(u in text for u in unwanted), text
    assert cuda_problem(True, None, None, True) is None


def test_numba_cuda_is_the_cuda_target_in_ci():
    """CI (NUMLSTM_REQUIRE_NUMBA_CUDA=1, set by .ci/run) runs the simulator tests and
    the PTX checks on NVIDIA's numba-cuda, which `numlstm[cuda]` installs, not on
    numba's deprecated built-in target."""
    if os.environ.get("NUMLSTM_REQUIRE_NUMBA_CUDA") != "1":
        pytest.skip("NUMLSTM_REQUIRE_NUMBA_CUDA is not set (CI sets it)")
    assert "numba_cuda" in cuda.__file__, cuda.__file__


def test_kernels_compile_and_every_launch_fits():
    """Every CUDA kernel compiles to PTX (the simulator cannot show this), and with
    ptxas's registers and shared memory every launch plan over the bench grid fits
    on an A100, an L40S and an H100 (kernels/cuda/resources.py)."""
    if os.environ.get("NUMLSTM_REQUIRE_NUMBA_CUDA") == "1":  # (CI: must run, not skip)
        import nvidia.cuda_nvcc as nvcc
    else:
        nvcc = pytest.importorskip("nvidia.cuda_nvcc", reason="pip install 'numba-cuda[cu12]'")
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                          "cuda_compile_check.py")
    env = dict(os.environ, CUDA_HOME=list(nvcc.__path__)[0])
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    run = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "FAIL" not in run.stdout and run.stdout.count("ok ") >= 20, run.stdout
    assert "every launch fits" in run.stdout, run.stdout
    for arch in ("sm_80 A100", "sm_89 L40S", "sm_90 H100"):
        assert arch in run.stdout


# -- on a real GPU only ----------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("cell", sorted(CLASSES))
def test_real_gpu_parity_at_real_sizes(rng, cell):
    """T=64, B=32, I=H=256, 2 layers, bidirectional, lengths: the cuda layer against
    the cpu one in float64 (persistent kernels on many blocks)."""
    assert not SIMULATED
    T, B, size = 64, 32, 256
    x = rng.standard_normal((T, B, size))
    dy = rng.standard_normal((T, B, 2 * size))
    lens = rng.integers(1, T + 1, B)
    kw = dict(num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    got = _run(CLASSES[cell](size, size, backend="cuda", **kw), x, dy, lens)
    want = _run(CLASSES[cell](size, size, backend="cpu", **kw), x, dy, lens)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, 1e-10, f"{cell} output {i}")


@pytest.mark.gpu
@pytest.mark.parametrize("source", ["cupy", "torch"])
def test_real_gpu_zero_copy(rng, source):
    """A CuPy array or a torch CUDA tensor goes in as it is, and the Numba device
    array that comes out wraps into the same library's array with no copy (the
    same device pointer); the values match the CPU backend's."""
    T, B, I, H = 16, 8, 32, 64
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    want = numlstm.LSTM(I, H, backend="cpu", seed=1)(x)[0]
    layer = numlstm.LSTM(I, H, backend="cuda", seed=1)
    if source == "cupy":
        cp = pytest.importorskip("cupy")
        y, _ = layer(cp.asarray(x))
        wrapped = cp.asarray(y)
        assert wrapped.data.ptr == y.device_ctypes_pointer.value
        got = cp.asnumpy(wrapped)
    else:
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("this torch has no CUDA")
        y, _ = layer(torch.as_tensor(x, device="cuda"))
        wrapped = torch.as_tensor(y, device="cuda")
        assert wrapped.data_ptr() == y.device_ctypes_pointer.value
        got = wrapped.cpu().numpy()
    assert np.abs(got - want).max() < 1e-4


def test_gpu_check_script_runs_under_the_simulator(tmp_path):
    """tools/gpu_check.sh --simulate: the GPU check's steps with no GPU, the LSTM's
    CUDA kernel variants checked against the reference at a tiny shape in Numba's
    simulator (a fresh process: the variable is read when numba.cuda is imported);
    its output lands in the file named."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "check.txt"
    run = subprocess.run(["bash", os.path.join(root, "tools", "gpu_check.sh"), "--simulate",
                          str(out)], capture_output=True, text=True, timeout=900)
    text = out.read_text()
    assert run.returncode == 0, text[-3000:] + run.stderr[-2000:]
    assert "== kernels against the reference: exit status 0" in text
    rows = text.split("== kernels against the reference (", 1)[1].splitlines()
    assert any("persistent" in r for r in rows) and any("per-step" in r for r in rows)
    assert not any("MISMATCH" in r for r in rows)
    assert "numba.cuda from" in text and "steps failed: 0" in text


def test_bench_cuda_needs_a_gpu(capsys):
    if HAS_GPU and not SIMULATED:
        pytest.skip("this machine has a GPU")
    from numlstm.cli import main
    assert main(["bench", "--quick", "--backend", "cuda"]) == 2
    assert "needs an NVIDIA GPU; none is usable here" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_real_gpu_compare_against_cudnn(cell):
    from numlstm.bench import compare
    rows = compare([(16, 16, 64)], repeats=2, cell=cell, backend="cuda", out=lambda s: None)
    assert [r["mode"] for r in rows] == ["inference", "training"]
    assert all(r["ratio"] > 0 and r["numlstm_gflops"] > 0 for r in rows)
