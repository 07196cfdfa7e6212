"""The dense layer's CPU kernels against NumPy products computed in float64."""
import numpy as np
import pytest

from helpers import assert_close
from numlstm.kernels.cpu import dense_backward_cpu, dense_forward_cpu, embedding_backward_cpu

TOL = {np.float32: 1e-5, np.float64: 1e-12}

# (M rows, K inputs, N outputs): one row, N on both sides of the 64-column block
# (1, 63, 64, 65, 130), one input, K past the 256-wide K chunk of the products, and
# M past the 120-row task and 6-row tile sizes.
SHAPES = [(1, 7, 1), (1, 1, 63), (3, 5, 65), (7, 1, 130), (5, 300, 63), (13, 300, 65),
          (1, 300, 130), (127, 17, 64), (250, 33, 9)]


def _inputs(rng, M, K, N, dtype):
    x = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((N, K)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", SHAPES, ids=[f"M{m}-K{k}-N{n}" for m, k, n in SHAPES])
def test_dense_forward_matches_numpy(rng, dtype, M, K, N):
    x, w, b = _inputs(rng, M, K, N, dtype)
    y = dense_forward_cpu(x, w, b)
    want = x.astype(np.float64) @ w.astype(np.float64).T + b.astype(np.float64)
    assert y.dtype == dtype
    assert_close(y, want, TOL[dtype], "y")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", SHAPES, ids=[f"M{m}-K{k}-N{n}" for m, k, n in SHAPES])
def test_dense_backward_matches_numpy(rng, dtype, M, K, N):
    x, w, _ = _inputs(rng, M, K, N, dtype)
    dy = rng.standard_normal((M, N)).astype(dtype)
    dx, dw, db = dense_backward_cpu(dy, x, w)
    dy64, x64, w64 = (a.astype(np.float64) for a in (dy, x, w))
    for name, got, want in [("dx", dx, dy64 @ w64), ("dw", dw, dy64.T @ x64),
                            ("db", db, dy64.sum(axis=0))]:
        assert got.dtype == dtype, name
        assert_close(got, want, TOL[dtype], name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_kernels_accept_noncontiguous_inputs(rng, dtype):
    """Views (a transposed weight, every other row of x) give the contiguous answer."""
    M, K, N = 6, 11, 70
    x_big = rng.standard_normal((2 * M, K)).astype(dtype)
    w_t = rng.standard_normal((K, N)).astype(dtype)
    b = rng.standard_normal(N).astype(dtype)
    x, w = x_big[::2], w_t.T
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    y = dense_forward_cpu(x, w, b)
    assert_close(y, dense_forward_cpu(np.ascontiguousarray(x), np.ascontiguousarray(w), b),
                 TOL[dtype], "y of views")
    dy_big = rng.standard_normal((M, 2 * N)).astype(dtype)
    dy = dy_big[:, ::2]
    got = dense_backward_cpu(dy, x, w)
    want = dense_backward_cpu(np.ascontiguousarray(dy), np.ascontiguousarray(x),
                              np.ascontiguousarray(w))
    for name, g, e in zip(("dx", "dw", "db"), got, want):
        assert_close(g, e, TOL[dtype], f"{name} of views")


def test_dense_kernels_leave_inputs_unchanged(rng):
    x, w, b = _inputs(rng, 4, 9, 66, np.float32)
    dy = rng.standard_normal((4, 66)).astype(np.float32)
    copies = [a.copy() for a in (x, w, b, dy)]
    dense_forward_cpu(x, w, b)
    dense_backward_cpu(dy, x, w)
    for before, after in zip(copies, (x, w, b, dy)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("V,M,E", [(1, 1, 1), (5, 1, 3), (3, 40, 7), (82, 2048, 32)])
def test_embedding_backward_adds_repeated_rows_as_numpy_add_at(rng, dtype, V, M, E):
    ids = rng.integers(0, V, M)  # (with M > V, ids repeat)
    dout = rng.standard_normal((M, E)).astype(dtype)
    start = rng.standard_normal((V, E)).astype(dtype)
    grad = start.copy()
    embedding_backward_cpu(grad, ids, dout)
    want = start.astype(np.float64)
    np.add.at(want, ids, dout.astype(np.float64))
    assert grad.dtype == dtype
    assert_close(grad, want, TOL[dtype] * max(1, M // V), "grad")
