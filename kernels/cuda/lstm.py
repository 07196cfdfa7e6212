"""CUDA kernels of one LSTM layer in one direction, checked against reference.py.

Dimensions: T steps, B batch, I input features, H hidden units, G = 4H (gate
blocks i, f, g, o, torch's order).

The path of a call (common.py describes the persistent and per-step launches):
    forward:  xp = x @ W_ih^T + b for all steps (one tiled product, [T*B,G]);
              then the recurrence. The training forward keeps the activated
              gates [T,B,G], c after each step (cs), and the c and h entering
              each step (cin, hin) [T,B,H]: the backward recomputes nothing.
    backward: per reversed step, the gate gradients of every unit (pointwise,
              into dgates [T*B,G]), a grid barrier, then dh = dgates[t] @ W_hh
              with the block's columns of W_hh on chip; after the loop, dx,
              dW_ih, dW_hh and the bias gradient are each one product over all
              T*B rows.
    With a projection (proj_size, P units of h), a step's cell pass writes
    m = o * cell(c') and a second phase after a grid barrier makes h = W_hr m
    (project_step); the backward folds dh @ W_hr into its gate pass. A
    layer-normalised cell goes to lstm_norm.py.

Arrays are Numba device arrays; x, h0, c0, dy, dh_n and dc_n are read only.
"""
import math

from numba import cuda

from ..gates import DEFAULT_ACTS, activate, for_cuda, gate_clip_bounds, lstm_cell_grads
from .cells import CudaLSTM
from .common import (as_device, back_slots, block_items, combine, copy, device_array, dh_one,
                     dh_product, input_gradients, item_at, lengths_or_full, load_columns,
                     load_rows, matmul, ones, plan, step_slots)
from .lstm_cell import (ROWS, cell_update, extra_gradients, gate_products, h_gradient,
                        options, project_step)
from .lstm_norm import norm_backward, norm_forward


def pack_lstm_cuda(w_ih, w_hh, b_ih, b_hh, w_hr=None, peephole=None, ln_ih=None, ln_hh=None,
                   ln_c=None, ln_c_bias=None, cell_clip=None, input_forget=False,
                   gate_clip=None, acts=DEFAULT_ACTS):
    """Torch-layout weights (host or device) and the cell's options (gates.lstm_cell_grads)
    -> the device arrays the kernels read (cells.CudaLSTM): w_ih [G,I], w_hh [G,P], bias = b_ih +
    b_hh [G]; w_hr [P,H], the projection (torch's proj_size), or [0,0] for none
    (P = H); clip and gclip (inf for none), coupled; acts: gates.make_acts's tuple
    (a user's functions become device functions, gates.for_cuda: the kernels
    compile for each); peep [3,H], the peepholes (i, f, o), or [0,1] for none;
    ln: None, or layer normalisation's gains ln_ih, ln_hh [G], ln_c and bias
    ln_c_bias [H] (all four or none; lstm_norm.py runs such a cell)."""
    H = w_hh.shape[0] // ROWS
    peep = (device_array((0, 1), w_ih.dtype) if peephole is None else
            as_device(peephole).reshape(3, H))
    w_hr = device_array((0, 0), w_ih.dtype) if w_hr is None else as_device(w_hr)
    ln = None if ln_ih is None else tuple(as_device(a) for a in (ln_ih, ln_hh, ln_c, ln_c_bias))
    return CudaLSTM(H=H, P=w_hh.shape[1], w_hr=w_hr, peep=peep, ln=ln, w_ih=as_device(w_ih),
                    w_hh=as_device(w_hh),
                    bias=combine(as_device(b_ih), as_device(b_hh), "add"),
                    clip=float("inf") if cell_clip is None else float(cell_clip),
                    coupled=bool(input_forget), acts=for_cuda(acts),
                    gclip=float("inf") if gate_clip is None else float(gate_clip))


@cuda.jit(device=True)
def _forward_step(s, xp, w_hh, w_sh, cached, w_hr, m, lengths, state, saved, walk, opts,
                  extras):
    """Step s of the block's units: reads h[cur], writes c and h[nxt] and y[t] or,
    with a projection (w_hr [P,H]; [0,0] for none), m[i] = o * cell(c') (i = t when
    training, else 0), which project_step turns into h and y. state, walk, opts,
    extras: lstm_cell's groups; saved (training): (gates [T,B,G], cs, cin [T,B,H],
    hin [T,B,P]), the activated gates, c' before zoneout, the c entering the step
    and the h that W_hh read (times the recurrent dropout mask). Zoneout:
    c' <- c' + zc (c - c'), likewise h' (with a projection, project_step zones h')."""
    h, c, y = state
    gates, cs, cin, hin = saved
    reverse, units, training = walk
    zero, acts = opts[0], opts[4]
    peep, mask, zc, zh = extras
    masked = mask.shape[0] > 0
    zoned = zc.shape[0] > 0
    projected = w_hr.shape[0] > 0
    B = y.shape[1]
    H = c.shape[1]
    KP = w_hh.shape[1] + 1  # the units of h (P with a projection, else H), padded
    t, cur, nxt = step_slots(s, y.shape[0], reverse)
    i_m = t if training else 0
    stride = units * KP  # from one gate's rows to the next in w_sh
    for n in range(*block_items(H, B, units)):
        j, b, ul, u = item_at(n, B, units)
        if u >= H:
            continue
        h_in = zero if projected else h[cur, b, u]
        c_in = c[b, u]
        if t < lengths[b]:
            row = t * B + b
            ai, af, ag, ao = gate_products(
                xp[row, u], xp[row, H + u], xp[row, 2 * H + u], xp[row, 3 * H + u], w_hh,
                w_sh, cached, j * ROWS * stride + ul * KP, stride, h, cur, b, u, mask)
            i, f, g, o, c_new = cell_update(ai, af, ag, ao, c_in, peep, u, opts)
            h_new = o * activate(acts[2], c_new)
            if training:
                cs[t, b, u] = c_new
                gates[t, b, u] = i
                gates[t, b, H + u] = f
                gates[t, b, 2 * H + u] = g
                gates[t, b, 3 * H + u] = o
            if zoned:  # keep part of the old state (zc, zh: 0/1 draws or the rates)
                z = t if zc.shape[0] > 1 else 0
                c_new += zc[z, b, u] * (c_in - c_new)
                if not projected:
                    h_new += zh[z, b, u] * (h_in - h_new)
            c[b, u] = c_new
            if projected:
                m[i_m, b, u] = h_new
            else:
                h[nxt, b, u] = h_new
                y[t, b, u] = h_new
        else:  # past this row's length: hold the state, output zero
            if projected:
                m[i_m, b, u] = zero
            else:
                h[nxt, b, u] = h_in
                y[t, b, u] = zero
            if training:
                cs[t, b, u] = c_in
                gates[t, b, u] = zero
                gates[t, b, H + u] = zero
                gates[t, b, 2 * H + u] = zero
                gates[t, b, 3 * H + u] = zero
        if training:
            cin[t, b, u] = c_in
            if not projected:
                hin[t, b, u] = h_in * mask[b, u] if masked else h_in  # (what W_hh read)


@cuda.jit
def _forward_persistent(xp, w_hh, w_hr, m, lengths, state, saved, walk, opts, extras):
    """All T steps in one cooperative launch, the block's rows of W_hh on chip; a
    second barrier a step with a projection (which reads m of all units)."""
    w_sh = cuda.shared.array(0, w_hh.dtype)
    load_rows(w_hh, w_sh, ROWS, walk[1])
    cuda.syncthreads()
    grid = cuda.cg.this_grid()
    h, _, y = state
    _, mask, _, zh = extras
    for s in range(y.shape[0]):
        _forward_step(s, xp, w_hh, w_sh, True, w_hr, m, lengths, state, saved, walk, opts,
                      extras)
        grid.sync()
        if w_hr.shape[0] > 0:
            project_step(s, w_hr, m, lengths, h, y, saved[3], walk, opts[0], mask, zh)
            grid.sync()


@cuda.jit
def _forward_one(s, phase, xp, w_hh, w_hr, m, lengths, state, saved, walk, opts, extras):
    """Step s alone (phase 0), or its projection (phase 1), W_hh read from global
    memory (the per-step path)."""
    w_sh = cuda.shared.array(0, w_hh.dtype)
    if phase == 0:
        _forward_step(s, xp, w_hh, w_sh, False, w_hr, m, lengths, state, saved, walk, opts,
                      extras)
    else:
        project_step(s, w_hr, m, lengths, state[0], state[2], saved[3], walk, opts[0],
                     extras[1], extras[3])


def lstm_forward_cuda(x, cell, h0, c0, lengths=None, reverse=False, training=False,
                      units=None, blocks=None, persistent=None, h_mask=None, zone_c=None,
                      zone_h=None):
    """One layer and direction on device arrays.

    x: [T,B,I]; cell: pack_lstm_cuda's CudaLSTM; h0: [B,P], c0: [B,H] (P = H without
    a projection); lengths: [B] ints (host or device) or None. units, blocks,
    persistent: force the launch (see common.plan); None chooses. h_mask: None,
    or [B,P] (host or device) multiplying h where it enters the recurrent product
    at every step (recurrent dropout, reference.lstm_forward_ref). zone_c, zone_h:
    None, or zoneout's weights of c [T,B,H] and h [T,B,P], or [1,B,...] for the same
    at every step (both or neither; reference.lstm_forward_ref), host or device.
    Returns y [T,B,P], h_n [B,P], c_n [B,H] and, when training, a cache for
    lstm_backward_cuda (else None).
    """
    T, B, I = x.shape
    H, P = cell.H, cell.P
    projected = cell.w_hr.shape[0] > 0
    dtype = x.dtype
    lens = lengths_or_full(lengths, T, B)
    mask = device_array((0, 0), dtype) if h_mask is None else as_device(h_mask)
    if (zone_c is None) != (zone_h is None):
        raise ValueError("zone_c and zone_h: pass both (zoneout) or neither")
    none = device_array((0, 0, 0), dtype)
    zc, zh = (none, none) if zone_c is None else (as_device(zone_c), as_device(zone_h))
    if cell.ln is not None:
        return norm_forward(x, cell, h0, c0, lens, reverse, training, mask, zc, zh, units,
                            blocks, persistent)
    xp = matmul(x.reshape(T * B, I), cell.w_ih, device_array((T * B, 4 * H), dtype),
                bias=cell.bias, trans_b=True)
    h = device_array((2, B, P), dtype)
    copy(h0, h[0])
    c = device_array((B, H), dtype)
    copy(c0, c)
    y = device_array((T, B, P), dtype)
    if training:
        gates = device_array((T, B, 4 * H), dtype)
        cs, cin = (device_array((T, B, H), dtype) for _ in range(2))
        hin = device_array((T, B, P), dtype)
    else:
        gates = cs = cin = hin = device_array((1, 1, 1), dtype)
    # o * cell(c') of every unit, which the projection reads: all steps' when training
    # (dW_hr needs them), else one step's.
    m = device_array((T if training else 1, B, H) if projected else (1, 1, 1), dtype)
    state, saved = (h, c, y), (gates, cs, cin, hin)
    opts, extras = options(cell, dtype), (cell.peep, mask, zc, zh)

    def args(units):
        return (xp, cell.w_hh, cell.w_hr, m, lens, state, saved,
                (bool(reverse), units, bool(training)), opts, extras)

    p = plan(_forward_persistent, args(1), H, B, ROWS, P + 1, dtype.itemsize, units, blocks,
             persistent)
    if p.persistent:
        _forward_persistent[p.blocks, p.threads, 0, p.shared](*args(p.units))
    else:
        for s in range(T):
            for phase in ((0, 1) if projected else (0,)):
                _forward_one[p.blocks, p.threads](s, phase, *args(p.units))
    cache = None
    if training:
        cache = dict(x=x, lengths=lens, reverse=bool(reverse), gates=gates, cs=cs,
                     cin=cin, hin=hin, mask=mask, zc=zc, zh=zh, m=m)
    return y, h[T % 2], c, cache


@cuda.jit(device=True)
def _backward_gates(k, dy, w_hr, dhs, lengths, saved, grads, walk, opts, extras):
    """The k-th step of the backward walk (forward step T-1-k), pointwise for the
    block's units: dgates[t] from dh[cur] + dy[t] (h_gradient: with a projection,
    w_hr [P,H], or zoneout; dhs [T*B,P] keeps h's gradient with a projection, zero
    past a row's length) and dc; dc -> the gradient of c entering the step;
    dh[nxt] starts, for valid rows, as h_gradient leaves it. saved: the forward's
    (gates, cs, cin); grads: (dgates [T*B,G], dh [2,B,P], dc [B,H]); walk, opts,
    extras: lstm_cell's groups (the mask unused: dh_product reads it)."""
    gates, cs, cin = saved
    dgates, dh, dc = grads
    reverse, units, _ = walk
    zero, clip, coupled, gclip, acts = opts
    peep, _, zc, zh = extras
    B = dy.shape[1]
    H = cs.shape[2]
    t, cur, _ = back_slots(k, dy.shape[0], reverse)
    gated = gclip < math.inf
    # (only a gate clip reads them; a user's activation of inf may be NaN)
    bounds = gate_clip_bounds(gclip, zero, acts) if gated else (zero, zero, zero, zero)
    for n in range(*block_items(H, B, units)):
        _, b, _, u = item_at(n, B, units)
        if u >= H:
            continue
        row = t * B + b
        if t < lengths[b]:
            i = gates[t, b, u]
            f = gates[t, b, H + u]
            g = gates[t, b, 2 * H + u]
            o = gates[t, b, 3 * H + u]
            cc = cs[t, b, u]
            tc = activate(acts[2], cc)
            dh_t = h_gradient(dy, w_hr, dhs, dh, zh, t, b, u, cur, zero)
            dc_t = dc[b, u]
            kept_c = zero  # zoneout: the part of c passed on unchanged
            if zc.shape[0] > 0:
                kept_c = zc[t if zc.shape[0] > 1 else 0, b, u] * dc_t
                dc_t -= kept_c
            if peep.shape[0] > 0:  # (a branch each: the peepholes' is its own code)
                di, df, dg, do, dc_prev = lstm_cell_grads(
                    dc_t, dh_t, i, f, g, o, tc, cin[t, b, u], cc, clip, coupled, acts,
                    (peep[0, u], peep[1, u], peep[2, u]), bounds, gated)
            else:
                di, df, dg, do, dc_prev = lstm_cell_grads(
                    dc_t, dh_t, i, f, g, o, tc, cin[t, b, u], cc, clip, coupled, acts,
                    None, bounds, gated)
            dgates[row, u] = di
            dgates[row, H + u] = df
            dgates[row, 2 * H + u] = dg
            dgates[row, 3 * H + u] = do
            dc[b, u] = dc_prev + kept_c
        else:
            dgates[row, u] = zero
            dgates[row, H + u] = zero
            dgates[row, 2 * H + u] = zero
            dgates[row, 3 * H + u] = zero
            if w_hr.shape[0] > 0 and u < dy.shape[2]:
                dhs[row, u] = zero


@cuda.jit
def _backward_persistent(dy, w_hh, w_hr, dhs, lengths, saved, grads, walk, opts, extras):
    """All T steps backwards in one cooperative launch, the block's columns of
    W_hh on chip. One barrier a step, between the gate gradients (which the
    dh product reads across units) and dh: everything else a block touches
    (its units' dh, dc and the next step's rows of dgates) is its own. With a
    projection a second one after dh, which every unit's gradients read whole."""
    w_sh = cuda.shared.array(0, w_hh.dtype)
    load_columns(w_hh, w_sh, walk[1])
    cuda.syncthreads()
    grid = cuda.cg.this_grid()
    for k in range(dy.shape[0]):
        _backward_gates(k, dy, w_hr, dhs, lengths, saved, grads, walk, opts, extras)
        grid.sync()
        dh_product(k, grads[0], w_hh, w_sh, True, lengths, grads[1], walk, 0, w_hh.shape[0],
                   extras[1], opts[0])
        if w_hr.shape[0] > 0:
            grid.sync()


@cuda.jit
def _backward_gates_one(k, dy, w_hh, w_hr, dhs, lengths, saved, grads, walk, opts, extras):
    """Step k's gate gradients alone (the per-step path; w_hh unused: dh_one reads
    it)."""
    _backward_gates(k, dy, w_hr, dhs, lengths, saved, grads, walk, opts, extras)


def lstm_backward_cuda(dy, dh_n, dc_n, cache, cell, units=None, blocks=None,
                       persistent=None):
    """Backward of lstm_forward_cuda.

    dy: [T,B,P]; dh_n [B,P], dc_n: [B,H]. Returns dx [T,B,I], dh0 [B,P], dc0 [B,H]
    and {"w_ih", "w_hh", "b_ih", "b_hh"} (and "w_hr" [P,H] with a projection,
    "peephole" [3H] with peepholes, "ln_ih", "ln_hh", "ln_c", "ln_c_bias" with
    layer normalisation; device arrays in the weights' shapes).
    """
    if cell.ln is not None:
        return norm_backward(dy, dh_n, dc_n, cache, cell, units, blocks, persistent)
    x, lens, reverse = cache["x"], cache["lengths"], cache["reverse"]
    T, B, I = x.shape
    H, P = cell.H, cell.P
    w_hr = cell.w_hr
    projected = w_hr.shape[0] > 0
    dtype = x.dtype
    w_hh = cell.w_hh
    dgates = device_array((T * B, 4 * H), dtype)
    dhs = device_array((T * B, P) if projected else (1, 1), dtype)  # h's gradient, per step
    dh = device_array((2, B, P), dtype)
    copy(dh_n, dh[0])
    dc = device_array((B, H), dtype)
    copy(dc_n, dc)
    mask = cache["mask"]
    opts = options(cell, dtype)
    extras = (cell.peep, mask, cache["zc"], cache["zh"])
    saved = (cache["gates"], cache["cs"], cache["cin"])

    def args(units):
        return (dy, w_hh, w_hr, dhs, lens, saved, (dgates, dh, dc), (reverse, units, True),
                opts, extras)

    p = plan(_backward_persistent, args(1), H, B, 1, 4 * H + 1, dtype.itemsize, units,
             blocks, persistent)
    if p.persistent:
        _backward_persistent[p.blocks, p.threads, 0, p.shared](*args(p.units))
    else:
        walk = (reverse, p.units, True)
        for k in range(T):
            _backward_gates_one[p.blocks, p.threads](k, *args(p.units))
            dh_one[p.blocks, p.threads](k, dgates, w_hh, lens, dh, walk, 0, 4 * H, mask,
                                        opts[0])
    dx, dw_ih, db = input_gradients(dgates, x, cell.w_ih, ones(T * B, dtype))
    dw_hh = matmul(dgates, cache["hin"].reshape(T * B, P), device_array((4 * H, P), dtype),
                   trans_a=True)
    grads = dict(w_ih=dw_ih, w_hh=dw_hh, b_ih=db, b_hh=copy(db, device_array(4 * H, dtype)))
    return dx, dh[T % 2], dc, extra_gradients(grads, cell, cache, dgates, dhs)
