"""The CPU ConvLSTM kernels (convlstm_forward_cpu, convlstm_backward_cpu) against the
NumPy reference in float32 (the register tile: the direct form, and Winograd's where
it applies) and float64 (the plain loop): every output and gradient, at tiny uneven
shapes with T=1, B=1, one-row frames, frames wider than a Winograd task, strides,
dilation, even kernels, both paddings, lengths, recurrent dropout and filter counts
on both sides of the 16-unit padding; then the training forward against inference,
and repeated calls (several tasks a step) against each other."""
import numpy as np
import pytest

from numlstm.kernels.cpu.convlstm import (PackedConvLSTM, convlstm_backward_cpu,
                                          convlstm_forward_cpu)
from numlstm.kernels.cpu.microkernel import CB
from numlstm.kernels.cpu.winograd import TILES
from numlstm.kernels.reference import convlstm_backward_ref, convlstm_forward_ref
from helpers import assert_close, convlstm_case

RTOL = {np.float32: 1e-5, np.float64: 1e-12}  # outputs; gradients get 5x

CASES = {  # (T, B, R, C, I, F, kernel, strides, dilation, padding, lengths, masked)
    "same-3x3-F5": (3, 2, 5, 4, 2, 5, (3, 3), (1, 1), (1, 1), "same", None, False),
    "T1-B1-F1": (1, 1, 4, 3, 1, 1, (3, 3), (1, 1), (1, 1), "same", None, False),
    "valid-strided-F3": (3, 2, 7, 6, 3, 3, (2, 3), (2, 1), (1, 1), "valid", None, False),
    "valid-dilated-F17": (2, 2, 7, 8, 2, 17, (3, 2), (1, 1), (2, 3), "valid", None, False),
    "same-even-2x2-F16": (3, 3, 5, 6, 1, 16, (2, 2), (1, 1), (1, 1), "same", None, False),
    "same-even-strided-4x2": (2, 2, 7, 5, 2, 3, (4, 2), (2, 3), (1, 1), "same", None, True),
    "same-dilated-even": (3, 1, 6, 7, 2, 5, (2, 4), (1, 1), (3, 2), "same", None, False),
    "one-row-1xk": (4, 3, 1, 8, 3, 5, (1, 3), (1, 1), (1, 1), "same", None, False),
    "one-row-3x3-same": (3, 2, 1, 6, 2, 3, (3, 3), (1, 2), (1, 1), "same", None, True),
    "one-row-out-valid": (2, 2, 3, 8, 1, 17, (3, 3), (1, 1), (1, 1), "valid", None, False),
    "lengths-short": (5, 3, 4, 5, 2, 5, (3, 3), (1, 1), (1, 1), "same", [5, 1, 3], False),
    "lengths-masked-F17": (4, 3, 5, 4, 2, 17, (3, 2), (1, 1), (1, 1), "same", [2, 4, 1],
                           True),
    "masked-F33": (3, 2, 4, 4, 1, 33, (3, 3), (1, 1), (1, 1), "same", None, True),
    "stride-past-frame": (2, 2, 3, 5, 2, 3, (3, 3), (4, 3), (1, 1), "same", None, False),
    "several-tasks": (3, 3, 8, 8, 2, 5, (3, 3), (1, 1), (1, 1), "same", [3, 1, 2], True),
    "ragged-last-task": (2, 2, 8, 7, 1, 3, (2, 3), (1, 1), (1, 1), "same", None, False),
    "1x1-kernel": (3, 2, 4, 3, 4, 6, (1, 1), (1, 1), (1, 1), "valid", [3, 2], True),
    "wide-odd-frame": (2, 2, 3, 2 * TILES + 7, 2, 3, (3, 3), (1, 1), (1, 1), "same", [2, 1],
                       True),  # (Winograd: two tasks across a row, odd rows and columns)
    "wide-valid": (2, 1, 4, 2 * TILES + 4, 1, 17, (3, 3), (1, 1), (1, 1), "valid", None,
                   False),
}
# (dtype, winograd): float32 in both forms (None: Winograd's wherever it applies)
FORMS = {"float32": (np.float32, None), "float32-direct": (np.float32, False),
         "float64": (np.float64, None)}


def _run_both(args, dtype, winograd=None):
    """The reference (in float64, on the inputs rounded to dtype) and the kernels (in
    dtype, training and inference; winograd: convlstm_forward_cpu's): (want, got,
    inference), want and got dicts with y, h_n, c_n and every gradient for the same
    random output gradients."""
    args = {k: (v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
            for k, v in args.items()}
    wide = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f"
                else v) for k, v in args.items()}
    y, h, c, cache = convlstm_forward_ref(**wide)
    rng = np.random.default_rng(y.size)
    dy, dh, dc = (rng.standard_normal(a.shape) for a in (y, h, c))
    want = dict(y=y, h_n=h, c_n=c, **convlstm_backward_ref(dy, dh, dc, cache))

    packed = PackedConvLSTM(args["w_ih"], args["w_hh"], args["b"])
    opts = dict(lengths=args["lengths"], h_mask=args["h_mask"], strides=args["strides"],
                padding=args["padding"], dilation=args["dilation"], winograd=winograd)
    yk, hk, ck, cache_k = convlstm_forward_cpu(args["x"], packed, args["h0"], args["c0"],
                                               training=True, **opts)
    yi, hi, ci, none = convlstm_forward_cpu(args["x"], packed, args["h0"], args["c0"],
                                            training=False, **opts)
    assert none is None
    grads = convlstm_backward_cpu(dy.astype(dtype), dh.astype(dtype), dc.astype(dtype),
                                  cache_k)
    got = dict(y=yk, h_n=hk, c_n=ck, **grads)
    return want, got, dict(y=yi, h_n=hi, c_n=ci)


def _compare(args, dtype, winograd=None):
    want, got, inference = _run_both(args, dtype, winograd)
    rtol = RTOL[dtype]
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == dtype, k
        assert_close(got[k], want[k], rtol if k in ("y", "h_n", "c_n") else 5 * rtol, k)
    for k, v in inference.items():
        assert_close(v, want[k], rtol, f"{k} (inference)")
    return want, got


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_cpu_convlstm_matches_reference(rng, case, form):
    T, B, R, C, I, F, kernel, strides, dilation, padding, lengths, masked = case
    args = convlstm_case(rng, T, B, R, C, I, F, kernel, strides, dilation, padding,
                         lengths=lengths, masked=masked)
    want, _ = _compare(args, *form)
    if lengths is not None:  # the case does exercise a short sequence
        short = int(np.argmin(lengths))
        assert want["y"][lengths[short] - 1, short].any()
        assert not want["y"][lengths[short]:, short].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_convlstm_matches_reference_at_random_shapes(rng, dtype):
    for _ in range(6):
        kernel = tuple(int(k) for k in rng.integers(1, 4, 2))
        padding = str(rng.choice(["same", "valid"]))
        strided = rng.random() < 0.5
        strides = tuple(int(s) for s in rng.integers(1, 3, 2)) if strided else (1, 1)
        dilation = (1, 1) if strided else tuple(int(d) for d in rng.integers(1, 3, 2))
        span = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
        R, C = (int(rng.integers(s, 9)) for s in span)
        T, B = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        I, F = int(rng.integers(1, 4)), int(rng.choice([1, 2, 5, 15, 16, 17, 20]))
        lengths = rng.integers(1, T + 1, B) if rng.random() < 0.5 else None
        args = convlstm_case(rng, T, B, R, C, I, F, kernel, strides, dilation, padding,
                             lengths=lengths, masked=bool(rng.random() < 0.5))
        _compare(args, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_forward_equals_inference_and_calls_repeat_exactly(rng, dtype):
    """B*R'*C' = 192 pixels: several tasks a step, shared among the threads."""
    args = convlstm_case(rng, 3, 3, 8, 8, 2, 17, (3, 3), padding="same", dtype=dtype,
                         lengths=[3, 1, 2], masked=True)
    packed = PackedConvLSTM(args["w_ih"], args["w_hh"], args["b"])
    opts = dict(lengths=args["lengths"], h_mask=args["h_mask"], strides=args["strides"],
                padding=args["padding"], dilation=args["dilation"])

    def run(training):
        x0 = {k: args[k].copy() for k in ("x", "h0", "c0")}
        out = convlstm_forward_cpu(args["x"], packed, args["h0"], args["c0"],
                                   training=training, **opts)
        for k, v in x0.items():  # the inputs are left as they were
            np.testing.assert_array_equal(args[k], v, err_msg=k)
        return out

    inference = run(False)[:3]
    dy, dh, dc = (rng.standard_normal(a.shape).astype(dtype) for a in inference)
    results = []
    for _ in range(2):
        y, h, c, cache = run(True)
        for name, a, b in zip(("y", "h_n", "c_n"), (y, h, c), inference):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: training vs inference")
        grads = convlstm_backward_cpu(dy, dh, dc, cache)
        results.append(dict(y=y, h_n=h, c_n=c, **grads))
        assert any(np.abs(g).max() > 0 for g in grads.values())
    for k in results[0]:
        np.testing.assert_array_equal(results[1][k], results[0][k], err_msg=f"{k}: repeat")
    again = run(False)[:3]
    for name, a, b in zip(("y", "h_n", "c_n"), again, inference):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: repeated inference")


def test_winograd_form_runs_where_it_applies_and_is_refused_elsewhere(rng):
    """float32, 3x3 kernels, stride 1, no dilation: the weights packed in Winograd's
    form, which None (the default) then runs; winograd=True elsewhere is a
    ValueError, and float64 packs no such weights."""
    args = convlstm_case(rng, 2, 2, 5, 6, 2, 3, (3, 3), padding="same", dtype=np.float32)
    packed = PackedConvLSTM(args["w_ih"], args["w_hh"], args["b"])
    assert packed.V.shape == (16, 1, 2 + 3, CB)
    run = lambda **kw: convlstm_forward_cpu(args["x"], packed, args["h0"],  # noqa: E731
                                            args["c0"], padding="same", **kw)[0]
    auto, winograd, direct = run(), run(winograd=True), run(winograd=False)
    np.testing.assert_array_equal(auto, winograd)
    assert (winograd != direct).any()  # two forms, two roundings: the default is Winograd's
    assert_close(winograd, direct, 1e-5, "winograd vs direct")
    for strides, dilation in (((1, 2), (1, 1)), ((1, 1), (2, 1))):
        other = convlstm_case(rng, 2, 2, 5, 6, 2, 3, (3, 3), strides, dilation, "same",
                              np.float32)
        cell = PackedConvLSTM(other["w_ih"], other["w_hh"], other["b"])
        call = lambda **kw: convlstm_forward_cpu(  # noqa: E731
            other["x"], cell, other["h0"], other["c0"], padding="same", strides=strides,
            dilation=dilation, **kw)[0]
        with pytest.raises(ValueError, match="winograd=True needs"):
            call(winograd=True)
        np.testing.assert_array_equal(call(), call(winograd=False))
    wide = {k: v.astype(np.float64) for k, v in args.items()
            if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
    packed64 = PackedConvLSTM(wide["w_ih"], wide["w_hh"], wide["b"])
    assert packed64.V.shape[0] == 0
    with pytest.raises(ValueError, match="winograd=True needs"):
        convlstm_forward_cpu(wide["x"], packed64, wide["h0"], wide["c0"], padding="same",
                             winograd=True)
