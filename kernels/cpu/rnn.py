"""CPU kernels of one plain (Elman) RNN layer in one direction, checked against
reference.py.

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
      products.matmul.
  float64, "blas": per step an np.dot and a serial activation pass; SciPy's
      BLAS (the one np.dot calls) for the products around the loop too
      (products.product_for), one thread pool in the call.

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

from ..gates import RNN_NONLINEARITIES, drelu, dtanh, relu, tanh
from .cells import BlasRNN, TiledRNN
from .gradients import blas_recurrent_gradient, input_gradient
from .jit import FAST
from .microkernel import CB
from .plan import into_route, make_plan
from .products import (blas_projection, in_blocks, matmul, matmul_rows, product_for, run_in_chunks,
                       stack_f32, tiled_bias, tiled_weights, transposed_with_sums)
from .sequence import (aligned_empty, copy_units, first_step_gradients, lengths_or_full,
                       pad_units, state_buffers, unpadded, writable)
from .threads import clock_ns, finished, parallel_ok, region_done
from .threads import run as thread_policy


_scratch = stack_f32(CB)


@njit(inline="always", cache=True)
def _act(a, use_relu):
    return relu(a) if use_relu else tanh(a)


@njit(inline="always", cache=True)
def _dact(h, use_relu):
    """The activation's derivative, from its output h."""
    return drelu(h) if use_relu else dtanh(h)


def _recurrent_gradients(dg, y, h0, lens, reverse, w_bwd):
    """The reductions through W_hh after the RNN's time loop.

    dg [T,B,Gp]: gradients of the recurrent pre-activations, zero past each
    length; y [T,B,Hp]: the forward's outputs (zero past each length); h0 [B,Hp].
    Returns W_hh's part of dh0 [B,Hp] (zero for rows of length 0), dG^T
    [Gp,T*B], dW_hh [Gp,Hp] and dG's column sums [Gp] (the bias gradient).

    The RNN transposes dG (Hp columns) where the LSTM and the GRU transpose x and
    h (I + Hp; gradients.weight_gradients), the narrower side either way: through
    weight_gradients the RNN's training step took 5-7% longer at T=16, B=128
    and T=128, B=16 (I=H=256).
    """
    T, B, Gp = dg.shape
    Hp = y.shape[2]
    zeros = np.zeros((1, max(Gp, Hp)), np.float32)  # the init of every product below
    dg_first, _ = first_step_gradients(dg, lens, reverse)
    dh0 = np.empty((B, Hp), np.float32)
    matmul(dg_first, w_bwd, dh0, zeros, False)
    dg_t, db = transposed_with_sums(dg.reshape(T * B, Gp))
    # h entering step t is y of the step before in the forward's order (the zero
    # y past a length meets a zero gradient there); each row's first step's is h0.
    dg_prev, y_prev = (dg_t[:, :-B], y[1:]) if reverse else (dg_t[:, B:], y[:-1])
    dw_hh = np.empty((Gp, Hp), np.float32)
    matmul(dg_prev, in_blocks(y_prev.reshape(-1, Hp)), dw_hh, zeros, False)
    matmul(dg_first.T, in_blocks(h0), dw_hh, dw_hh, True)
    return dh0, dg_t, dw_hh, db


def _input_gradients(dg2, dg_t, x, w_dx):
    """dx [T*B,Ip] = dG @ W_ih and dW_ih [Gp,Ip] = dG^T @ x, from dG [T*B,Gp]
    and its transpose."""
    TB, Gp = dg2.shape
    Ip = w_dx.shape[0] * CB
    zeros = np.zeros((1, max(Gp, Ip)), np.float32)
    dx = input_gradient(dg2, w_dx)
    dw_ih = np.empty((Gp, Ip), np.float32)
    matmul(dg_t, in_blocks(x.reshape(TB, x.shape[2])), dw_ih, zeros, False)
    return dx, dw_ih


def _torch_layout(dx, dh0, dw_ih, dw_hh, db_ih, db_hh, rows, shape, H):
    """The tiled backward's padded results -> dx [T,B,I], dh0 [B,H] and the
    gradients in torch's layout; rows[j]: the tiled row of torch's row j."""
    T, B, I = shape
    grads = dict(w_ih=dw_ih[rows, :I], w_hh=dw_hh[rows, :H], b_ih=db_ih[rows],
                 b_hh=db_hh[rows])
    dx = dx.reshape(T, B, -1)[:, :, :I]
    return np.ascontiguousarray(dx), np.ascontiguousarray(dh0[:, :H]), grads


# -- forward, float32 tiled ------------------------------------------------------------
@njit(**FAST)
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


@njit(**FAST)
def _fwd_step(xw_t, W, h_old, h_new, y_t, lengths, use_relu, t, b0, b1):
    """Step t for unit blocks [b0, b1): their slice of the product, then the
    activation. (The step's slices come as arguments, as in gru.py, where that
    measured 25% faster than indexing the whole buffers here.)"""
    matmul_rows(h_old, W, h_new, xw_t, True, 0, h_new.shape[0], b0, b1)
    _fwd_pointwise(h_new, h_old, y_t, lengths, t, use_relu, b0 * CB, b1 * CB)


@njit(parallel=True, **FAST)
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


@njit(**FAST)
def _steps_state(x, w_in, bias, w_fwd, h, y, h_out, Hp, chunk, use_relu):
    """The time loop on one thread, for a call from Python (a streamed step, or a
    small inference call): the steps of x [T,B,I] from the state h [B,H]; y
    [T,B,H] receives each step's h, h_out [B,H] the last. The input product runs
    `chunk` steps at a time, as the time loop's does, then each step's product and
    activation: the sums of the time loop's, bit for bit. The padded buffers are
    made here, so the call is one compiled call (rnn_forward_into)."""
    T, B, I = x.shape
    H, nblk = h.shape[1], w_fwd.shape[0]
    hp = np.zeros((2, B, Hp), np.float32)
    copy_units(h, hp[0], H)
    ones = np.ones(B, np.int64)
    xw, rows = np.empty((chunk * B, Hp), np.float32), x.reshape(T * B, I)
    for t0 in range(0, T, chunk):
        t1 = min(t0 + chunk, T)
        matmul_rows(rows[t0 * B:t1 * B], w_in, xw, bias, False, 0, (t1 - t0) * B, 0, nblk)
        for t in range(t0, t1):
            h_new = hp[1 - (t & 1)]
            _fwd_step(xw[(t - t0) * B:(t - t0 + 1) * B], w_fwd, hp[t & 1], h_new, h_new, ones,
                      use_relu, 0, 0, nblk)
            copy_units(h_new, y[t], H)
    copy_units(y[T - 1], h_out, H)


# -- backward, float32 tiled -----------------------------------------------------------
@njit(**FAST)
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


@njit(**FAST)
def _bwd_step(dg_next, dg_t, y_t, dy_t, W, rec, zero, dh_n, lengths, reverse, use_relu, s, t,
              b0, b1):
    """Step t for unit blocks [b0, b1): dh from the step after (dg_next, the
    forward's next step), then dG."""
    if s > 0:
        matmul_rows(dg_next, W, rec, zero, False, 0, rec.shape[0], b0, b1)
    _bwd_pointwise(dg_t, y_t, dy_t, rec, dh_n, lengths, reverse, use_relu, t, b0 * CB,
                   b1 * CB)


@njit(parallel=True, **FAST)
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
def forward_plan(shape, packed, training, plain=True):
    """plan.make_plan for a float32 call on x of this shape [T,B,I] with these weights
    (a TiledRNN): the RNN's loops have no batch split, so plain is unused."""
    T, B, I = shape
    return make_plan(T, B, I, packed.Hp, 1, training, plain=False)


def pack_rnn_cpu(w_ih, w_hh, b_ih, b_hh, nonlinearity="tanh"):
    """One cell's torch-layout weights (w_ih [H,I], w_hh [H,H], b_ih, b_hh [H]) and
    its activation ("tanh" or "relu") -> the layout these kernels read (cells.py):
    TiledRNN for float32, BlasRNN else."""
    if nonlinearity not in RNN_NONLINEARITIES:
        raise ValueError(
            f"nonlinearity must be one of {RNN_NONLINEARITIES}, got {nonlinearity!r}")
    H = w_ih.shape[0]
    bias = b_ih + b_hh
    use_relu = nonlinearity == "relu"
    if w_ih.dtype != np.float32:
        w_ih, w_hh = writable(w_ih, w_hh)  # (these loops take them as they are)
        return BlasRNN(H=H, relu=use_relu, w_ih=w_ih, w_hh=w_hh, bias=bias,
                       w_hh_t=np.ascontiguousarray(w_hh.T))
    Hp = -(-H // CB) * CB
    rows = np.arange(H)
    return TiledRNN(H=H, Hp=Hp, relu=use_relu, rows=rows, bias=tiled_bias(bias, rows, Hp),
                    **tiled_weights(w_ih, w_hh, rows, Hp, Hp))


def rnn_forward_cpu(x, packed, h0, lengths=None, reverse=False, training=False, plan=None):
    """One plain RNN layer and direction on the CPU.

    x: [T,B,I] C-contiguous; packed: pack_rnn_cpu(...) of the same dtype;
    h0: [B,H]; lengths: [B] ints in [0, T], or None for all T; plan: how the
    float32 loops run (a plan.Plan; by default forward_plan's).
    Returns y [T,B,H], h_n [B,H] and, when training, the cache that
    rnn_backward_cpu consumes (else None); the backward runs the same plan.
    """
    T, B, I = x.shape
    H = packed.H
    lens = lengths_or_full(lengths, T, B)
    if packed.kind == "blas":
        xw = blas_projection(x, packed.w_ih, packed.bias)
        h = h0.copy()
        y = np.empty((T, B, H), x.dtype)
        _forward_blas(xw, packed.w_hh_t, h, lens, reverse, packed.relu, y)
        y_out, h0_kept = y, h0
    else:
        Hp = packed.Hp
        hbuf, y = state_buffers(h0, T, Hp)
        if plan is None:
            plan = forward_plan(x.shape, packed, training)
        P = plan.units_threads(packed.w_fwd.shape[0])

        def run(xw, t0, t1):
            _forward_tiled(xw, packed.w_fwd, hbuf, y[t0:t1], lens - t0, reverse,
                           packed.relu, P, plan.gate)

        xw = run_in_chunks(x, packed.w_in, packed.bias, Hp, hbuf, reverse,
                           T if training else plan.chunk, run)
        y_out, h = unpadded(y, hbuf, H)
        h0_kept = pad_units(h0, Hp) if training else None
    if not training:
        return y_out, h, None
    # xw has served its purpose: the backward writes dG over it.
    cache = dict(x=x, h0=h0_kept, lengths=lens, reverse=reverse, dg=xw, y=y, plan=plan)
    return y_out, h, cache


def rnn_step_cpu(x, packed, h):
    """One inference step, for streaming: x [B,I], h [B,H] -> h' [B,H] (a new
    array). Equal to rnn_forward_cpu on one step, without its parallel regions."""
    B, H = x.shape[0], packed.H
    y, h_new = np.empty((1, B, H), np.float32), np.empty((B, H), np.float32)
    if rnn_forward_into(x[None], packed, np.ascontiguousarray(h), y, h_new):
        return h_new
    # (a one-step forward: the thread policy's)
    return thread_policy(rnn_forward_cpu, x[None], packed, h)[1]


def rnn_forward_into(x, packed, h, y, h_out):
    """An inference forward on one thread from Python, into the caller's arrays:
    x [T,B,I] and the state h [B,H] (read only) -> y [T,B,H] and the last state
    h_out [B,H], all C-contiguous float32; no lengths. Returns False, writing
    nothing, where rnn_forward_cpu would take more threads or the BLAS loop
    (kernels/table.py: forward_into). A single step is always one thread, as
    rnn_step_cpu's."""
    T, B, I = x.shape
    route = 0 if packed.kind == "blas" else into_route(T, B, I, packed.Hp, 1, plain=False,
                                                        splits=False)
    if route > 0:
        _steps_state(x, packed.w_in, packed.bias, packed.w_fwd, h, y, h_out, packed.Hp,
                     route, packed.relu)
    return route > 0


def rnn_backward_cpu(dy, dh_n, cache, packed):
    """Backward of rnn_forward_cpu; consumes (overwrites) the cache.

    dy: [T,B,H]; dh_n: [B,H]; packed: the weights the forward used.
    Returns dx [T,B,I], dh0 [B,H] and {"w_ih", "w_hh", "b_ih", "b_hh"} in
    torch's layout.
    """
    x, y, h0, lens = cache["x"], cache["y"], cache["h0"], cache["lengths"]
    reverse, dg = cache["reverse"], cache["dg"]
    T, B, I = x.shape
    H = packed.H
    if packed.kind == "blas":
        dh = dh_n.copy()
        _backward_blas(dy, dg, y, packed.w_hh, lens, reverse, packed.relu, dh)
        dg2 = dg.reshape(T * B, H)
        mm = product_for(dg2.dtype)
        dx = mm(dg2, packed.w_ih).reshape(T, B, I)
        db = dg2.sum(axis=0)
        grads = dict(w_ih=mm(dg2.T, x.reshape(T * B, I)),
                     w_hh=blas_recurrent_gradient(dg, y, h0, lens, reverse),
                     b_ih=db, b_hh=db.copy())
        return dx, dh, grads
    Hp = y.shape[2]
    dh_np = pad_units(dh_n, Hp)
    rec = aligned_empty((B, Hp))
    plan = cache["plan"]
    _backward_tiled(dg, y, pad_units(dy, Hp), packed.w_bwd, rec, dh_np, lens, reverse,
                    packed.relu, plan.units_threads(packed.w_bwd.shape[0]), plan.gate)
    dh0, dg_t, dw_hh, db = _recurrent_gradients(dg, y, h0, lens, reverse, packed.w_bwd)
    empty = lens == 0
    dh0[empty] = dh_np[empty]
    dg2 = dg.reshape(T * B, Hp)
    dx, dw_ih = _input_gradients(dg2, dg_t, x, packed.w_dx)
    return _torch_layout(dx, dh0, dw_ih, dw_hh, db, db, packed.rows, x.shape, H)
