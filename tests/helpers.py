"""Shared test helpers: one comparison that fails loudly, and random weights."""
import numpy as np
import pytest


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
