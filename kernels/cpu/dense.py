"""CPU kernels of a dense layer (y = x W^T + b over the rows of x) and of the
embedding's backward (a scatter-add of rows), checked against NumPy in
tests/kernels/test_cpu_dense.py.

Dimensions: M rows (B, or B*T for a sequence), K input features, N outputs.

float32 runs the LSTM's register-tiled product (products.matmul) in Numba's OpenMP
pool, so a model's float32 training step calls no BLAS at all: a NumPy matmul
between two LSTM calls wakes OpenBLAS's workers, which then spin on the cores
the LSTM's time loop needs (measured: a character model's step took 181 ms
instead of 23). float64 uses NumPy's products, as the LSTM's float64 path does.
"""
import numpy as np
from numba import njit

from .microkernel import CB
from .products import in_blocks, matmul, transposed_with_sums


def _blocks(b, bias=None):
    """b [K,N] (and a bias [N]) -> (b in the tile's blocks, the bias as the product's
    first row, [1, N padded to CB]) for float32 products."""
    N = b.shape[1]
    init = np.zeros((1, -(-N // CB) * CB), np.float32)
    if bias is not None:
        init[0, :N] = bias
    return in_blocks(b), init


def _product(a, b, bias=None, blocks=None):
    """a [M,K] @ b [K,N] (+ bias [N]) for float32 C-contiguous a -> [M,N]; blocks:
    _blocks(b, bias), made once by a caller that keeps it."""
    N = b.shape[1]
    W, init = _blocks(b, bias) if blocks is None else blocks
    out = np.empty((a.shape[0], init.shape[1]), np.float32)
    matmul(a, W, out, init, False)
    return out[:, :N] if init.shape[1] != N else out


def dense_blocks(w, b):
    """The weights w [N,K] and bias b [N] in the layout dense_forward_cpu multiplies
    by, for a layer to keep until they change: re-blocking them took most of a
    decoding step at B=1 (34 us a call, for a 1 us product)."""
    if w.dtype != np.float32:
        return None
    return _blocks(np.ascontiguousarray(w.T), b)


def dense_forward_cpu(x, w, b, blocks=None):
    """x [M,K], w [N,K], b [N] -> y [M,N] = x @ w.T + b; blocks: dense_blocks(w, b)
    when the caller keeps it (else it is made for this call)."""
    if x.dtype != np.float32:
        return x @ w.T + b
    return _product(np.ascontiguousarray(x), w.T, b,
                    dense_blocks(w, b) if blocks is None else blocks)


def dense_backward_cpu(dy, x, w):
    """dy [M,N], x [M,K], w [N,K] -> dx [M,K], dw [N,K], db [N]."""
    if dy.dtype != np.float32:
        return dy @ w, dy.T @ x, dy.sum(axis=0)
    dy = np.ascontiguousarray(dy)
    dy_t, db = transposed_with_sums(dy)
    return _product(dy, np.ascontiguousarray(w)), _product(dy_t, np.ascontiguousarray(x)), db


@njit(cache=True, error_model="numpy")
def _scatter_rows(grad, ids, dout):
    for r in range(ids.shape[0]):
        row, src = grad[ids[r]], dout[r]
        for j in range(src.shape[0]):
            row[j] += src[j]


def embedding_backward_cpu(grad, ids, dout):
    """grad[ids[r]] += dout[r] for every row r, repeated ids adding up (NumPy's
    np.add.at(grad, ids, dout), which took 0.5 ms for 2048 rows of 32 where this
    takes 10 us). grad [V,E] C-contiguous, ids [M] integers in [0, V) (checked by
    the caller), dout [M,E] of grad's dtype."""
    _scatter_rows(grad, np.ascontiguousarray(ids, np.int64), np.ascontiguousarray(dout))
