"""The LSTM's CUDA kernels against the NumPy reference (forward and backward).

Without a GPU they run in Numba's simulator (tests/conftest.py), so shapes stay
tiny; each launch path is forced once: the persistent kernel with one slice per
block, with several slices in one block, and the per-step launches.
"""
import numpy as np
import pytest
from helpers import assert_close, lstm_weights

from numlstm.kernels import reference as ref

cuda = pytest.importorskip("numba.cuda")
from numlstm.kernels.cuda import (lstm_backward_cuda, lstm_forward_cuda,  # noqa: E402
                                  pack_lstm_cuda)

RTOL = {np.float32: 2e-5, np.float64: 1e-12}
PATHS = {"auto": {}, "slices": dict(units=2, blocks=1),
         "per_step": dict(units=2, persistent=False)}


# The forward's arguments that are not the cell's: recurrent dropout's mask, zoneout's
# weights.
STEP_OPTIONS = ("h_mask", "zone_c", "zone_h")


def run_both(rng, T, B, I, H, dtype, lengths, reverse, launch, **options):
    w = lstm_weights(rng, I, H, dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0, c0 = (rng.standard_normal((B, H)).astype(dtype) for _ in range(2))
    step = {k: options.pop(k) for k in STEP_OPTIONS if k in options}
    cell = pack_lstm_cuda(*w, **options)
    dev = cuda.to_device
    y, h, c, cache = lstm_forward_cuda(dev(x), cell, dev(h0), dev(c0), lengths, reverse,
                                       True, **launch, **step)
    y_r, h_r, c_r, cache_r = ref.lstm_forward_ref(x, *w, h0, c0, lengths, reverse, **step,
                                                  **options)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dh_n, dc_n = (rng.standard_normal((B, H)).astype(dtype) for _ in range(2))
    got = lstm_backward_cuda(dev(dy), dev(dh_n), dev(dc_n), cache, cell, **launch)
    want = ref.lstm_backward_ref(dy, dh_n, dc_n, cache_r)
    return (y, h, c) + got, (y_r, h_r, c_r) + want


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T,B,I,H,lengths,reverse,path", [
    (3, 2, 3, 5, None, False, "auto"),
    (4, 3, 2, 5, [4, 1, 3], True, "auto"),
    (1, 1, 4, 3, None, False, "auto"),
    (3, 2, 3, 5, [2, 3], False, "slices"),
    (3, 1, 2, 5, None, True, "slices"),
    (3, 2, 3, 5, [3, 1], True, "per_step"),
])
def test_lstm_cuda_matches_reference(rng, dtype, T, B, I, H, lengths, reverse, path):
    lens = None if lengths is None else np.array(lengths)
    got, want = run_both(rng, T, B, I, H, dtype, lens, reverse, PATHS[path])
    names = ["y", "h_n", "c_n", "dx", "dh0", "dc0"]
    for name, g, w in zip(names, got[:6], want[:6]):
        assert_close(g.copy_to_host(), w, RTOL[dtype], name)
    for k in ("w_ih", "w_hh", "b_ih", "b_hh"):
        assert_close(got[6][k].copy_to_host(), want[6][k], RTOL[dtype], k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options,path", [
    ({"cell_clip": 0.4}, "auto"), ({"input_forget": True}, "per_step"),
    ({"gate_clip": 0.6}, "auto"),
    ({"cell_clip": 0.4, "input_forget": True, "gate_clip": 0.6}, "slices"),
    ({"peephole": True}, "auto"), ({"peephole": True, "gate_clip": 0.6}, "per_step"),
    ({"peephole": True, "cell_clip": 0.4, "input_forget": True}, "slices"),
    ({"h_mask": True}, "auto"), ({"h_mask": True, "peephole": True}, "per_step"),
    ({"h_mask": True}, "slices"), ({"zone": 3}, "auto"), ({"zone": 1}, "per_step"),
    ({"zone": 3, "h_mask": True, "cell_clip": 0.4}, "slices")],
    ids=["clip", "coupled", "gate-clip", "all", "peephole", "peephole-gate-clip",
         "peephole-clip-coupled", "dropout", "dropout-peephole-per-step",
         "dropout-slices", "zoneout", "zoneout-inference-per-step",
         "zoneout-dropout-clip-slices"])
def test_lstm_cuda_cell_options_match_reference(rng, dtype, options, path):
    """The cell options, ONNX's peepholes (random weights), a recurrent dropout
    mask and zoneout among them, with lengths. zoneout: 0/1 draws [3,B,H] (while
    training), or the rates [1,B,H] at every step (inference)."""
    options = dict(options)
    if options.get("peephole"):
        options["peephole"] = (rng.standard_normal(15) * 0.5).astype(dtype)
    if options.get("h_mask"):
        options["h_mask"] = ((rng.random((2, 5)) > 0.3) / 0.7).astype(dtype)
    zone = options.pop("zone", 0)
    if zone == 3:
        options.update(zone_c=(rng.random((3, 2, 5)) < 0.4).astype(dtype),
                       zone_h=(rng.random((3, 2, 5)) < 0.3).astype(dtype))
    elif zone == 1:
        options.update(zone_c=np.full((1, 2, 5), 0.2, dtype),
                       zone_h=np.full((1, 2, 5), 0.35, dtype))
    got, want = run_both(rng, 3, 2, 3, 5, dtype, np.array([3, 2]), True, PATHS[path],
                         **options)
    for name, g, w in zip(["y", "h_n", "c_n", "dx", "dh0", "dc0"], got[:6], want[:6]):
        assert_close(g.copy_to_host(), w, RTOL[dtype], name)
    assert sorted(got[6]) == sorted(want[6])
    for k in want[6]:
        assert_close(got[6][k].copy_to_host(), want[6][k], RTOL[dtype], k)


@pytest.mark.parametrize("T,B,lengths,path,options,dtype", [
    (3, 2, [3, 1], "auto", {}, np.float32),
    (1, 1, None, "slices", {}, np.float64),
    (3, 3, [2, 3, 0], "per_step", {"h_mask": True}, np.float64),
    (3, 2, [1, 3], "slices", {"h_mask": True, "peephole": True, "cell_clip": 0.4},
     np.float32)],
    ids=["auto-float32", "T1-B1-slices-float64", "dropout-per-step-float64",
         "dropout-peephole-clip-slices-float32"])
def test_lstm_cuda_projection_matches_reference(rng, T, B, lengths, path, options, dtype):
    """torch's proj_size: h' = W_hr (o * tanh(c')), h with P = 3 units, c with H = 5;
    outputs, states and every gradient, W_hr's included, both directions."""
    I, H, P = 3, 5, 3
    w_ih, _, b_ih, b_hh = lstm_weights(rng, I, H, dtype)
    w_hh, w_hr = ((rng.standard_normal(s) * 0.5).astype(dtype) for s in ((4 * H, P), (P, H)))
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0, c0 = (rng.standard_normal((B, n)).astype(dtype) for n in (P, H))
    dy = rng.standard_normal((T, B, P)).astype(dtype)
    dh_n, dc_n = (rng.standard_normal((B, n)).astype(dtype) for n in (P, H))
    options = dict(options)
    if options.get("h_mask"):
        options["h_mask"] = ((rng.random((B, P)) > 0.3) / 0.7).astype(dtype)
    if options.get("peephole"):
        options["peephole"] = (rng.standard_normal(3 * H) * 0.5).astype(dtype)
    h_mask = options.pop("h_mask", None)
    lens = None if lengths is None else np.array(lengths)
    dev = cuda.to_device
    cell = pack_lstm_cuda(w_ih, w_hh, b_ih, b_hh, w_hr=w_hr, **options)
    for reverse in (False, True):
        y, h, c, cache = lstm_forward_cuda(dev(x), cell, dev(h0), dev(c0), lens, reverse,
                                           True, **PATHS[path], h_mask=h_mask)
        *back, grads = lstm_backward_cuda(dev(dy), dev(dh_n), dev(dc_n), cache, cell,
                                          **PATHS[path])
        y_r, h_r, c_r, cache_r = ref.lstm_forward_ref(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lens,
                                                      reverse, w_hr=w_hr, h_mask=h_mask,
                                                      **options)
        *back_r, grads_r = ref.lstm_backward_ref(dy, dh_n, dc_n, cache_r)
        for name, g, w in zip(["y", "h_n", "c_n", "dx", "dh0", "dc0"], (y, h, c, *back),
                              (y_r, h_r, c_r, *back_r)):
            assert_close(g.copy_to_host(), w, RTOL[dtype], name)
        assert sorted(grads) == sorted(grads_r) and "w_hr" in grads
        for k in grads_r:
            assert_close(grads[k].copy_to_host(), grads_r[k], RTOL[dtype], k)
        y_i, h_i, c_i, none = lstm_forward_cuda(dev(x), cell, dev(h0), dev(c0), lens, reverse,
                                                False, **PATHS[path])
        assert none is None
        if h_mask is None:  # inference: the same forward, one step's buffers
            assert_close(y_i.copy_to_host(), y_r, RTOL[dtype], "y (inference)")


@pytest.mark.parametrize("T,B,lengths,path,options,dtype", [
    (3, 2, [3, 1], "auto", {}, np.float32),
    (1, 1, None, "slices", {}, np.float64),
    (3, 3, [2, 3, 0], "per_step", {"h_mask": True, "peephole": True, "gate_clip": 0.9},
     np.float64),
    (3, 2, [1, 3], "slices", {"zone": True, "cell_clip": 0.5, "input_forget": True},
     np.float32),
    (3, 2, [3, 2], "per_step", {"proj": 3, "h_mask": True}, np.float64),
    (2, 2, [2, 1], "auto", {"proj": 2}, np.float32)],
    ids=["auto-float32", "T1-B1-slices-float64", "dropout-peephole-gate-clip-per-step",
         "zoneout-clip-coupled-slices", "projection-dropout-per-step", "projection-auto"])
def test_lstm_cuda_layer_norm_matches_reference(rng, T, B, lengths, path, options, dtype):
    """layer_norm=True (lstm_norm.py) with random gains and bias, the other options
    beside it: outputs, states and every gradient, the norms' included, both
    directions; inference equals the training forward."""
    I, H = 3, 5
    options = dict(options)
    P = options.pop("proj", H)
    w_ih, _, b_ih, b_hh = lstm_weights(rng, I, H, dtype)
    w_hh = (rng.standard_normal((4 * H, P)) * 0.5).astype(dtype)
    extra = dict(ln_ih=1 + 0.3 * rng.standard_normal(4 * H), ln_hh=1 + 0.3 * rng.standard_normal(
        4 * H), ln_c=1 + 0.3 * rng.standard_normal(H), ln_c_bias=0.3 * rng.standard_normal(H))
    if P < H:
        extra["w_hr"] = rng.standard_normal((P, H)) * 0.5
    if options.pop("peephole", False):
        extra["peephole"] = rng.standard_normal(3 * H) * 0.5
    extra = {k: v.astype(dtype) for k, v in extra.items()}
    step = {}
    if options.pop("h_mask", False):
        step["h_mask"] = ((rng.random((B, P)) > 0.3) / 0.7).astype(dtype)
    if options.pop("zone", False):
        step.update(zone_c=(rng.random((T, B, H)) < 0.4).astype(dtype),
                    zone_h=(rng.random((T, B, H)) < 0.3).astype(dtype))
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0, dh_n = (rng.standard_normal((B, P)).astype(dtype) for _ in range(2))
    c0, dc_n = (rng.standard_normal((B, H)).astype(dtype) for _ in range(2))
    dy = rng.standard_normal((T, B, P)).astype(dtype)
    lens = None if lengths is None else np.array(lengths)
    dev = cuda.to_device
    cell = pack_lstm_cuda(w_ih, w_hh, b_ih, b_hh, **extra, **options)
    for reverse in (False, True):
        y, h, c, cache = lstm_forward_cuda(dev(x), cell, dev(h0), dev(c0), lens, reverse,
                                           True, **PATHS[path], **step)
        *back, grads = lstm_backward_cuda(dev(dy), dev(dh_n), dev(dc_n), cache, cell,
                                          **PATHS[path])
        y_r, h_r, c_r, cache_r = ref.lstm_forward_ref(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lens,
                                                      reverse, **extra, **step, **options)
        *back_r, grads_r = ref.lstm_backward_ref(dy, dh_n, dc_n, cache_r)
        for name, g, w in zip(["y", "h_n", "c_n", "dx", "dh0", "dc0"], (y, h, c, *back),
                              (y_r, h_r, c_r, *back_r)):
            assert_close(g.copy_to_host(), w, RTOL[dtype], name)
        assert sorted(grads) == sorted(grads_r) and "ln_c_bias" in grads
        for k in grads_r:
            assert_close(grads[k].copy_to_host(), grads_r[k], 5 * RTOL[dtype], k)
        if "h_mask" not in step and "zone_c" not in step:
            y_i = lstm_forward_cuda(dev(x), cell, dev(h0), dev(c0), lens, reverse, False,
                                    **PATHS[path])[0]
            assert_close(y_i.copy_to_host(), y_r, RTOL[dtype], "y (inference)")


def test_lstm_cuda_inference_keeps_nothing(rng):
    w = lstm_weights(rng, 3, 4, np.float32)
    x = rng.standard_normal((2, 2, 3)).astype(np.float32)
    z = np.zeros((2, 4), np.float32)
    y, h, c, cache = lstm_forward_cuda(cuda.to_device(x), pack_lstm_cuda(*w),
                                       cuda.to_device(z), cuda.to_device(z))
    assert cache is None
    assert_close(y.copy_to_host(), ref.lstm_forward_ref(x, *w, z, z)[0], 2e-5, "y")
