"""CPU kernels of one plain (Elman) RNN layer in one direction, checked against
reference.py, and the pieces that the GRU's kernels (gru.py) share with them.

Dimensions: T steps, B batch, I input features, H hidden units; Hp is H padded
to a multiple of CB (one tile block of lstm.py's product, 64 units), Gp the
padded gate columns (Hp here, 3 Hp for the GRU).

Two paths, chosen by dtype when the weights are packed (pack_rnn_cpu); both
follow lstm.py, whose docstring says why:

  float32, "tiled": no BLAS. W_hh^T in blocks of CB units. Each step's product
      h @ W_hh^T is written straight into the new state, starting from the
      projected inputs, and the activation follows in place; the step is one
      parallel region, each thread owning a range of blocks, when it is large
      enough (else one thread). The products before and after the loop are
      lstm._matmul.
  float64, "blas": per step an np.dot and a serial activation pass; SciPy's
      BLAS (the one np.dot calls) for the products around the loop too
      (lstm.product_for), one thread pool in the call.

Hidden units are padded with zero weights and zero state: a padded unit stays
zero (tanh(0) = relu(0) = 0) and feeds nothing.

The path of a call:
    forward:  xw = x @ W_ih^T + b_ih + b_hh for all steps (one product), then
              the time loop in one compiled function. Training keeps only y:
              the activation's derivative comes from its output
              (tanh' = 1 - h^2, relu' = [h > 0]).
    backward: the time loop writes dG, the pre-activation gradients, over the
              training forward's xw (one product dG[t] @ W_hh per step); then
              dx, dW_ih, dW_hh and db are each one product over all T*B rows.
"""
import numpy as np
from numba import carray, njit, prange

from ..gates import drelu, dtanh, relu, tanh
from ..reference import RNN_NONLINEARITIES
from .threads import POLICY, clock_ns, finished, numba_threads, parallel_ok, region_done
from .threads import run as thread_policy
from .lstm import (CB, INFERENCE_CHUNK_BYTES, PARALLEL_MIN_FLOPS, PARALLEL_MIN_UNITS, _FAST,
                   _blocks, _first_step_gradients, _input_gradient, _lengths_or_full, _matmul,
                   _matmul_rows, _ones, _pad, _stack_f32, product_for, transposed_with_sums)

# lstm.py's measured limits, rebound here: gru.py reads them from this module
# too, and tests lower them to force the parallel step or small inference chunks.
PARALLEL_MIN_UNITS = PARALLEL_MIN_UNITS
PARALLEL_MIN_FLOPS = PARALLEL_MIN_FLOPS
INFERENCE_CHUNK_BYTES = INFERENCE_CHUNK_BYTES
LINE = 64  # bytes in a cache line

_scratch = _stack_f32(CB)


@njit(inline="always", cache=True)
def _act(a, use_relu):
    return relu(a) if use_relu else tanh(a)


@njit(inline="always", cache=True)
def _dact(h, use_relu):
    """The activation's derivative, from its output h."""
    return drelu(h) if use_relu else dtanh(h)


# -- shared by rnn.py and gru.py ---------------------------------------------------------
def _threads(B, Hp, Gp, parts):
    """Threads per step: all of Numba's, at most one per block of units, unless the
    step is small on both of lstm.py's counts (hidden units, FLOP a step)."""
    if Hp < PARALLEL_MIN_UNITS and 2 * B * Hp * Gp < PARALLEL_MIN_FLOPS:
        return 1
    return max(1, min(numba_threads(), parts))


def _empty(shape):
    """An uninitialised float32 array starting on a cache line. The buffers that
    the threads of a step write share rows, split at multiples of CB floats;
    aligned, no line holds two threads' parts (measured at B=128, H=128 on two
    threads: a GRU step took 110 us aligned, 123-137 us at NumPy's 16 bytes)."""
    n = int(np.prod(shape))
    buf = np.empty(n + LINE // 4, np.float32)
    start = (-buf.ctypes.data % LINE) // 4
    return buf[start:start + n].reshape(shape)


def _run_in_chunks(x, w_in, bias, Gp, hbuf, reverse, training, run):
    """Project x and run the time loop over it: all T steps at once when training
    (the projection buffer, returned, then serves the backward), else as many
    steps as fit INFERENCE_CHUNK_BYTES, so the projected inputs stay in cache.
    Chunks go in the direction's order; run(xw_chunk, t0, t1) runs steps
    [t0, t1) from the state in hbuf[0] and leaves it in hbuf[(t1 - t0) % 2]."""
    T, B, I = x.shape
    steps = T if training else max(1, INFERENCE_CHUNK_BYTES // (B * Gp * 4))
    xw = _empty((min(steps, T), B, Gp))
    starts = range(0, T, steps)
    for t0 in (reversed(starts) if reverse else starts):
        t1 = min(t0 + steps, T)
        chunk = xw[:t1 - t0]
        _matmul(x[t0:t1].reshape(-1, I), w_in, chunk.reshape(-1, Gp), bias, False)
        run(chunk, t0, t1)
        if (t1 - t0) & 1:  # the state ended in hbuf[1]; the next chunk reads hbuf[0]
            hbuf[0] = hbuf[1]
    return xw


def _project(x, w_ih, b):
    """The blas paths' input projection: x [T,B,I] @ w_ih^T + b -> [T,B,G], on the
    threads their loop's products use (lstm.product_for)."""
    T, B, I = x.shape
    xw = np.ascontiguousarray(product_for(x.dtype)(x.reshape(T * B, I), w_ih.T)).reshape(
        T, B, -1)
    xw += b
    return xw


def _state_buffers(h0, T, Hp):
    """The tiled loop's h buffers [2,B,Hp], h0 (padded) in the first, and y [T,B,Hp]."""
    B, H = h0.shape
    hbuf = _empty((2, B, Hp))
    hbuf[:] = 0
    hbuf[0, :, :H] = h0
    return hbuf, _empty((T, B, Hp))


def _unpadded(y, hbuf, H):
    """y [T,B,Hp] and the final state hbuf[0] cut to H units: y_out, h_n."""
    y_out = y if y.shape[2] == H else np.ascontiguousarray(y[:, :, :H])
    return y_out, hbuf[0, :, :H].copy()


def _tiled_weights(w_ih, w_hh, cols, Gp, Hp):
    """Torch-layout w_ih [G,I], w_hh [G,H] -> the blocked copies the tiled kernels
    read, torch's row j moved to column cols[j] of Gp, the rest zero."""
    I, H = w_ih.shape[1], w_hh.shape[1]
    w_ih_p = np.zeros((Gp, I), np.float32)
    w_ih_p[cols] = w_ih
    w_hh_p = np.zeros((Gp, Hp), np.float32)
    w_hh_p[cols, :H] = w_hh
    return dict(
        w_in=_blocks(w_ih_p.T),   # [Gp/CB, I, CB]: x @ W_ih^T
        w_fwd=_blocks(w_hh_p.T),  # [Gp/CB, Hp, CB]: h @ W_hh^T
        w_bwd=_blocks(w_hh_p),    # [Hp/CB, Gp, CB]: dG @ W_hh
        w_dx=_blocks(w_ih_p))     # [Ip/CB, Gp, CB]: dG @ W_ih, I padded to Ip


def _tiled_bias(b, cols, Gp):
    """[G] -> [1,Gp], torch's entry j at column cols[j]."""
    out = np.zeros((1, Gp), np.float32)
    out[0, cols] = b
    return out


def _recurrent_gradients(dg, y, h0, lens, reverse, w_bwd):
    """The reductions through W_hh after the RNN's time loop.

    dg [T,B,Gp]: gradients of the recurrent pre-activations, zero past each
    length; y [T,B,Hp]: the forward's outputs (zero past each length); h0 [B,Hp].
    Returns W_hh's part of dh0 [B,Hp] (zero for rows of length 0), dG^T
    [Gp,T*B], dW_hh [Gp,Hp] and dG's column sums [Gp] (the bias gradient).

    The RNN transposes dG (Hp columns) where the LSTM and the GRU transpose x and
    h (I + Hp; lstm._weight_gradients), the narrower side either way: through
    _weight_gradients the RNN's training step took 5-7% longer at T=16, B=128
    and T=128, B=16 (I=H=256).
    """
    T, B, Gp = dg.shape
    Hp = y.shape[2]
    zeros = np.zeros((1, max(Gp, Hp)), np.float32)  # the init of every product below
    dg_first, _ = _first_step_gradients(dg, lens, reverse)
    dh0 = np.empty((B, Hp), np.float32)
    _matmul(dg_first, w_bwd, dh0, zeros, False)
    dg_t, db = transposed_with_sums(dg.reshape(T * B, Gp))
    # h entering step t is y of the step before in the forward's order (the zero
    # y past a length meets a zero gradient there); each row's first step's is h0.
    dg_prev, y_prev = (dg_t[:, :-B], y[1:]) if reverse else (dg_t[:, B:], y[:-1])
    dw_hh = np.empty((Gp, Hp), np.float32)
    _matmul(dg_prev, _blocks(y_prev.reshape(-1, Hp)), dw_hh, zeros, False)
    _matmul(dg_first.T, _blocks(h0), dw_hh, dw_hh, True)
    return dh0, dg_t, dw_hh, db


def _input_gradients(dg2, dg_t, x, w_dx):
    """dx [T*B,Ip] = dG @ W_ih and dW_ih [Gp,Ip] = dG^T @ x, from dG [T*B,Gp]
    and its transpose."""
    TB, Gp = dg2.shape
    Ip = w_dx.shape[0] * CB
    zeros = np.zeros((1, max(Gp, Ip)), np.float32)
    dx = _input_gradient(dg2, w_dx)
    dw_ih = np.empty((Gp, Ip), np.float32)
    _matmul(dg_t, _blocks(x.reshape(TB, x.shape[2])), dw_ih, zeros, False)
    return dx, dw_ih


def _torch_layout(dx, dh0, dw_ih, dw_hh, db_ih, db_hh, rows, shape, H):
    """The tiled backward's padded results -> dx [T,B,I], dh0 [B,H] and the
    gradients in torch's layout; rows[j]: the tiled row of torch's row j."""
    T, B, I = shape
    grads = dict(w_ih=dw_ih[rows, :I], w_hh=dw_hh[rows, :H], b_ih=db_ih[rows],
                 b_hh=db_hh[rows])
    dx = dx.reshape(T, B, -1)[:, :, :I]
    return np.ascontiguousarray(dx), np.ascontiguousarray(dh0[:, :H]), grads


def _blas_recurrent_gradient(dg, y, h0, lens, reverse):
    """sum over steps of dG[t]^T @ (h entering step t) (lstm.product_for's products).
    dg [T,B,G] zero past each length; y [T,B,H]; h0 [B,H] -> [G,H]."""
    mm = product_for(dg.dtype)
    dg_first, _ = _first_step_gradients(dg, lens, reverse)
    dg_prev, y_prev = (dg[:-1], y[1:]) if reverse else (dg[1:], y[:-1])
    G, H = dg.shape[2], y.shape[2]
    return mm(dg_prev.reshape(-1, G).T, y_prev.reshape(-1, H)) + mm(dg_first.T, h0)


# -- forward, float32 tiled ------------------------------------------------------------
@njit(**_FAST)
def _fwd_pointwise(h_new, h_old, y_t, lengths, t, use_relu, j0, j1):
    """The activation of units [j0, j1) at step t, in place in h_new (which holds
    the pre-activations) and copied to y_t; rows past their length take h_old."""
    s = carray(_scratch(), (CB,))
    for r in range(h_new.shape[0]):
        if t >= lengths[r]:
            for j in range(j0, j1):
                h_new[r, j] = h_old[r, j]
                y_t[r, j] = 0
            continue
        for q in range(j0, j1, CB):
            for u in range(CB):
                s[u] = _act(h_new[r, q + u], use_relu)
            for u in range(CB):
                h_new[r, q + u] = s[u]
                y_t[r, q + u] = s[u]


@njit(**_FAST)
def _fwd_step(xw_t, W, h_old, h_new, y_t, lengths, use_relu, t, b0, b1):
    """Step t for unit blocks [b0, b1): their slice of the product, then the
    activation. (The step's slices come as arguments, as in gru.py, where that
    measured 25% faster than indexing the whole buffers here.)"""
    _matmul_rows(h_old, W, h_new, xw_t, True, 0, h_new.shape[0], b0, b1)
    _fwd_pointwise(h_new, h_old, y_t, lengths, t, use_relu, b0 * CB, b1 * CB)


@njit(parallel=True, **_FAST)
def _forward_tiled(xw, W, hbuf, y, lengths, reverse, use_relu, P, gate):
    """xw [T,B,Hp]: x @ W_ih^T + b; W [Hp/CB, Hp, CB]: W_hh^T in blocks; hbuf
    [2,B,Hp]: h0 in hbuf[0], then alternating (threads read all of h_old while
    writing their part of h_new), final h in hbuf[T % 2]; y [T,B,Hp] out;
    P threads per step; gate: the thread policy's (threads.py), checked every step."""
    T, nblk = xw.shape[0], W.shape[0]
    for s in range(T):
        t = T - 1 - s if reverse else s
        h_old, h_new = hbuf[s & 1], hbuf[(s + 1) & 1]
        if P == 1 or not parallel_ok(gate):  # (even prange(1) pays a fork and join)
            _fwd_step(xw[t], W, h_old, h_new, y[t], lengths, use_relu, t, 0, nblk)
        else:
            start = clock_ns()
            for p in prange(P):
                _fwd_step(xw[t], W, h_old, h_new, y[t], lengths, use_relu, t, p * nblk // P,
                          (p + 1) * nblk // P)
                finished(gate, p)
            region_done(gate, start)


@njit(**_FAST)
def _step_tiled(x, w_in, bias, w_fwd, h, h_new, xw, lengths, use_relu):
    """One inference step on one thread, for streaming: xw = x @ W_ih^T + b, then
    the step's product and activation; h' goes to h_new."""
    B, nblk = x.shape[0], w_fwd.shape[0]
    _matmul_rows(x, w_in, xw, bias, False, 0, B, 0, nblk)
    _fwd_step(xw, w_fwd, h, h_new, h_new, lengths, use_relu, 0, 0, nblk)


# -- backward, float32 tiled -----------------------------------------------------------
@njit(**_FAST)
def _bwd_pointwise(dg_t, y_t, dy_t, rec, dh_n, lengths, reverse, use_relu, t, j0, j1):
    """dG of units [j0, j1) at step t into dg_t [B,Hp]; rec [B,Hp]: dh from the
    step after (dG there @ W_hh)."""
    s = carray(_scratch(), (CB,))
    for r in range(dg_t.shape[0]):
        n = lengths[r]
        if t >= n:  # padding: no gradient flows, the carried dh stays
            for j in range(j0, j1):
                dg_t[r, j] = 0
            continue
        # The forward's last step of this row starts the backward from dh_n.
        last = t == 0 if reverse else t == n - 1
        dh_in = dh_n[r] if last else rec[r]
        for q in range(j0, j1, CB):
            for u in range(CB):
                s[u] = (dy_t[r, q + u] + dh_in[q + u]) * _dact(y_t[r, q + u], use_relu)
            for u in range(CB):
                dg_t[r, q + u] = s[u]


@njit(**_FAST)
def _bwd_step(dg_next, dg_t, y_t, dy_t, W, rec, zero, dh_n, lengths, reverse, use_relu, s, t,
              b0, b1):
    """Step t for unit blocks [b0, b1): dh from the step after (dg_next, the
    forward's next step), then dG."""
    if s > 0:
        _matmul_rows(dg_next, W, rec, zero, False, 0, rec.shape[0], b0, b1)
    _bwd_pointwise(dg_t, y_t, dy_t, rec, dh_n, lengths, reverse, use_relu, t, b0 * CB,
                   b1 * CB)


@njit(parallel=True, **_FAST)
def _backward_tiled(dg, y, dy, W, rec, dh_n, lengths, reverse, use_relu, P, gate):
    """dg [T,B,Hp]: dG out (its contents in are not read); y, dy [T,B,Hp];
    W [Hp/CB, Hp, CB]: W_hh in blocks of output units; rec [B,Hp] scratch;
    dh_n [B,Hp]; gate: the thread policy's (threads.py), checked every step."""
    T, nblk = dg.shape[0], W.shape[0]
    zero = np.zeros((1, rec.shape[1]), rec.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        t_next = max(0, min(T - 1, t - 1 if reverse else t + 1))  # unread at s = 0
        if P == 1 or not parallel_ok(gate):
            _bwd_step(dg[t_next], dg[t], y[t], dy[t], W, rec, zero, dh_n, lengths, reverse,
                      use_relu, s, t, 0, nblk)
        else:
            start = clock_ns()
            for p in prange(P):
                _bwd_step(dg[t_next], dg[t], y[t], dy[t], W, rec, zero, dh_n, lengths, reverse,
                          use_relu, s, t, p * nblk // P, (p + 1) * nblk // P)
                finished(gate, p)
            region_done(gate, start)


# -- float64: BLAS per step --------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _forward_blas(xw, w_hh_t, h, lengths, reverse, use_relu, y):
    """xw [T,B,H]: x @ W_ih^T + b; w_hh_t [H,H]; h [B,H] in/out; y [T,B,H] out."""
    T, B, H = xw.shape
    rec = np.empty((B, H), xw.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        np.dot(h, w_hh_t, rec)
        for b in range(B):
            if t >= lengths[b]:
                y[t, b] = 0
                continue
            for j in range(H):
                h[b, j] = _act(xw[t, b, j] + rec[b, j], use_relu)
            y[t, b] = h[b]


@njit(cache=True, error_model="numpy")
def _backward_blas(dy, dg, y, w_hh, lengths, reverse, use_relu, dh):
    """dg [T,B,H]: dG out; w_hh [H,H]; dh [B,H]: dh_n in, dh0 out."""
    T, B, H = dg.shape
    rec = np.empty((B, H), dg.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        for b in range(B):
            if t >= lengths[b]:
                dg[t, b] = 0
                continue
            for j in range(H):
                dg[t, b, j] = (dh[b, j] + dy[t, b, j]) * _dact(y[t, b, j], use_relu)
        np.dot(dg[t], w_hh, rec)
        for b in range(B):
            if t < lengths[b]:
                dh[b] = rec[b]


# -- packing and the Python-level wrappers ---------------------------------------------
def pack_rnn_cpu(w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh"):
    """One cell's torch-layout weights (w_ih [H,I], w_hh [H,H], b_ih, b_hh [H]) and
    its activation ("tanh" or "relu") -> the layout these kernels read: a dict,
    "tiled" for float32, "blas" else."""
    if nonlinearity not in RNN_NONLINEARITIES:
        raise ValueError(
            f"nonlinearity must be one of {RNN_NONLINEARITIES}, got {nonlinearity!r}")
    H = w_ih.shape[0]
    bias = b_ih + b_hh
    use_relu = nonlinearity == "relu"
    if w_ih.dtype != np.float32:
        return dict(kind="blas", H=H, relu=use_relu, w_ih=w_ih, w_hh=w_hh, bias=bias,
                    w_hh_t=np.ascontiguousarray(w_hh.T))
    Hp = -(-H // CB) * CB
    rows = np.arange(H)
    return dict(kind="tiled", H=H, Hp=Hp, relu=use_relu, rows=rows,
                bias=_tiled_bias(bias, rows, Hp), **_tiled_weights(w_ih, w_hh, rows, Hp, Hp))


def rnn_forward_cpu(x, packed, h0, lengths=None, reverse=False, training=False):
    """One plain RNN layer and direction on the CPU.

    x: [T,B,I] C-contiguous; packed: pack_rnn_cpu(...) of the same dtype;
    h0: [B,H]; lengths: [B] ints in [0, T], or None for all T.
    Returns y [T,B,H], h_n [B,H] and, when training, the cache that
    rnn_backward_cpu consumes (else None).
    """
    T, B, _ = x.shape
    H = packed["H"]
    lens = _lengths_or_full(lengths, T, B)
    if packed["kind"] == "blas":
        xw = _project(x, packed["w_ih"], packed["bias"])
        h = h0.copy()
        y = np.empty((T, B, H), x.dtype)
        _forward_blas(xw, packed["w_hh_t"], h, lens, reverse, packed["relu"], y)
        y_out, h0_kept = y, h0
    else:
        Hp = packed["Hp"]
        hbuf, y = _state_buffers(h0, T, Hp)
        P = _threads(B, Hp, Hp, packed["w_fwd"].shape[0])

        def run(xw, t0, t1):
            _forward_tiled(xw, packed["w_fwd"], hbuf, y[t0:t1], lens - t0, reverse,
                           packed["relu"], P, POLICY.gate())

        xw = _run_in_chunks(x, packed["w_in"], packed["bias"], Hp, hbuf, reverse, training,
                            run)
        y_out, h = _unpadded(y, hbuf, H)
        h0_kept = _pad(h0, Hp) if training else None
    if not training:
        return y_out, h, None
    # xw has served its purpose: the backward writes dG over it.
    cache = dict(x=x, h0=h0_kept, lengths=lens, reverse=reverse, dg=xw, y=y)
    return y_out, h, cache


def rnn_step_cpu(x, packed, h):
    """One inference step, for streaming: x [B,I], h [B,H] -> h' [B,H] (a new
    array). Equal to rnn_forward_cpu on one step, without its parallel regions."""
    if packed["kind"] == "blas":  # (a one-step forward: the thread policy's)
        return thread_policy(rnn_forward_cpu, x[None], packed, h)[1]
    H, Hp = packed["H"], packed["Hp"]
    B = x.shape[0]
    h_new = np.empty((B, Hp), np.float32)
    _step_tiled(x, packed["w_in"], packed["bias"], packed["w_fwd"], _pad(h, Hp), h_new,
                np.empty((B, Hp), np.float32), _ones(B), packed["relu"])
    return h_new[:, :H]


def rnn_backward_cpu(dy, dh_n, cache, packed):
    """Backward of rnn_forward_cpu; consumes (overwrites) the cache.

    dy: [T,B,H]; dh_n: [B,H]; packed: the weights the forward used.
    Returns dx [T,B,I], dh0 [B,H] and {"w_ih", "w_hh", "b_ih", "b_hh"} in
    torch's layout.
    """
    x, y, h0, lens = cache["x"], cache["y"], cache["h0"], cache["lengths"]
    reverse, dg = cache["reverse"], cache["dg"]
    T, B, I = x.shape
    H = packed["H"]
    if packed["kind"] == "blas":
        dh = dh_n.copy()
        _backward_blas(dy, dg, y, packed["w_hh"], lens, reverse, packed["relu"], dh)
        dg2 = dg.reshape(T * B, H)
        mm = product_for(dg2.dtype)
        dx = mm(dg2, packed["w_ih"]).reshape(T, B, I)
        db = dg2.sum(axis=0)
        grads = dict(w_ih=mm(dg2.T, x.reshape(T * B, I)),
                     w_hh=_blas_recurrent_gradient(dg, y, h0, lens, reverse),
                     b_ih=db, b_hh=db.copy())
        return dx, dh, grads
    Hp = y.shape[2]
    dh_np = _pad(dh_n, Hp)
    rec = _empty((B, Hp))
    P = _threads(B, Hp, Hp, packed["w_bwd"].shape[0])
    _backward_tiled(dg, y, _pad(dy, Hp), packed["w_bwd"], rec, dh_np, lens, reverse,
                    packed["relu"], P, POLICY.gate())
    dh0, dg_t, dw_hh, db = _recurrent_gradients(dg, y, h0, lens, reverse, packed["w_bwd"])
    empty = lens == 0
    dh0[empty] = dh_np[empty]
    dg2 = dg.reshape(T * B, Hp)
    dx, dw_ih = _input_gradients(dg2, dg_t, x, packed["w_dx"])
    return _torch_layout(dx, dh0, dw_ih, dw_hh, db, db, packed["rows"], x.shape, H)
