"""Shared test helpers: one comparison that fails loudly, random weights, and the
random cases (zoneout's weights, a projected cell, a layer-normalised GRU) that the
kernels' tests in tests/kernels and the layers' tests beside this file both draw."""
import subprocess
import sys

import numpy as np
import pytest

from numlstm.kernels.gates import user_activation


def rel_err(actual, expected):
    """max |actual - expected| / max |expected|: the error relative to the scale of
    the reference (elementwise relative error is meaningless near zero)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.abs(expected).max() if expected.size else 0.0
    return np.abs(actual - expected).max() / (scale if scale > 0 else 1.0)


def assert_close(actual, expected, rtol, what="array", atol=0.0):
    """Require |actual - expected| <= atol + rtol * max|expected| everywhere, with
    equal shapes and no NaN; on failure print the first few mismatches."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.isfinite(actual).all(), f"{what}: non-finite values"
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    scale = np.abs(e).max() if e.size else 0.0
    tol = atol + rtol * (scale if scale > 0 else 1.0)
    bad = np.argwhere(np.abs(a - e) > tol)
    if len(bad):
        rows = "\n".join(f"  at {tuple(i)}: got {a[tuple(i)]!r}, expected {e[tuple(i)]!r}"
                         for i in bad[:5])
        pytest.fail(f"{what}: {len(bad)} of {a.size} values off by more than {tol:.3g} "
                    f"(relative error {rel_err(a, e):.3g} > {rtol:g}):\n{rows}")


def lstm_weights(rng, I, H, dtype, scale=0.5):
    """Random torch-layout weights of one LSTM cell: w_ih, w_hh, b_ih, b_hh."""
    return cell_weights(rng, I, H, 4, dtype, scale)


def cell_weights(rng, I, H, gates, dtype, scale=0.5):
    """Random torch-layout weights of a cell with `gates` gate blocks (GRU 3, RNN 1):
    w_ih [gates*H, I], w_hh [gates*H, H], b_ih, b_hh [gates*H]."""
    G = gates * H
    return tuple((rng.standard_normal(shape) * scale).astype(dtype)
                 for shape in ((G, I), (G, H), (G,), (G,)))


def assert_kernels_match(got, want, inference, rtol, dtype):
    """A kernel's training outputs and gradients (got) against the reference's
    (want), and its inference outputs (inference: {name: (got, want)}): in dtype,
    outputs and states within rtol, gradients within 5 rtol."""
    for k, (g, w) in inference.items():
        assert_close(g, w, rtol, f"{k} (inference forward)")
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == dtype, k
        assert_close(got[k], want[k], rtol if k in ("y", "h", "c") else 5 * rtol, k)


def zoneout_weights(rng, T, B, H, training, rates=(0.3, 0.2)):
    """Zoneout's weights (zone_c, zone_h, or as many as rates) as the layer passes them:
    0/1 draws [T,B,H] when training, else the rates [1,B,H]."""
    if training:
        return tuple((rng.random((T, B, H)) < p).astype(float) for p in rates)
    return tuple(np.full((1, B, H), p) for p in rates)


def projected_lstm_weights(rng, I, H, P, dtype, scale=0.5):
    """Random torch-layout weights of one projected LSTM cell: w_ih [4H,I], w_hh [4H,P],
    b_ih, b_hh [4H], w_hr [P,H]."""
    w_ih, w_hh, b_ih, b_hh = lstm_weights(rng, I, H, dtype, scale)
    w_hh = (rng.standard_normal((4 * H, P)) * scale).astype(dtype)
    w_hr = (rng.standard_normal((P, H)) * scale).astype(dtype)
    return w_ih, w_hh, b_ih, b_hh, w_hr


def projected_lstm_inputs(rng, T, B, I, H, P, scale, layer_norm=False):
    """A projected cell's arrays under lstm_forward_ref's names (float64), and with
    layer_norm its gains and bias near 1 and 0."""
    w = lstm_weights(rng, I, H, np.float64, scale)
    out = dict(x=rng.standard_normal((T, B, I)), w_ih=w[0],
               w_hh=rng.standard_normal((4 * H, P)) * scale, b_ih=w[2], b_hh=w[3],
               h0=rng.standard_normal((B, P)), c0=rng.standard_normal((B, H)),
               w_hr=rng.standard_normal((P, H)) * scale)
    if layer_norm:
        out.update(ln_ih=1 + 0.1 * rng.standard_normal(4 * H),
                   ln_hh=1 + 0.1 * rng.standard_normal(4 * H),
                   ln_c=1 + 0.1 * rng.standard_normal(H),
                   ln_c_bias=0.1 * rng.standard_normal(H))
    return out


def projected_zones(rng, T, B, H, P, training):
    """A projected LSTM's zone_c [.,B,H] and zone_h [.,B,P] as the layer passes them."""
    if training:
        return ((rng.random((T, B, H)) < 0.3).astype(float),
                (rng.random((T, B, P)) < 0.4).astype(float))
    return np.full((1, B, H), 0.3), np.full((1, B, P), 0.2)


def layer_norm_gru_case(rng, T, B, I, H, zoned, training=True):
    """Weights (gains around 1), inputs, a recurrent dropout mask, zoneout's weights
    (draws when training, else the rate) or None, and lengths of one layer-normalised
    GRU case (float64): (cell, norms, x, h0, mask, zone_h, lengths)."""
    scale = min(0.8, 2 / np.sqrt(H))
    cell = [rng.standard_normal(s) * scale for s in ((3 * H, I), (3 * H, H), (3 * H,), (3 * H,))]
    norms = dict(ln_ih=1 + 0.3 * rng.standard_normal(3 * H),
                 ln_hh=1 + 0.3 * rng.standard_normal(3 * H))
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H))
    mask = (rng.random((B, H)) >= 0.3) / 0.7
    zone_h = None
    if zoned:
        zone_h = ((rng.random((T, B, H)) < 0.4).astype(float) if training
                  else np.full((1, B, H), 0.3))
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    return cell, norms, x, h0, mask, zone_h, lengths


def numeric_gradient(loss, arr, eps=1e-6):
    """Central finite differences of the scalar loss() with respect to every
    element of arr, which it reads (arr is perturbed in place and restored)."""
    grad = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        saved = arr[idx]
        arr[idx] = saved + eps
        up = loss()
        arr[idx] = saved - eps
        down = loss()
        arr[idx] = saved
        grad[idx] = (up - down) / (2 * eps)
    return grad


def check_lstm_reference_gradients(inputs, lengths, reverse, **options):
    """lstm_backward_ref against central finite differences of a scalar that depends
    on every output, for inputs {x, w_ih, w_hh, b_ih, b_hh, h0, c0} (float64, perturbed
    in place and restored; also the projection, the peepholes and layer
    normalisation's arrays, under lstm_forward_ref's names) and its options; fails
    above 1e-6."""
    from numlstm.kernels.reference import lstm_backward_ref, lstm_forward_ref
    rng = np.random.default_rng(0)
    T, B = inputs["x"].shape[:2]
    wy = rng.standard_normal((T, B, inputs["h0"].shape[1]))
    wh, wc = rng.standard_normal(inputs["h0"].shape), rng.standard_normal(inputs["c0"].shape)

    def forward():
        a = inputs
        extra = {k: a[k] for k in ("w_hr", "peephole", "ln_ih", "ln_hh", "ln_c", "ln_c_bias")
                 if k in a}
        return lstm_forward_ref(a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"],
                                a["c0"], lengths, reverse, **options, **extra)

    def loss():
        y, h, c, _ = forward()
        return (y * wy).sum() + (h * wh).sum() + (c * wc).sum()

    dx, dh0, dc0, grads = lstm_backward_ref(wy, wh, wc, forward()[3])
    analytic = dict(x=dx, h0=dh0, c0=dc0, **grads)
    for name, arr in inputs.items():
        err = rel_err(analytic[name], numeric_gradient(loss, arr))
        assert err < 1e-6, f"d{name}: relative error {err:.2e} against finite differences"


def check_gru_reference_gradients(inputs, lengths, reverse, **options):
    """gru_backward_ref against central finite differences, as
    check_lstm_reference_gradients: inputs {x, w_ih, w_hh, b_ih, b_hh, h0} (and
    layer normalisation's ln_ih, ln_hh) in float64, the forward's options; fails
    above 1e-6. Returns the forward's outputs y."""
    from numlstm.kernels.reference import gru_backward_ref, gru_forward_ref
    rng = np.random.default_rng(0)
    T, B = inputs["x"].shape[:2]
    wy = rng.standard_normal((T, B, inputs["h0"].shape[1]))
    wh = rng.standard_normal(inputs["h0"].shape)

    def forward():
        a = inputs
        extra = {k: a[k] for k in ("ln_ih", "ln_hh") if k in a}
        return gru_forward_ref(a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"],
                               lengths, reverse, **options, **extra)

    def loss():
        y, h, _ = forward()
        return (y * wy).sum() + (h * wh).sum()

    y, _, cache = forward()
    dx, dh0, grads = gru_backward_ref(wy, wh, cache)
    analytic = dict(x=dx, h0=dh0, **grads)
    assert sorted(analytic) == sorted(inputs)
    for name, arr in inputs.items():
        err = rel_err(analytic[name], numeric_gradient(loss, arr))
        assert err < 1e-6, f"d{name}: relative error {err:.2e} against finite differences"
    return y


def _softsign(a):
    return a / (1 + abs(a))


def _softsign_grad(y):  # from the output: 1 / (1 + |a|)^2 = (1 - |y|)^2
    return (1 - abs(y)) ** 2


# A user's activation, as gates.make_acts takes it (the layers take the plain pair).
SOFTSIGN = user_activation(_softsign, _softsign_grad)


def _train_step(layer, x, lengths, dy):
    y, (h, c) = layer(x, training=True, lengths=lengths)
    dx, (dh0, dc0) = layer.backward(dy)
    return dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0,
                **{k: v.copy() for k, v in layer.grads.items()})


def lstm_layer_and_reference(rng, options, backend, dtype, prepare=lambda layer: layer):
    """A two-layer bidirectional LSTM with `options` on `backend` in dtype, and the same
    on the numpy backend in float64 (both from seed 4, then prepare(layer)), through a
    training step with lengths: (got, want), dicts of outputs and gradients."""
    import numlstm
    T, B, H = (3, 2, 4) if backend == "cuda" else (9, 4, 21)
    x = rng.standard_normal((T, B, 3)).astype(dtype)
    lengths = rng.integers(1, T + 1, B)
    dy = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    ref, ours = (prepare(numlstm.LSTM(3, H, num_layers=2, bidirectional=True, backend=b,
                                      dtype=d, seed=4, **options))
                 for b, d in (("numpy", np.float64), (backend, dtype)))
    want = _train_step(ref, x.astype(np.float64), lengths, dy.astype(np.float64))
    return _train_step(ours, x, lengths, dy), want


def check_streaming_and_checkpoint(layer, x, folder):
    """layer.step through x [T,B,I] equals the sequence call (2e-6), and a checkpoint of
    a model of it in `folder` predicts exactly what it does; returns the loaded layer."""
    import numlstm
    y, _ = layer(x)
    ys, _ = run_steps(layer, x)
    for t in range(len(x)):
        assert_close(ys[t], y[t], 2e-6, f"step {t}")
    model = numlstm.Sequential([layer])
    numlstm.save_checkpoint(folder, model)
    back = numlstm.load(folder)
    xb = x.transpose(1, 0, 2)  # (Sequential models are batch-first)
    np.testing.assert_array_equal(back.predict(xb), model.predict(xb))
    return back.layers[0]


def run_steps(layer, x, state=None):
    """layer.step over each step of x [T,B,I] from state: (the outputs stacked [T,B,W],
    the final state)."""
    ys = []
    for x_t in x:
        y_t, state = layer.step(x_t, state)
        ys.append(y_t)
    return np.stack(ys), state


def convlstm_case(rng, T, B, R, C, I, F, kernel, strides=(1, 1), dilation=(1, 1),
                  padding="valid", dtype=np.float64, lengths=None, masked=False, scale=0.4):
    """Random inputs of convlstm_forward_ref at these shapes, as a dict of its
    arguments (x, w_ih, w_hh, b, h0, c0, strides, padding, dilation, lengths,
    h_mask), and the state's grid (R', C')."""
    from numlstm.kernels.reference import conv_geometry
    out = tuple(conv_geometry(n, k, s, d, padding)[0]
                for n, k, s, d in zip((R, C), kernel, strides, dilation))
    state = (B,) + out + (F,)
    draw = lambda shape, k=1.0: (k * rng.standard_normal(shape)).astype(dtype)  # noqa: E731
    return dict(x=draw((T, B, R, C, I)), w_ih=draw((4 * F, I) + tuple(kernel), scale),
                w_hh=draw((4 * F, F) + tuple(kernel), scale), b=draw(4 * F, scale),
                h0=draw(state, 0.5), c0=draw(state, 0.5), strides=tuple(strides),
                padding=padding, dilation=tuple(dilation),
                lengths=None if lengths is None else np.asarray(lengths),
                h_mask=((rng.random(state) > 0.3) / 0.7).astype(dtype) if masked else None)


def one_error_line(capsys, *needles):
    """The one line a failed command wrote to stderr (no traceback), holding needles."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def run_numlstm(args, **kw):
    """`python -m numlstm args` started in the background (stderr piped)."""
    return subprocess.Popen([sys.executable, "-m", "numlstm"] + args, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, **kw)


def checkpoint_step(folder):
    """The step of a run folder's checkpoint (the previous one if it is damaged), 0
    when there is none yet."""
    import numlstm
    try:
        return numlstm.load_checkpoint(folder, fallback=True).step
    except FileNotFoundError:
        return 0
