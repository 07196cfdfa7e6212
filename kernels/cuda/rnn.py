"""CUDA kernels of one plain (Elman) RNN layer in one direction, checked against
reference.py.

Dimensions: T steps, B batch, I input features, H hidden units (one gate
block: G = H).

The path of a call (common.py describes the persistent and per-step launches):
    forward:  xp = x @ W_ih^T + b for all steps (one tiled product, [T*B,H]);
              then the recurrence, h' = act(xp + W_hh h), act tanh or relu.
              The training forward keeps the h entering each step (hin
              [T,B,H]); the activation's derivative comes from y.
    backward: per reversed step, the pre-activation gradients of every unit
              (pointwise, into da [T*B,H]), a grid barrier, then dh = da[t] @
              W_hh with the block's columns of W_hh on chip; after the loop, dx,
              dW_ih, dW_hh and the bias gradient are each one product over all
              T*B rows.

Arrays are Numba device arrays; x, h0, dy and dh_n are read only.
"""
from numba import cuda

from ..gates import drelu, dtanh, relu, tanh
from ..gates import RNN_NONLINEARITIES
from .cells import CudaRNN
from .common import (as_device, back_slots, block_items, combine, copy, device_array,
                     dh_one, dh_product, input_gradients, item_at, lengths_or_full,
                     load_columns, load_rows, matmul, ones, plan, step_slots)

ROWS = 1  # weight rows per hidden unit


def pack_rnn_cuda(w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh"):
    """Torch-layout weights (host or device) -> the device arrays the kernels read
    (cells.CudaRNN):
    w_ih [H,I], w_hh [H,H], bias = b_ih + b_hh [H]; relu: the activation is relu
    (else tanh)."""
    if nonlinearity not in RNN_NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {RNN_NONLINEARITIES}, "
                         f"got {nonlinearity!r}")
    return CudaRNN(H=w_hh.shape[1], relu=nonlinearity == "relu", w_ih=as_device(w_ih),
                   w_hh=as_device(w_hh), bias=combine(as_device(b_ih), as_device(b_hh), "add"))


# -- forward ---------------------------------------------------------------------------
# walk: (reverse, units, training), as the other cells' kernels take it.
@cuda.jit(device=True)
def _forward_step(s, xp, w_hh, w_sh, cached, lengths, h, y, hin, walk, use_relu, zero):
    """Step s of the block's units: reads h[cur], writes h[nxt] and y[t]; hin[t]
    (training) the h entering the step."""
    reverse, units, training = walk
    B = y.shape[1]
    H = y.shape[2]
    HP = H + 1
    t, cur, nxt = step_slots(s, y.shape[0], reverse)
    for n in range(*block_items(H, B, units)):
        j, b, ul, u = item_at(n, B, units)
        if u >= H:
            continue
        h_in = h[cur, b, u]
        if t < lengths[b]:
            a = xp[t * B + b, u]
            if cached:
                w = j * units * HP + ul * HP
                for k in range(H):
                    a += h[cur, b, k] * w_sh[w + k]
            else:
                for k in range(H):
                    a += h[cur, b, k] * w_hh[u, k]
            h_new = relu(a) if use_relu else tanh(a)
            h[nxt, b, u] = h_new
            y[t, b, u] = h_new
        else:  # past this row's length: hold the state, output zero
            h[nxt, b, u] = h_in
            y[t, b, u] = zero
        if training:
            hin[t, b, u] = h_in


@cuda.jit
def _forward_persistent(xp, w_hh, lengths, h, y, hin, walk, use_relu, zero):
    """All T steps in one cooperative launch, the block's rows of W_hh on chip."""
    w_sh = cuda.shared.array(0, w_hh.dtype)
    load_rows(w_hh, w_sh, ROWS, walk[1])
    cuda.syncthreads()
    grid = cuda.cg.this_grid()
    for s in range(y.shape[0]):
        _forward_step(s, xp, w_hh, w_sh, True, lengths, h, y, hin, walk, use_relu, zero)
        grid.sync()


@cuda.jit
def _forward_one(s, xp, w_hh, lengths, h, y, hin, walk, use_relu, zero):
    """Step s alone, W_hh read from global memory (the per-step path)."""
    w_sh = cuda.shared.array(0, w_hh.dtype)
    _forward_step(s, xp, w_hh, w_sh, False, lengths, h, y, hin, walk, use_relu, zero)


def rnn_forward_cuda(x, cell, h0, lengths=None, reverse=False, training=False, units=None,
                     blocks=None, persistent=None):
    """One layer and direction on device arrays.

    x: [T,B,I]; cell: pack_rnn_cuda's CudaRNN; h0: [B,H]; lengths: [B] ints (host
    or device) or None. units, blocks, persistent: force the launch (see
    common.plan); None chooses.
    Returns y [T,B,H], h_n [B,H] and, when training, a cache for
    rnn_backward_cuda (else None).
    """
    T, B, I = x.shape
    H = cell.H
    dtype = x.dtype
    xp = matmul(x.reshape(T * B, I), cell.w_ih, device_array((T * B, H), dtype),
                bias=cell.bias, trans_b=True)
    h = device_array((2, B, H), dtype)
    copy(h0, h[0])
    y = device_array((T, B, H), dtype)
    hin = device_array((T, B, H) if training else (1, 1, 1), dtype)
    lens = lengths_or_full(lengths, T, B)

    def args(units):
        return (xp, cell.w_hh, lens, h, y, hin, (bool(reverse), units, bool(training)),
                cell.relu, dtype.type(0))

    p = plan(_forward_persistent, args(1), H, B, ROWS, H + 1, dtype.itemsize, units, blocks,
             persistent)
    if p.persistent:
        _forward_persistent[p.blocks, p.threads, 0, p.shared](*args(p.units))
    else:
        for s in range(T):
            _forward_one[p.blocks, p.threads](s, *args(p.units))
    cache = None
    if training:
        cache = dict(x=x, lengths=lens, reverse=bool(reverse), y=y, hin=hin)
    return y, h[T % 2], cache


# -- backward --------------------------------------------------------------------------
@cuda.jit(device=True)
def _backward_act(k, dy, lengths, y, da, dh, walk, use_relu, zero):
    """The k-th step of the backward walk (forward step T-1-k), pointwise for the
    block's units: da[t] = (dh[cur] + dy[t]) * act'(y[t]); dh[nxt] starts at zero
    for valid rows."""
    reverse, units, _ = walk
    B = dy.shape[1]
    H = dy.shape[2]
    t, cur, nxt = back_slots(k, dy.shape[0], reverse)
    for n in range(*block_items(H, B, units)):
        _, b, _, u = item_at(n, B, units)
        if u >= H:
            continue
        row = t * B + b
        if t < lengths[b]:
            h_out = y[t, b, u]
            da[row, u] = (dh[cur, b, u] + dy[t, b, u]) * (drelu(h_out) if use_relu
                                                          else dtanh(h_out))
            dh[nxt, b, u] = zero
        else:
            da[row, u] = zero


@cuda.jit
def _backward_persistent(dy, w_hh, lengths, y, da, dh, walk, use_relu, zero):
    """All T steps backwards in one cooperative launch, the block's columns of
    W_hh on chip. One barrier a step, between the pointwise pass (whose da the
    dh product reads across units) and dh."""
    w_sh = cuda.shared.array(0, w_hh.dtype)
    load_columns(w_hh, w_sh, walk[1])
    cuda.syncthreads()
    grid = cuda.cg.this_grid()
    for k in range(dy.shape[0]):
        _backward_act(k, dy, lengths, y, da, dh, walk, use_relu, zero)
        grid.sync()
        dh_product(k, da, w_hh, w_sh, True, lengths, dh, walk, 0, w_hh.shape[0], dh[0, :0],
                   zero)


@cuda.jit
def _backward_act_one(k, dy, w_hh, lengths, y, da, dh, walk, use_relu, zero):
    """Step k's pointwise pass alone (the per-step path; w_hh unused)."""
    _backward_act(k, dy, lengths, y, da, dh, walk, use_relu, zero)


def rnn_backward_cuda(dy, dh_n, cache, cell, units=None, blocks=None, persistent=None):
    """Backward of rnn_forward_cuda.

    dy: [T,B,H]; dh_n: [B,H]. Returns dx [T,B,I], dh0 [B,H] and
    {"w_ih", "w_hh", "b_ih", "b_hh"} (device arrays in the weights' shapes).
    """
    x, lens, reverse = cache["x"], cache["lengths"], cache["reverse"]
    T, B, I = x.shape
    H = cell.H
    dtype = x.dtype
    zero = dtype.type(0)
    w_hh = cell.w_hh
    da = device_array((T * B, H), dtype)
    dh = device_array((2, B, H), dtype)
    copy(dh_n, dh[0])

    def args(units):
        return (dy, w_hh, lens, cache["y"], da, dh, (reverse, units, True), cell.relu, zero)

    p = plan(_backward_persistent, args(1), H, B, 1, H + 1, dtype.itemsize, units, blocks,
             persistent)
    if p.persistent:
        _backward_persistent[p.blocks, p.threads, 0, p.shared](*args(p.units))
    else:
        walk = (reverse, p.units, True)
        for k in range(T):
            _backward_act_one[p.blocks, p.threads](k, *args(p.units))
            dh_one[p.blocks, p.threads](k, da, w_hh, lens, dh, walk, 0, H, dh[0, :0], zero)
    dx, dw_ih, db = input_gradients(da, x, cell.w_ih, ones(T * B, dtype))
    dw_hh = matmul(da, cache["hin"].reshape(T * B, H), device_array((H, H), dtype),
                   trans_a=True)
    grads = dict(w_ih=dw_ih, w_hh=dw_hh, b_ih=db, b_hh=copy(db, device_array(H, dtype)))
    return dx, dh[T % 2], grads
