"""Device functions of the LSTM shared by its plain kernels (lstm.py) and its
layer-normalised ones (lstm_norm.py): a unit's four gate products, the
projection's step, the gradient reaching h, and the gradients of the options'
weights (projection, peepholes) after the loop.

The kernels take their arguments in groups (tuples), the same in lstm.py and
lstm_norm.py:
    walk    (reverse, units, training): the direction, the units per slice
            (common.plan's) and whether the forward keeps a cache
    opts    options(cell, dtype)'s (zero, clip, coupled, gclip, acts)
    extras  (peep, mask, zc, zh): the peepholes [3,H] ([0,1] for none), the
            recurrent dropout mask on h [B,P] ([0,0]), zoneout's weights of c and h
            [T or 1,B,H] and [T or 1,B,P] ([0,0,0] for none)
    state   the forward's (h [2,B,P], c [B,H], y [T,B,P]): h double-buffered
"""
from numba import cuda

from ..gates import activate, clip_gate, lstm_cell
from .common import block_items, device_array, flat_launch, item_at, matmul, step_slots


ROWS = 4  # weight rows per hidden unit


def options(cell, dtype):
    """The cell's options as every LSTM kernel takes them, one tuple: (zero, clip,
    coupled, gclip, acts): 0 in the dtype, cell_clip and gate_clip in it (inf: none),
    input_forget, and the activations (gates.for_cuda's)."""
    return (dtype.type(0), dtype.type(cell.clip), cell.coupled, dtype.type(cell.gclip),
            cell.acts)


# -- forward ---------------------------------------------------------------------------
@cuda.jit(device=True)
def gate_products(ai, af, ag, ao, w_hh, w_sh, cached, w, stride, h, cur, b, u, mask):
    """(ai, af, ag, ao) plus unit u's four rows of W_hh times h[cur, b] (times the
    recurrent dropout mask [B,K], or [0,0] for none): from w_sh, where the unit's
    i row starts at w and each gate's at stride from the last (load_rows), or
    from w_hh [G,K] itself."""
    H = w_hh.shape[0] // ROWS
    masked = mask.shape[0] > 0
    if cached:
        for k in range(w_hh.shape[1]):
            hk = h[cur, b, k] * mask[b, k] if masked else h[cur, b, k]
            ai += hk * w_sh[w + k]
            af += hk * w_sh[w + stride + k]
            ag += hk * w_sh[w + 2 * stride + k]
            ao += hk * w_sh[w + 3 * stride + k]
    else:
        for k in range(w_hh.shape[1]):
            hk = h[cur, b, k] * mask[b, k] if masked else h[cur, b, k]
            ai += hk * w_hh[u, k]
            af += hk * w_hh[H + u, k]
            ag += hk * w_hh[2 * H + u, k]
            ao += hk * w_hh[3 * H + u, k]
    return ai, af, ag, ao


@cuda.jit(device=True)
def cell_update(ai, af, ag, ao, c_in, peep, u, opts):
    """Unit u's LSTM cell from its four gate pre-activations (ai, af, ag, ao) and the
    state entering the step c_in: (i, f, g, o, c'), the activated gates and the new
    cell state before zoneout. peep: the peepholes [3,H], or [0,1] for none (ONNX's:
    i and f read c_in, o reads c'); opts: options()'s, gate_clip bounding each
    pre-activation, cell_clip c', input_forget coupling f = 1 - i. The plain
    (lstm.py) and the layer-normalised (lstm_norm.py) forwards share it."""
    _, clip, coupled, gclip, acts = opts
    if peep.shape[0] > 0:
        ai += peep[0, u] * c_in
        af += peep[1, u] * c_in
    i = activate(acts[0], clip_gate(ai, gclip))
    g = activate(acts[2], clip_gate(ag, gclip))
    f, c_new = lstm_cell(i, activate(acts[0], clip_gate(af, gclip)), g, c_in, clip, coupled)
    if peep.shape[0] > 0:
        ao += peep[2, u] * c_new
    return i, f, g, activate(acts[0], clip_gate(ao, gclip)), c_new


@cuda.jit(device=True)
def project_step(s, w_hr, m, lengths, h, y, hin, walk, zero, mask, zh):
    """The projection of step s for the block's units q of h (P of them): h[nxt]
    and y[t] = W_hr m[i] of valid rows (m: _forward_step's, all H units of it), with
    zoneout's h' <- h' + zh (h - h') (zh as _forward_step's), the held state and zero
    past a row's length; hin[t] (training): h entering the step, times the recurrent
    dropout mask (as _forward_step's). walk: (reverse, units, training)."""
    reverse, units, training = walk
    masked = mask.shape[0] > 0
    B = y.shape[1]
    P = y.shape[2]
    H = w_hr.shape[1]
    t, cur, nxt = step_slots(s, y.shape[0], reverse)
    i_m = t if training else 0
    for n in range(*block_items(P, B, units)):
        _, b, _, q = item_at(n, B, units)
        if q >= P:
            continue
        h_in = h[cur, b, q]
        if t < lengths[b]:
            acc = zero
            for u in range(H):
                acc += w_hr[q, u] * m[i_m, b, u]
            if zh.shape[0] > 0:
                acc += zh[t if zh.shape[0] > 1 else 0, b, q] * (h_in - acc)
            h[nxt, b, q] = acc
            y[t, b, q] = acc
        else:
            h[nxt, b, q] = h_in
            y[t, b, q] = zero
        if training:
            hin[t, b, q] = h_in * mask[b, q] if masked else h_in  # (what W_hh read)


# -- backward --------------------------------------------------------------------------
@cuda.jit(device=True)
def h_gradient(dy, w_hr, dhs, dh, zh, t, b, u, cur, zero):
    """The gradient reaching unit u's o * cell(c') at step t of a valid row b, from
    h's, dh[cur, b] + dy[t, b], less zoneout's kept part (zh as the forward's,
    [0,0,0] for none), with which it starts dh[(cur+1) % 2, b]: that of unit u
    itself or, with a projection (w_hr [P,H]; [0,0] for none), the rest of each
    unit q of h times W_hr[q, u] (unit u < P then also starts dh[(cur+1) % 2, b, u]
    and keeps h's gradient in dhs[t*B + b, u] for dW_hr). The backward's products
    add the rest of dh."""
    P = dy.shape[2]
    row = t * dy.shape[1] + b
    nxt = 1 - cur
    zt = t if zh.shape[0] > 1 else 0
    if w_hr.shape[0] > 0:
        d = zero
        for q in range(P):
            dq = dh[cur, b, q] + dy[t, b, q]
            if zh.shape[0] > 0:
                dq -= zh[zt, b, q] * dq
            d += dq * w_hr[q, u]
        if u < P:
            dq = dh[cur, b, u] + dy[t, b, u]
            kept = zh[zt, b, u] * dq if zh.shape[0] > 0 else zero
            dhs[row, u] = dq - kept
            dh[nxt, b, u] = kept
        return d
    d = dh[cur, b, u] + dy[t, b, u]
    kept = zero
    if zh.shape[0] > 0:
        kept = zh[zt, b, u] * d
        d -= kept
    dh[nxt, b, u] = kept
    return d


def extra_gradients(grads, cell, cache, dgates, dhs):
    """Add the projection's ("w_hr" [P,H], from h's gradient per step dhs and the
    cache's m) and the peepholes' ("peephole" [3H]) gradients to grads, where the
    cell has them; dgates [T*B,G] the gate pre-activations' gradients."""
    H, P = cell.H, cell.P
    x = cache["x"]
    TB = x.shape[0] * x.shape[1]
    if cell.w_hr.shape[0] > 0:
        grads["w_hr"] = matmul(dhs, cache["m"].reshape(TB, H),
                               device_array((P, H), x.dtype), trans_a=True)
    if cell.peep.shape[0] > 0:
        dpeep = device_array((3, H), x.dtype)
        peephole_gradients[flat_launch(3 * H)](
            dgates, cache["cin"].reshape(TB, H), cache["cs"].reshape(TB, H), dpeep,
            x.dtype.type(0))
        grads["peephole"] = dpeep.reshape(3 * H)
    return grads


@cuda.jit
def peephole_gradients(dgates, cin, cs, out, zero):
    """out[k, u] for k = i, f, o: the sum over all T*B rows of that gate's dG times the
    state it read, c entering the step (cin [T*B,H]) for i and f, the new one (cs) for
    o; one thread a weight. Rows past their length have dG zero."""
    H = out.shape[1]
    n = cuda.grid(1)
    if n < 3 * H:
        k = n // H
        u = n - k * H
        col = (3 if k == 2 else k) * H + u  # i, f, o: gate blocks 0, 1, 3
        acc = zero
        for r in range(dgates.shape[0]):
            acc += dgates[r, col] * (cs[r, u] if k == 2 else cin[r, u])
        out[k, u] = acc
