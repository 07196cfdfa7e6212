"""The NumPy reference's backward against central finite differences (float64)."""
import numpy as np
import pytest

from numlstm.kernels.reference import lstm_backward_ref, lstm_forward_ref
from helpers import SOFTSIGN, check_lstm_reference_gradients, lstm_weights, rel_err


def _loss(inputs, weights, lengths, reverse, **options):
    """A scalar that depends on every output: sum(y*wy) + sum(h_n*wh) + sum(c_n*wc)."""
    y, h, c, _ = lstm_forward_ref(inputs["x"], inputs["w_ih"], inputs["w_hh"],
                                  inputs["b_ih"], inputs["b_hh"], inputs["h0"],
                                  inputs["c0"], lengths, reverse, **options)
    return (y * weights["y"]).sum() + (h * weights["h"]).sum() + (c * weights["c"]).sum()


OPTIONS = [{}, {"cell_clip": 0.7}, {"input_forget": True},
           {"cell_clip": 0.7, "input_forget": True}, {"gate_clip": 0.9},
           {"gate_clip": 0.9, "input_forget": True, "cell_clip": 0.7}]


@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "clip", "coupled", "both",
                                                  "gate-clip", "all"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_reference_backward_matches_finite_differences(rng, reverse, with_lengths, options):
    T, B, I, H = 4, 3, 3, 2
    w_ih, w_hh, b_ih, b_hh = lstm_weights(rng, I, H, np.float64, scale=0.8)
    inputs = dict(x=rng.standard_normal((T, B, I)), w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                  b_hh=b_hh, h0=rng.standard_normal((B, H)), c0=rng.standard_normal((B, H)))
    lengths = np.array([4, 1, 3]) if with_lengths else None
    weights = dict(y=rng.standard_normal((T, B, H)), h=rng.standard_normal((B, H)),
                   c=rng.standard_normal((B, H)))
    y, h, c, cache = lstm_forward_ref(inputs["x"], w_ih, w_hh, b_ih, b_hh, inputs["h0"],
                                      inputs["c0"], lengths, reverse, **options)
    if "cell_clip" in options:  # the clip must bite somewhere, and not everywhere
        clipped = np.abs(cache["cs"]) == options["cell_clip"]
        assert clipped.any() and not clipped.all()
    if "gate_clip" in options:
        assert not cache["passed"].all() and cache["passed"].any()
    dx, dh0, dc0, grads = lstm_backward_ref(weights["y"], weights["h"], weights["c"], cache)
    analytic = dict(x=dx, h0=dh0, c0=dc0, **grads)
    eps = 1e-6
    for name, arr in inputs.items():
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            saved = arr[idx]
            arr[idx] = saved + eps
            up = _loss(inputs, weights, lengths, reverse, **options)
            arr[idx] = saved - eps
            down = _loss(inputs, weights, lengths, reverse, **options)
            arr[idx] = saved
            numeric[idx] = (up - down) / (2 * eps)
        err = rel_err(analytic[name], numeric)
        assert err < 1e-6, f"d{name}: relative error {err:.2e} against finite differences"


def test_reference_lengths_hold_state_and_zero_outputs(rng):
    T, B, I, H = 5, 2, 3, 4
    cell = lstm_weights(rng, I, H, np.float64)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    for reverse in (False, True):
        y, h, c, _ = lstm_forward_ref(x, *cell, h0, c0, np.array([5, 2]), reverse)
        assert (y[2:, 1] == 0).all()
        # Sequence 1 alone, cut to its length, gives the same final state.
        y1, h1, c1, _ = lstm_forward_ref(x[:2, 1:], *cell, h0[1:], c0[1:], None, reverse)
        np.testing.assert_allclose(h[1], h1[0], rtol=1e-14)
        np.testing.assert_allclose(c[1], c1[0], rtol=1e-14)
        np.testing.assert_allclose(y[:2, 1], y1[:, 0], rtol=1e-14)


@pytest.mark.parametrize("acts", [("sigmoid", "tanh"), ("hard_sigmoid", "relu"),
                                  ("tanh", "hard_sigmoid"), ("relu", SOFTSIGN)],
                         ids=["default", "hard-sigmoid-relu", "tanh-hard-sigmoid", "user"])
@pytest.mark.parametrize("peephole", [False, True], ids=["no-peepholes", "peepholes"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_reference_activations_and_peepholes_match_finite_differences(rng, reverse, peephole,
                                                                      acts):
    """Every gradient, the peepholes' too, with lengths and the cell options beside."""
    from numlstm.kernels.gates import make_acts
    T, B, I, H = 4, 3, 3, 2
    w_ih, w_hh, b_ih, b_hh = lstm_weights(rng, I, H, np.float64, scale=0.8)
    inputs = dict(x=rng.standard_normal((T, B, I)), w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                  b_hh=b_hh, h0=rng.standard_normal((B, H)), c0=rng.standard_normal((B, H)))
    if peephole:
        inputs["peephole"] = rng.standard_normal(3 * H) * 0.8
    check_lstm_reference_gradients(inputs, np.array([4, 1, 3]), reverse, acts=make_acts(*acts))
    check_lstm_reference_gradients(inputs, None, reverse, acts=make_acts(*acts),
                                   cell_clip=1.5, gate_clip=2.5)


@pytest.mark.parametrize("options", [{}, {"acts": ("hard_sigmoid", "relu")},
                                     {"cell_clip": 1.5, "gate_clip": 2.5},
                                     {"input_forget": True, "peephole": True}, {"h_mask": True},
                                     {"zoneout": True}, {"w_hr": True}],
                         ids=["plain", "activations", "clips", "coupled-peephole",
                              "recurrent-dropout", "zoneout", "proj"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_reference_layer_norm_matches_finite_differences(rng, reverse, options):
    """Layer normalisation's equations (reference.py's docstring): every gradient, the
    three gains' and the bias's too, with lengths (one of them 0) and each option."""
    from numlstm.kernels.gates import make_acts
    T, B, I, H = 4, 3, 3, 3
    options = dict(options)
    w_ih, w_hh, b_ih, b_hh = lstm_weights(rng, I, H, np.float64, scale=0.8)
    P = 2 if options.pop("w_hr", False) else H
    inputs = dict(x=rng.standard_normal((T, B, I)), w_ih=w_ih, w_hh=w_hh[:, :P], b_ih=b_ih,
                  b_hh=b_hh, h0=rng.standard_normal((B, P)), c0=rng.standard_normal((B, H)),
                  ln_ih=1 + 0.3 * rng.standard_normal(4 * H),
                  ln_hh=1 + 0.3 * rng.standard_normal(4 * H),
                  ln_c=1 + 0.3 * rng.standard_normal(H), ln_c_bias=0.3 * rng.standard_normal(H))
    if P < H:
        inputs["w_hr"] = rng.standard_normal((P, H)) * 0.8
    if options.pop("peephole", False):
        inputs["peephole"] = rng.standard_normal(3 * H) * 0.8
    if "acts" in options:
        options["acts"] = make_acts(*options["acts"])
    if options.pop("h_mask", False):
        options["h_mask"] = rng.uniform(0, 2, (B, P))
    if options.pop("zoneout", False):
        options.update(zone_c=rng.uniform(0, 1, (T, B, H)), zone_h=rng.uniform(0, 1, (T, B, H)))
    check_lstm_reference_gradients(inputs, np.array([4, 0, 3]), reverse, **options)
    check_lstm_reference_gradients(inputs, None, reverse, **options)


def test_reference_layer_norm_is_the_defined_function(rng):
    """One step by hand from the equations, and LN's defining property: scaling either
    product by a constant leaves the output as it was (up to LAYER_NORM_EPS)."""
    from numlstm.kernels.reference import LAYER_NORM_EPS
    T, B, I, H = 1, 2, 3, 4
    w_ih, w_hh, b_ih, b_hh = lstm_weights(rng, I, H, np.float64)
    x, h0, c0 = (rng.standard_normal(s) for s in ((T, B, I), (B, H), (B, H)))
    gains = [1 + 0.3 * rng.standard_normal(n) for n in (4 * H, 4 * H, H)]
    bias_c = 0.3 * rng.standard_normal(H)
    y, h, c, _ = lstm_forward_ref(x, w_ih, w_hh, b_ih, b_hh, h0, c0, ln_ih=gains[0],
                                  ln_hh=gains[1], ln_c=gains[2], ln_c_bias=bias_c)

    def ln(v, w):
        return w * (v - v.mean(1)[:, None]) / np.sqrt(v.var(1)[:, None] + LAYER_NORM_EPS)

    a = ln(x[0] @ w_ih.T, gains[0]) + b_ih + ln(h0 @ w_hh.T, gains[1]) + b_hh
    sig = 1 / (1 + np.exp(-a))
    c_want = sig[:, H:2 * H] * c0 + sig[:, :H] * np.tanh(a[:, 2 * H:3 * H])
    np.testing.assert_allclose(c, c_want, rtol=1e-13)
    np.testing.assert_allclose(h, sig[:, 3 * H:] * np.tanh(ln(c_want, gains[2]) + bias_c),
                               rtol=1e-13)
    x = rng.standard_normal((6, B, I))
    y, *_ = lstm_forward_ref(x, w_ih, w_hh, b_ih, b_hh, h0, c0, ln_ih=gains[0], ln_hh=gains[1],
                             ln_c=gains[2], ln_c_bias=bias_c)
    y_scaled, *_ = lstm_forward_ref(x, 7 * w_ih, 0.2 * w_hh, b_ih, b_hh, h0, c0, ln_ih=gains[0],
                                    ln_hh=gains[1], ln_c=gains[2], ln_c_bias=bias_c)
    np.testing.assert_allclose(y_scaled, y, atol=1e-3)
    plain, *_ = lstm_forward_ref(x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    assert np.abs(plain - y).max() > 0.05  # (and it is not the plain layer)
