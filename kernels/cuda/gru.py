"""CUDA kernels of one GRU layer in one direction, checked against reference.py.

Dimensions: T steps, B batch, I input features, H hidden units, G = 3H (gate
blocks r, z, n, torch's order).

The path of a call (common.py describes the persistent and per-step launches):
    forward:  xp = x @ W_ih^T + b for all steps (one tiled product, [T*B,G]; b
              = b_ih + b_hh, less b_hn when reset_after: r multiplies it); then
              the recurrence.
              reset_after: one phase a step, n = tanh(xp_n + r * (W_hn h + b_hn))
              (tanh and the gates' sigmoid: acts's, gates.make_acts).
              Otherwise two phases a step with a grid barrier between: r, z and
              r * h of every unit, then n = tanh(xp_n + W_hn (r * h)), whose
              product reads r * h of all units.
              The training forward keeps the activated gates [T,B,G], the h
              entering each step (hin [T,B,H]) and, for the n gate's
              gradients, hn = W_hn h + b_hn (reset_after) or r * h (rh,
              otherwise), [T,B,H]: the backward recomputes nothing.
    backward: per reversed step, pointwise: dz, dn, drec (the gradient of the n
              gate's recurrent term: dn * r with reset_after, else dn) and, with
              reset_after, dr; a grid barrier; then the n gate's part of dh,
              drec[t] @ W_hn (without reset_after that is d(r * h), which dr
              needs: dr, then a second barrier); then dh += [dr dz][t] @ W_rz.
              The block's columns of W_hh stay on chip. After the loop, dx,
              dW_ih, dW_hh and the two bias gradients are products over all
              T*B rows (W_hh's and b_hh's n rows from drec).
    Recurrent dropout: a mask [B,H] multiplies h wherever W_hh reads it (not in
    h' = n + z (h - n)); hin keeps h itself, and the backward masks a copy of it
    for dW_hh (common.scale_rows).
    Zoneout: weights zh [T,B,H] (or [1,B,H]) mix the old state back in after the
    cell, h' <- h' + zh (h - h'); the backward passes the part zh of dh' straight
    to the step before and the rest through the cell.

Arrays are Numba device arrays; x, h0, dy and dh_n are read only.
"""
from numba import cuda

from ..gates import DEFAULT_ACTS, activate, dactivate, for_cuda
from .cells import CudaGRU
from .common import (as_device, back_slots, block_items, column_sums, combine, copy,
                     device_array, dh_one, dh_product, input_gradients, item_at,
                     lengths_or_full, load_columns, load_rows, matmul, ones, plan, scale_rows,
                     step_slots)
from .gru_norm import norm_backward, norm_forward

ROWS = 3  # weight rows per hidden unit


def pack_gru_cuda(w_ih, w_hh, b_ih, b_hh, reset_after=True, acts=DEFAULT_ACTS, ln_ih=None,
                  ln_hh=None):
    """Torch-layout weights (host or device) -> the device arrays the kernels read
    (cells.CudaGRU):
    w_ih [G,I], w_hh [G,H], b_ih, b_hh [G], and bias [G], the input product's
    bias: b_ih + b_hh, with b_ih alone in the n block when reset_after (b_hn is
    added inside the recurrence there). acts: gates.make_acts's tuple (a user's
    functions become device functions, gates.for_cuda: the kernels compile for
    each). ln_ih, ln_hh [G]: layer normalisation's gains (gru_norm.py; reset_after
    only), or None."""
    H = w_hh.shape[1]
    if ln_ih is not None and not reset_after:
        raise ValueError("layer_norm: the GRU with reset_after=True only")
    w_ih, w_hh, b_ih, b_hh = (as_device(a) for a in (w_ih, w_hh, b_ih, b_hh))
    bias = combine(b_ih, b_hh, "add")
    if reset_after:
        copy(b_ih[2 * H:], bias[2 * H:])
    ln = None if ln_ih is None else (as_device(ln_ih), as_device(ln_hh))
    return CudaGRU(H=H, reset_after=bool(reset_after), w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                   b_hh=b_hh, bias=bias, acts=for_cuda(acts), ln=ln)


# -- forward ---------------------------------------------------------------------------
# The kernels take their arguments in groups (tuples):
#     state   (h [2,B,H], y [T,B,H]): h double-buffered
#     saved   the forward's (gates [T or 1,B,G], hn [T,B,H], hin [T,B,H], rh [T or 1,B,H]):
#             the activated gates, W_hn h + b_hn (reset_after), the h entering the step,
#             r * h (without reset_after, read by phase 2); the backward's (gates, hn,
#             hin)
#     grads   the backward's (dgi [T*B,G], drec [T*B,H], dh [2,B,H])
#     walk    (reverse, units, training)
#     opts    (zero, acts): 0 in the dtype, the activations (gates.for_cuda's)
#     extras  (mask, zh): the recurrent dropout mask on h where W_hh reads it [B,H]
#             ([0,0] for none; hin keeps h itself, which h' = n + z (h - n) reads)
#             and zoneout's weights [T or 1,B,H] ([0,0,0]): h' <- h' + zh (h - h')
@cuda.jit(device=True)
def _step_after(s, xp, w_hh, w_sh, cached, b_hh, lengths, state, saved, walk, opts, extras):
    """Step s of the block's units with reset_after: reads h[cur], writes h[nxt]
    and y[t] (rh unused)."""
    h, y = state
    gates, hn, hin, _ = saved
    reverse, units, training = walk
    zero, acts = opts
    mask, zh = extras
    masked = mask.shape[0] > 0
    B = y.shape[1]
    H = y.shape[2]
    HP = H + 1
    t, cur, nxt = step_slots(s, y.shape[0], reverse)
    stride = units * HP  # from one gate's rows to the next in w_sh
    for n_ in range(*block_items(H, B, units)):
        j, b, ul, u = item_at(n_, B, units)
        if u >= H:
            continue
        h_in = h[cur, b, u]
        if t < lengths[b]:
            row = t * B + b
            ar = xp[row, u]
            az = xp[row, H + u]
            an = b_hh[2 * H + u]
            if cached:
                w = j * ROWS * stride + ul * HP
                for k in range(H):
                    hk = h[cur, b, k] * mask[b, k] if masked else h[cur, b, k]
                    ar += hk * w_sh[w + k]
                    az += hk * w_sh[w + stride + k]
                    an += hk * w_sh[w + 2 * stride + k]
            else:
                for k in range(H):
                    hk = h[cur, b, k] * mask[b, k] if masked else h[cur, b, k]
                    ar += hk * w_hh[u, k]
                    az += hk * w_hh[H + u, k]
                    an += hk * w_hh[2 * H + u, k]
            r = activate(acts[0], ar)
            z = activate(acts[0], az)
            n = activate(acts[2], xp[row, 2 * H + u] + r * an)
            h_new = n + z * (h_in - n)
            if zh.shape[0] > 0:
                h_new += zh[t if zh.shape[0] > 1 else 0, b, u] * (h_in - h_new)
            h[nxt, b, u] = h_new
            y[t, b, u] = h_new
            if training:
                gates[t, b, u] = r
                gates[t, b, H + u] = z
                gates[t, b, 2 * H + u] = n
                hn[t, b, u] = an
        else:  # past this row's length: hold the state, output zero
            h[nxt, b, u] = h_in
            y[t, b, u] = zero
            if training:
                gates[t, b, u] = zero
                gates[t, b, H + u] = zero
                gates[t, b, 2 * H + u] = zero
                hn[t, b, u] = zero
        if training:
            hin[t, b, u] = h_in


@cuda.jit(device=True)
def _step_reset(s, xp, w_hh, w_sh, cached, lengths, state, saved, walk, opts, mask):
    """Phase 1 of step s without reset_after, for the block's units: r and z into
    gates[i], r * h into rh[i] (i = t when training, else 0: the buffers then
    hold one step; rh holds r * h * mask)."""
    h, y = state
    gates, _, hin, rh = saved
    reverse, units, training = walk
    zero, acts = opts
    masked = mask.shape[0] > 0
    B = y.shape[1]
    H = y.shape[2]
    HP = H + 1
    t, cur, _ = step_slots(s, y.shape[0], reverse)
    i = t if training else 0
    stride = units * HP
    for n in range(*block_items(H, B, units)):
        j, b, ul, u = item_at(n, B, units)
        if u >= H:
            continue
        h_in = h[cur, b, u]
        if t < lengths[b]:
            row = t * B + b
            ar = xp[row, u]
            az = xp[row, H + u]
            if cached:
                w = j * ROWS * stride + ul * HP
                for k in range(H):
                    hk = h[cur, b, k] * mask[b, k] if masked else h[cur, b, k]
                    ar += hk * w_sh[w + k]
                    az += hk * w_sh[w + stride + k]
            else:
                for k in range(H):
                    hk = h[cur, b, k] * mask[b, k] if masked else h[cur, b, k]
                    ar += hk * w_hh[u, k]
                    az += hk * w_hh[H + u, k]
            r = activate(acts[0], ar)
            gates[i, b, u] = r
            gates[i, b, H + u] = activate(acts[0], az)
            rh[i, b, u] = r * (h_in * mask[b, u] if masked else h_in)
        else:  # zeros, so that the backward's products over rh stay finite
            gates[i, b, u] = zero
            gates[i, b, H + u] = zero
            rh[i, b, u] = zero
        if training:
            hin[t, b, u] = h_in


@cuda.jit(device=True)
def _step_candidate(s, xp, w_hh, w_sh, cached, lengths, state, saved, walk, opts, zh):
    """Phase 2 of step s without reset_after, for the block's units:
    n = tanh(xp_n + W_hn rh[i]) (b_hn is in xp), then h[nxt] and y[t] (after
    zoneout)."""
    h, y = state
    gates, _, _, rh = saved
    reverse, units, training = walk
    zero, acts = opts
    B = y.shape[1]
    H = y.shape[2]
    HP = H + 1
    t, cur, nxt = step_slots(s, y.shape[0], reverse)
    i = t if training else 0
    stride = units * HP
    for n_ in range(*block_items(H, B, units)):
        j, b, ul, u = item_at(n_, B, units)
        if u >= H:
            continue
        h_in = h[cur, b, u]
        if t < lengths[b]:
            row = t * B + b
            an = xp[row, 2 * H + u]
            if cached:
                w = j * ROWS * stride + ul * HP + 2 * stride
                for k in range(H):
                    an += rh[i, b, k] * w_sh[w + k]
            else:
                for k in range(H):
                    an += rh[i, b, k] * w_hh[2 * H + u, k]
            n = activate(acts[2], an)
            h_new = n + gates[i, b, H + u] * (h_in - n)
            if zh.shape[0] > 0:
                h_new += zh[t if zh.shape[0] > 1 else 0, b, u] * (h_in - h_new)
            h[nxt, b, u] = h_new
            y[t, b, u] = h_new
            if training:
                gates[t, b, 2 * H + u] = n
        else:  # past this row's length: hold the state, output zero
            h[nxt, b, u] = h_in
            y[t, b, u] = zero
            if training:
                gates[t, b, 2 * H + u] = zero


@cuda.jit(device=True)
def _forward_phase(s, phase, xp, w_hh, w_sh, cached, b_hh, lengths, state, saved, walk,
                   opts, extras):
    """Step s (phase 0: reset_after) or one of its two phases (1, 2: without)."""
    if phase == 0:
        _step_after(s, xp, w_hh, w_sh, cached, b_hh, lengths, state, saved, walk, opts,
                    extras)
    elif phase == 1:
        _step_reset(s, xp, w_hh, w_sh, cached, lengths, state, saved, walk, opts, extras[0])
    else:
        _step_candidate(s, xp, w_hh, w_sh, cached, lengths, state, saved, walk, opts,
                        extras[1])


@cuda.jit
def _forward_persistent(xp, w_hh, b_hh, lengths, state, saved, reset_after, walk, opts,
                        extras):
    """All T steps in one cooperative launch, the block's rows of W_hh on chip:
    one grid barrier a step with reset_after, else two (rh is read across units)."""
    w_sh = cuda.shared.array(0, w_hh.dtype)
    load_rows(w_hh, w_sh, ROWS, walk[1])
    cuda.syncthreads()
    grid = cuda.cg.this_grid()
    first, last = (0, 0) if reset_after else (1, 2)
    for s in range(state[1].shape[0]):
        for phase in range(first, last + 1):
            _forward_phase(s, phase, xp, w_hh, w_sh, True, b_hh, lengths, state, saved, walk,
                           opts, extras)
            grid.sync()


@cuda.jit
def _forward_one(s, phase, xp, w_hh, b_hh, lengths, state, saved, reset_after, walk, opts,
                 extras):
    """Step s alone (phase 0: reset_after) or one of its two phases (1, 2: without),
    W_hh read from global memory (the per-step path)."""
    w_sh = cuda.shared.array(0, w_hh.dtype)
    _forward_phase(s, phase, xp, w_hh, w_sh, False, b_hh, lengths, state, saved, walk, opts,
                   extras)


def gru_forward_cuda(x, cell, h0, lengths=None, reverse=False, training=False, units=None,
                     blocks=None, persistent=None, h_mask=None, zone_h=None):
    """One layer and direction on device arrays.

    x: [T,B,I]; cell: pack_gru_cuda's CudaGRU; h0: [B,H]; lengths: [B] ints (host
    or device) or None. units, blocks, persistent: force the launch (see
    common.plan); None chooses. h_mask: None, or [B,H] (host or device)
    multiplying h wherever W_hh reads it, at every step (recurrent dropout,
    reference.gru_forward_ref); zone_h: None, or zoneout's weights [T,B,H] ([1,B,H]:
    the same at every step; host or device).
    Returns y [T,B,H], h_n [B,H] and, when training, a cache for
    gru_backward_cuda (else None). A layer-normalised cell runs gru_norm.py's
    per-step launches (units, blocks and persistent do not apply).
    """
    T, B, I = x.shape
    H = cell.H
    reset_after = cell.reset_after
    dtype = x.dtype
    lens = lengths_or_full(lengths, T, B)
    mask = device_array((0, 0), dtype) if h_mask is None else as_device(h_mask)
    zh = device_array((0, 0, 0), dtype) if zone_h is None else as_device(zone_h)
    if cell.ln is not None:
        return norm_forward(x, cell, h0, lens, reverse, training, mask, zh)
    xp = matmul(x.reshape(T * B, I), cell.w_ih, device_array((T * B, 3 * H), dtype),
                bias=cell.bias, trans_b=True)
    h = device_array((2, B, H), dtype)
    copy(h0, h[0])
    y = device_array((T, B, H), dtype)
    unused = device_array((1, 1, 1), dtype)
    # Without reset_after, phase 1 hands r, z and r * h to phase 2 through gates
    # and rh: all steps' when training, else one step's.
    steps = T if training else 1
    gates = (device_array((steps, B, 3 * H), dtype) if training or not reset_after
             else unused)
    hin = device_array((T, B, H), dtype) if training else unused
    hn = device_array((T, B, H), dtype) if training and reset_after else unused
    rh = device_array((steps, B, H), dtype) if not reset_after else unused
    state, saved = (h, y), (gates, hn, hin, rh)
    opts, extras = (dtype.type(0), cell.acts), (mask, zh)

    def args(units):
        return (xp, cell.w_hh, cell.b_hh, lens, state, saved, reset_after,
                (bool(reverse), units, bool(training)), opts, extras)

    p = plan(_forward_persistent, args(1), H, B, ROWS, H + 1, dtype.itemsize, units, blocks,
             persistent)
    if p.persistent:
        _forward_persistent[p.blocks, p.threads, 0, p.shared](*args(p.units))
    else:
        for s in range(T):
            for phase in ((0,) if reset_after else (1, 2)):
                _forward_one[p.blocks, p.threads](s, phase, *args(p.units))
    cache = None
    if training:
        cache = dict(x=x, lengths=lens, reverse=bool(reverse), gates=gates, hin=hin,
                     hn=hn, rh=rh, mask=mask, zh=zh)
    return y, h[T % 2], cache


# -- backward --------------------------------------------------------------------------
@cuda.jit(device=True)
def _backward_gates(k, dy, lengths, saved, grads, reset_after, walk, opts, zh):
    """The k-th step of the backward walk (forward step T-1-k), pointwise for the
    block's units, from dh_t = dh[cur] + dy[t]: dgi[t] = [dr dz dn] (dr only
    with reset_after; without, it needs d(r * h) and comes later), drec[t] =
    dn * r (reset_after) or dn, and dh[nxt] = dh_t * z for valid rows.
    Zoneout (zh as the forward's): the part zh of dh_t passes straight to
    dh[nxt], the rest goes through the cell."""
    gates, hn, hin = saved
    dgi, drec, dh = grads
    reverse, units, _ = walk
    zero, acts = opts
    B = dy.shape[1]
    H = dy.shape[2]
    t, cur, nxt = back_slots(k, dy.shape[0], reverse)
    for n in range(*block_items(H, B, units)):
        _, b, _, u = item_at(n, B, units)
        if u >= H:
            continue
        row = t * B + b
        if t < lengths[b]:
            z = gates[t, b, H + u]
            c = gates[t, b, 2 * H + u]  # the n gate
            dh_t = dh[cur, b, u] + dy[t, b, u]
            kept = zero
            if zh.shape[0] > 0:
                kept = zh[t if zh.shape[0] > 1 else 0, b, u] * dh_t
                dh_t -= kept
            dhz = dh_t * z
            dn = (dh_t - dhz) * dactivate(acts[3], c)
            dgi[row, H + u] = dh_t * (hin[t, b, u] - c) * dactivate(acts[1], z)
            dgi[row, 2 * H + u] = dn
            if reset_after:
                r = gates[t, b, u]
                dgi[row, u] = dn * hn[t, b, u] * dactivate(acts[1], r)
                drec[row, u] = dn * r
            else:
                drec[row, u] = dn
            dh[nxt, b, u] = dhz + kept
        else:
            dgi[row, u] = zero
            dgi[row, H + u] = zero
            dgi[row, 2 * H + u] = zero
            drec[row, u] = zero


@cuda.jit(device=True)
def _backward_n(k, w_hh, w_sh, cached, lengths, saved, grads, reset_after, walk, opts, mask):
    """The n gate's part of the recurrent product for the block's units j of valid
    rows: d = sum_i drec[t*B + b, i] * W_hn[i, j]. reset_after: dh[nxt] += d * m.
    Otherwise d is d(r * h * m): dr = d * h * m * r'(.) into dgi, dh[nxt] +=
    d * r * m. m: the recurrent dropout mask [B,H], or 1 (mask [0,0])."""
    gates, _, hin = saved
    dgi, drec, dh = grads
    reverse, units, _ = walk
    zero, acts = opts
    masked = mask.shape[0] > 0
    H = w_hh.shape[1]
    GP = w_hh.shape[0] + 1
    B = dh.shape[1]
    t, _, nxt = back_slots(k, drec.shape[0] // B, reverse)
    for n in range(*block_items(H, B, units)):
        j, b, ul, u = item_at(n, B, units)
        if u >= H or t >= lengths[b]:
            continue
        row = t * B + b
        d = zero
        if cached:
            wi = j * units * GP + ul * GP + 2 * H
            for i in range(H):
                d += drec[row, i] * w_sh[wi + i]
        else:
            for i in range(H):
                d += drec[row, i] * w_hh[2 * H + i, u]
        if masked:
            d *= mask[b, u]
        if reset_after:
            dh[nxt, b, u] += d
        else:
            r = gates[t, b, u]
            dgi[row, u] = d * hin[t, b, u] * dactivate(acts[1], r)
            dh[nxt, b, u] += d * r


@cuda.jit
def _backward_persistent(dy, w_hh, lengths, saved, grads, reset_after, walk, opts, extras):
    """All T steps backwards in one cooperative launch, the block's columns of
    W_hh on chip. A barrier after the pointwise pass (the products read dgi and
    drec across units); without reset_after a second one after _backward_n,
    whose dr the [dr dz] product reads. Everything else a block touches (its
    units' dh and the next step's rows of dgi and drec) is its own."""
    w_sh = cuda.shared.array(0, w_hh.dtype)
    load_columns(w_hh, w_sh, walk[1])
    cuda.syncthreads()
    grid = cuda.cg.this_grid()
    mask, zh = extras
    for k in range(dy.shape[0]):
        _backward_gates(k, dy, lengths, saved, grads, reset_after, walk, opts, zh)
        grid.sync()
        _backward_n(k, w_hh, w_sh, True, lengths, saved, grads, reset_after, walk, opts, mask)
        if not reset_after:
            grid.sync()
        dh_product(k, grads[0], w_hh, w_sh, True, lengths, grads[2], walk, 0,
                   2 * dy.shape[2], mask, opts[0])


@cuda.jit
def _backward_gates_one(k, dy, w_hh, lengths, saved, grads, reset_after, walk, opts, extras):
    """Step k's pointwise pass alone (the per-step path; w_hh and the mask unused)."""
    _backward_gates(k, dy, lengths, saved, grads, reset_after, walk, opts, extras[1])


@cuda.jit
def _backward_n_one(k, dy, w_hh, lengths, saved, grads, reset_after, walk, opts, extras):
    """Step k's n gate product alone, W_hh read from global memory (dy unused)."""
    w_sh = cuda.shared.array(0, w_hh.dtype)
    _backward_n(k, w_hh, w_sh, False, lengths, saved, grads, reset_after, walk, opts,
                extras[0])


def gru_backward_cuda(dy, dh_n, cache, cell, units=None, blocks=None, persistent=None):
    """Backward of gru_forward_cuda.

    dy: [T,B,H]; dh_n: [B,H]. Returns dx [T,B,I], dh0 [B,H] and
    {"w_ih", "w_hh", "b_ih", "b_hh"} (device arrays in the weights' shapes; and
    "ln_ih", "ln_hh" with layer normalisation).
    """
    if cell.ln is not None:
        return norm_backward(dy, dh_n, cache, cell)
    x, lens, reverse = cache["x"], cache["lengths"], cache["reverse"]
    T, B, I = x.shape
    H = cell.H
    reset_after = cell.reset_after
    dtype = x.dtype
    w_hh = cell.w_hh
    dgi = device_array((T * B, 3 * H), dtype)  # [dr dz dn]: the input product's gradient
    drec = device_array((T * B, H), dtype)     # the n gate's recurrent term's gradient
    dh = device_array((2, B, H), dtype)
    copy(dh_n, dh[0])
    mask = cache["mask"]
    opts = (dtype.type(0), cell.acts)

    def args(units):
        return (dy, w_hh, lens, (cache["gates"], cache["hn"], cache["hin"]),
                (dgi, drec, dh), reset_after, (reverse, units, True), opts,
                (mask, cache["zh"]))

    p = plan(_backward_persistent, args(1), H, B, 1, 3 * H + 1, dtype.itemsize, units,
             blocks, persistent)
    if p.persistent:
        _backward_persistent[p.blocks, p.threads, 0, p.shared](*args(p.units))
    else:
        walk = (reverse, p.units, True)
        for k in range(T):
            _backward_gates_one[p.blocks, p.threads](k, *args(p.units))
            _backward_n_one[p.blocks, p.threads](k, *args(p.units))
            dh_one[p.blocks, p.threads](k, dgi, w_hh, lens, dh, walk, 0, 2 * H, mask, opts[0])
    # What W_hh read: h, or h * mask with recurrent dropout (hin keeps h itself).
    hin = (cache["hin"] if mask.shape[0] == 0 else scale_rows(cache["hin"], mask)
           ).reshape(T * B, H)
    one = ones(T * B, dtype)
    dx, dw_ih, db_ih = input_gradients(dgi, x, cell.w_ih, one)
    # Products into the first 2H rows (or entries) of an output read only the
    # first 2H columns of dgi: the r and z blocks.
    dw_hh = device_array((3 * H, H), dtype)
    matmul(dgi, hin, dw_hh[:2 * H], trans_a=True)
    matmul(drec, hin if reset_after else cache["rh"].reshape(T * B, H), dw_hh[2 * H:],
           trans_a=True)
    db_hh = device_array(3 * H, dtype)
    column_sums(dgi, db_hh[:2 * H], one)
    column_sums(drec, db_hh[2 * H:], one)
    grads = dict(w_ih=dw_ih, w_hh=dw_hh, b_ih=db_ih, b_hh=db_hh)
    return dx, dh[T % 2], grads
