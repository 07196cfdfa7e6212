"""CPU kernels of one LSTM layer in one direction, checked against reference.py.

Dimensions: T steps, B batch, I input features, H hidden units, G = 4H; Hp is H
padded to a multiple of HB, Gp = 4 Hp.

Two paths, chosen by dtype when the weights are packed (pack_lstm_cpu):

  float32, "tiled": the fast path, with no BLAS in it. Weights are laid out in
      blocks of U hidden units, each block's CB = 4U columns holding its
      [i f g o] gates, so one thread's slice of the recurrent product is also
      the input of its own gate math. Every product is one register-tiled
      kernel (microkernel.tile_block: tiles of ROWS rows x CB columns of
      accumulators, 24 zmm registers on AVX-512, written in LLVM IR):
      - the time loop runs one parallel region per step, each of P threads
        owning a range of blocks (product, then gate math), so a step waits only
        at the region's end; or, from 8 rows a thread while W_hh fits in a
        core's L2, one region for all the steps, each thread running its rows
        of the batch with all of W_hh (forward_rows, backward_rows); an
        inference call from Python (forward_into) of up to 4 rows runs as a duet
        instead (duet.steps_duet: one region for all the steps, two
        threads each owning half of every step's units and taking over a late
        peer's half), a small one on one thread (steps_state), and a large
        streamed step shares its blocks (step_split);
      - the products before the loop (input projection) and after it (dx, the
        weight gradients) are parallel loops over (row chunk, block) tasks.
      All of it runs in Numba's OpenMP pool. BLAS kept out on purpose: NumPy's
      OpenBLAS workers spin after each call and took the cores from the time
      loop (projection + loop cost 28 ms where the two alone cost 12). (torch
      ships its own copy of libgomp, so in one process with torch there are two
      OpenMP pools: alternating their calls, as the benchmark does, made both
      15-20% slower at the character model than either alone.)
  float64, "blas": the exact path the gradient checks use: per step a BLAS
      product (SciPy's, through np.dot) and a serial gate pass, with libm's
      exp and tanh; the same BLAS for the products around the loop (blas_dot: with
      NumPy's there, its pool and SciPy's took the cores from each other).
      Layer normalisation (ln_* weights) takes this loop in float32 too: its
      per-row statistics over all 4H gate columns sit between the product and
      the gate math, which the tiled loops split among threads by units. The
      input product is normalised for all steps before the loop and its
      gradient after it; the loop normalises the recurrent product per step
      (keeping it normalised, h_hat, for the backward, which writes its
      gradient there) and the cell state before h' reads it. In float32 its
      products are the tiled ones on Numba's threads (step_product,
      tiled_dot), in torch's column order, not BLAS: SciPy's OpenBLAS threads
      in the loop and Numba's in the layers around it, called in turn, slowed
      each other 2x to 8x. The gate math is in functions of one row's arrays
      (_gates_row, ...), which LLVM vectorises, as it did not in the loop.

Hidden units are padded to a multiple of HB (the arrays of units: h, c, y, the
gates) with zero weights and zero state, but the time loops spend no time on the
padding: the recurrent products sum over the layer's own units only (the
weights' K rows: H, or P, not Hp), and the forward's loops run the blocks of U
units that hold units, Gl/CB of them, Gl = ceil(H/U) * CB gate columns (at H =
96, 6 blocks of Hp/U = 8: the padding had cost a third more time). The padded
units' entries are never read by those products (the weights' rows past the
units are gone) and are dropped at the end; the training forward zeroes them in
what the backward reads (the gates, c and y), so the backward's loops, which
still run over whole blocks of HB, meet zeros there; the weight gradients read
the blocks that hold units only.

A recurrent projection (torch's proj_size P: h = W_hr (o * tanh(c)), h and y of
P units, padded to Pp) adds a second parallel region to each step: the gate math
writes m = o * tanh(c), then each thread projects its blocks of h. The backward
mirrors it (the gradient of h into dhs, then dm = dhs[t] @ W_hr feeds the gate
gradients), and dW_hr is one product over all T*B rows after the loop, with m
recomputed from the stored gates and c before the loop overwrites them.

Recurrent dropout (a [B,P] mask on h where it enters the recurrent product, the
same at every step) keeps a second double buffer, h * mask, which each thread
writes for its own units at the end of a step: no extra barrier. The backward
multiplies dh by the mask after each product, and dW_hh reads h * mask.

Zoneout keeps each thread's units of c before the step and mixes the old values
of c and h back in after it; the backward splits dh and dc into the parts kept
(passed to the step before) and the parts that reach the gates.

Peepholes add the state to the gate pre-activations; they too take the
options' loops, and their gradient is a sum over steps and rows after the loop
(peephole_gradients). The activations (gates.make_acts) are part of every
kernel's argument types: each pair compiles to its own loops, the default ones
exactly the plain layer's.

The options run in forward_tiled_options and backward_tiled_options; the plain
layer keeps forward_tiled and backward_tiled, whose per-step calls take only
what it needs (at B=1, H=64 the options' arguments cost it 10-20%).

The path of a call (both paths):
    forward:  xw = x @ W_ih^T + b for all steps (one product); then the time loop
              in one compiled function. The training forward writes the
              activated gates over xw and keeps c of every step; h of every step
              is y. In the batch split, where fuse_input says so, each step's
              product reads x[t] and h together instead (forward_rows, fused),
              and nothing is projected before the loop.
    backward: the time loop writes the pre-activation gradients dG over the
              stored gates (one recurrent product dG[t] @ W_hh per step); then
              dx is one product over all T*B rows, and the weight gradients two
              more, computed transposed with dG in blocks (weight_gradients;
              the batch split's loop writes those blocks as it goes).
"""
from time import perf_counter_ns

import numpy as np

from ..gates import DEFAULT_ACTS, for_dtype
from .cells import BlasLSTM, TiledLSTM
from .gradients import first_step_dh, input_gradient, peephole_gradients, weight_gradients
from .lstm_blas import backward_blas_wrap, forward_blas
from .lstm_tiled import (HB, NO_PEEP, U, backward_rows, backward_tiled, backward_tiled_options,
                         cell_outputs, forward_rows, forward_tiled, forward_tiled_options,
                         step_split, steps_state)
from .duet import steps_duet
from .microkernel import CB
from .norm import normalised_input
from .plan import DUET, SPLIT, into_route, make_plan
from .products import in_blocks, matmul, product_for, step_tiles, transpose
from .sequence import (NO_ARRAY, NO_MASK, NO_ZONE, first_forward_steps, lengths_or_full,
                       mask_buffers, pad_units, writable, zone_weights)
from .threads import POLICY, SMALL_REGION, numba_threads, serial_if, serialised
from .threads import run as thread_policy


# -- packing and the Python-level wrappers ---------------------------------------------
def _gate_columns(H):
    """cols[j]: the tiled column of torch's gate column j (gate k = j // H, unit j % H)."""
    k, u = np.divmod(np.arange(4 * H), H)
    return (u // U) * CB + k * U + u % U


def forward_plan(shape, packed, training, plain=True):
    """plan.make_plan for a float32 call on x of this shape [T,B,I] with these weights;
    plain: no projection, recurrent dropout, zoneout or peepholes."""
    T, B, I = shape
    return make_plan(T, B, I, packed.Hp, 4, training, plain)


def pack_lstm_cpu(w_ih, w_hh, b_ih, b_hh, w_hr=None, peephole=None, ln_ih=None, ln_hh=None,
                  ln_c=None, ln_c_bias=None, cell_clip=None, input_forget=False,
                  gate_clip=None, acts=DEFAULT_ACTS):
    """One cell's torch-layout weights (w_ih [G,I], w_hh [G,P], b_ih, b_hh [G], the
    projection w_hr [P,H] or None (P = H), the peepholes [3H] (i, f, o) or None,
    layer normalisation's gains ln_ih, ln_hh [G], ln_c [H] and bias ln_c_bias [H],
    or None) and options (gates.lstm_cell's and lstm_cell_grads's; acts
    gates.make_acts's tuple) -> the layout these kernels read (cells.py): TiledLSTM
    for float32, BlasLSTM for float64 and for layer normalisation in either dtype."""
    G, I = w_ih.shape
    H = G // 4
    P = H if w_hr is None else w_hr.shape[0]
    bias = b_ih + b_hh
    options = dict(clip=float(np.inf if cell_clip is None else cell_clip),
                   coupled=bool(input_forget),
                   gclip=float(np.inf if gate_clip is None else gate_clip),
                   proj=w_hr is not None, acts=for_dtype(acts, w_ih.dtype))
    if w_ih.dtype != np.float32 or ln_ih is not None:  # (these loops take them as they are)
        w_ih, w_hh, w_hr, ln_ih, ln_hh, ln_c, ln_c_bias = writable(
            w_ih, w_hh, w_hr, ln_ih, ln_hh, ln_c, ln_c_bias)
        no_proj = np.zeros((0, 0), w_ih.dtype)
        norms = None if ln_ih is None else tuple(
            np.ascontiguousarray(a) for a in (ln_ih, ln_hh, ln_c, ln_c_bias))
        # float32's layer_norm keeps off BLAS: its products run on Numba's threads, as
        # every other float32 loop's do (see blas_dot).
        tiles = None if w_ih.dtype != np.float32 else dict(
            w_fwd=in_blocks(w_hh.T), w_bwd=in_blocks(w_hh),
            w_proj=in_blocks(w_hr.T) if w_hr is not None else np.zeros((0, 1, CB), np.float32),
            w_proj_bwd=(in_blocks(w_hr) if w_hr is not None else
                        np.zeros((0, 1, CB), np.float32)))
        return BlasLSTM(H=H, P=P, w_ih=w_ih, w_hh=w_hh, bias=bias, ln=norms, tiles=tiles,
                        w_hh_t=np.ascontiguousarray(w_hh.T),
                        w_hr=no_proj if w_hr is None else np.ascontiguousarray(w_hr),
                        w_hr_t=no_proj if w_hr is None else np.ascontiguousarray(w_hr.T),
                        peep=None if peephole is None else np.array(peephole.reshape(3, H)),
                        **options)
    Hp = -(-H // HB) * HB
    Pp = -(-P // HB) * HB
    Gp = 4 * Hp
    cols = _gate_columns(H)
    w_ih_p = np.zeros((Gp, I), np.float32)
    w_ih_p[cols] = w_ih
    bias_p = np.zeros((1, Gp), np.float32)
    bias_p[0, cols] = bias
    w_hh_p = np.zeros((Gp, Pp), np.float32)
    w_hh_p[cols, :P] = w_hh
    w_hr_p = np.zeros((Pp, Hp), np.float32)
    if w_hr is not None:
        w_hr_p[:P, :H] = w_hr
    no_blocks = np.zeros((0, 1, CB), np.float32)
    Gl = -(-H // U) * CB  # the gate columns of the blocks that hold units (module docstring)
    return TiledLSTM(
        H=H, Hp=Hp, P=P, Pp=Pp, cols=cols, bias=bias_p, **options,
        peep=(None if peephole is None else
              pad_units(peephole.reshape(3, H).astype(np.float32), Hp)),
        w_in=in_blocks(w_ih_p[:Gl].T),         # [Gl/CB, I, CB]: x @ W_ih^T
        w_fwd=in_blocks(w_hh_p[:Gl, :P].T),    # [Gl/CB, P, CB]: h @ W_hh^T
        w_bwd=in_blocks(w_hh_p[:Gl]),          # [Pp/CB, Gl, CB]: dG @ W_hh
        w_dx=in_blocks(w_ih_p[:Gl]),           # [Ip/CB, Gl, CB]: dG @ W_ih, I padded to Ip
        # [Pp/CB, H, CB]: m @ W_hr^T and [Hp/CB, P, CB]: dh @ W_hr (no blocks: none)
        w_proj=no_blocks if w_hr is None else in_blocks(w_hr_p[:, :H].T),
        w_proj_bwd=no_blocks if w_hr is None else in_blocks(w_hr_p[:P]))


def lstm_forward_cpu(x, packed, h0, c0, lengths=None, reverse=False, training=False,
                     h_mask=None, zone_c=None, zone_h=None, plan=None):
    """One LSTM layer and direction on the CPU.

    x: [T,B,I] C-contiguous; packed: pack_lstm_cpu(...) of the same dtype;
    h0 [B,P], c0 [B,H] (P = H without a projection); lengths: [B] ints in [0, T],
    or None for all T; h_mask: None, or [B,P] multiplying h where it enters the
    recurrent product at every step (recurrent dropout, reference.lstm_forward_ref);
    zone_c, zone_h: None, or zoneout's weights of c [T,B,H] and h [T,B,P] (or [1,B,H]
    and [1,B,P], the same at every step); plan: how the float32 loops run (a
    plan.Plan; by default forward_plan's; the float64 and layer-normalised loops
    plan each step's product themselves).
    Returns y [T,B,P], h_n [B,P], c_n [B,H] and, when training, the cache that
    lstm_backward_cpu consumes (else None); the backward runs the same plan.
    """
    T, B, I = x.shape
    H, Pu = packed.H, packed.P
    if (T == 1 and not training and lengths is None and h_mask is None and zone_c is None
            and plan is None):
        # One inference step: the streaming step's single compiled call (the same sums;
        # a plan passed in, or the options that call lacks, run the loop).
        y, h, c = (np.empty(s, np.float32) for s in ((1, B, Pu), (B, Pu), (B, H)))
        if lstm_forward_into(x, packed, np.ascontiguousarray(h0), np.ascontiguousarray(c0),
                             y, h, c):
            return y, h, c, None
    lens = lengths_or_full(lengths, T, B)
    ln_cache = None  # layer_norm's arrays for the backward
    if packed.kind == "blas":
        norms, ln = packed.ln, None
        if norms is None:
            xw = product_for(x.dtype)(x.reshape(T * B, I), packed.w_ih.T).reshape(T, B, -1)
        else:  # the input product normalised before the loop
            x_hat, rstd_x = normalised_input(x, packed.w_ih)
            G = x_hat.shape[2]
            xw = x_hat * norms[0]
            h_hat, rstd_h = (np.empty((T, B, G), x.dtype), np.empty((T, B), x.dtype)) if (
                training) else (np.empty((0, 0, 0), x.dtype), np.empty((0, 0), x.dtype))
            ln = norms[1:] + (h_hat, rstd_h)
            ln_cache = dict(x_hat=x_hat, rstd_x=rstd_x, h_hat=h_hat, rstd_h=rstd_h)
        xw += packed.bias
        h, c = h0.copy(), c0.copy()
        y = np.empty((T, B, Pu), x.dtype)
        cs = np.empty((T, B, H) if training else (0, 0, 0), x.dtype)
        mask = np.zeros((0, 0), x.dtype) if h_mask is None else np.ascontiguousarray(h_mask)
        zc, zh = zone_weights(zone_c, H, x.dtype), zone_weights(zone_h, Pu, x.dtype)
        czs = np.empty_like(cs) if training and zone_c is not None else cs
        forward_blas(xw, packed.w_hh_t, packed.w_hr_t, mask, h, c, lens, reverse,
                      training, y, cs, packed.clip, packed.coupled, packed.gclip,
                      packed.acts, packed.peep, czs, zc, zh, ln,
                      step_tiles(packed, B, "w_fwd", "w_proj"))
        y_out, c0_kept = y, c0
    else:
        Hp, Pp = packed.Hp, packed.Pp
        hbuf = np.zeros((2, B, Pp), np.float32)
        hbuf[0, :, :Pu] = h0
        c0_kept = pad_units(c0, Hp)
        c = c0_kept.copy()
        # Training, with blocks of padding the loops skip: zeros there for the backward.
        alloc = np.zeros if training and packed.w_in.shape[0] * CB < 4 * Hp else np.empty
        y = alloc((T, B, Pp), np.float32)
        cs = alloc((T, B, Hp) if training else (1, 1, 1), np.float32)
        rec = np.empty((B, 4 * Hp), np.float32)
        plain = (h_mask is None and zone_c is None and not packed.proj
                 and packed.peep is None)
        if plan is None:
            plan = forward_plan(x.shape, packed, training, plain)
        rows, gate = plan.rows and plain, plan.gate  # (the batch split has no options)
        P = plan.threads if rows else plan.units_threads(packed.w_fwd.shape[0])
        mask, zc, zh, czs = NO_MASK, NO_ZONE[np.dtype(np.float32)], None, cs
        if not plain:  # (at B=1 a plain call's microseconds show: it makes none of these)
            m = np.empty((B, Hp) if packed.proj else (1, 1), np.float32)
            zero = np.zeros((1, Pp), np.float32)
            mask, hmbuf = mask_buffers(h_mask, hbuf)
            zc, zh = zone_weights(zone_c, Hp, np.float32), zone_weights(zone_h, Pp, np.float32)
            czs = alloc(cs.shape, np.float32) if training and zone_c is not None else cs
            c_old = np.empty((B, Hp), np.float32) if zone_c is not None else NO_ARRAY
        if rows and plan.fused:
            # one loop with the input projection inside it; xw receives the gates
            xw = alloc((T if training else 1, B, 4 * Hp), np.float32)
            forward_rows(xw, x, packed.w_in, packed.bias, packed.w_fwd, hbuf, c, y,
                          cs, rec, lens, reverse, training, P, packed.clip,
                          packed.coupled, packed.gclip, packed.acts, True, gate)
            if T & 1:  # the state ended in hbuf[1]
                hbuf[0] = hbuf[1]
        else:
            steps = T if training else plan.chunk
            xw = alloc((min(steps, T), B, 4 * Hp), np.float32)
            # Chunks in the order the direction walks the steps; the state carries over.
            starts = range(0, T, steps)
            for t0 in (reversed(starts) if reverse else starts):
                t1 = min(t0 + steps, T)
                chunk = xw[:t1 - t0]
                matmul(x[t0:t1].reshape(-1, I), packed.w_in, chunk.reshape(-1, 4 * Hp),
                       packed.bias, False)
                if rows:
                    forward_rows(chunk, x[t0:t1], packed.w_in, packed.bias,
                                  packed.w_fwd, hbuf, c, y[t0:t1],
                                  cs[t0:t1] if training else cs, rec, lens - t0, reverse,
                                  training, P, packed.clip, packed.coupled,
                                  packed.gclip, packed.acts, False, gate)
                elif plain:
                    forward_tiled(chunk, packed.w_fwd, hbuf, c, y[t0:t1],
                                   cs[t0:t1] if training else cs, rec, lens - t0, reverse,
                                   training, P, packed.clip, packed.coupled,
                                   packed.gclip, packed.acts, gate)
                else:
                    forward_tiled_options(
                        chunk, packed.w_fwd, packed.w_proj, hbuf, hmbuf, mask, m, c,
                        y[t0:t1], cs[t0:t1] if training else cs, rec, zero, lens - t0, reverse,
                        training, P, packed.clip, packed.coupled, packed.gclip,
                        packed.acts, NO_PEEP if packed.peep is None else packed.peep, czs,
                        zc if zc.shape[0] == 1 else zc[t0:t1],
                        zh if zh.shape[0] == 1 else zh[t0:t1], c_old, gate)
                if (t1 - t0) & 1:  # the state ended in hbuf[1]; the next chunk reads hbuf[0]
                    hbuf[0] = hbuf[1]
                    if not plain:
                        hmbuf[0] = hmbuf[1]
        h = hbuf[0, :, :Pu].copy()
        c = c[:, :H].copy()
        y_out = y if Pp == Pu else np.ascontiguousarray(y[:, :, :Pu])
    if not training:
        return y_out, h, c, None
    cache = dict(x=x, h0=h0, c0=c0_kept, lengths=lens, reverse=reverse, gates=xw, cs=cs, y=y,
                 mask=mask, czs=czs, zc=zc, zh=zh, ln=ln_cache, plan=plan)
    return y_out, h, c, cache


def lstm_step_cpu(x, packed, h, c):
    """One inference step, for streaming: x [B,I], h, c [B,H] -> h', c' [B,H]
    (new arrays; the inputs are not modified). Equal to lstm_forward_cpu on one
    step, as one compiled call without its training buffers (lstm_forward_into): a
    few microseconds at B=1, H=64, on one thread unless plan.step_splits. With the
    options that call lacks it is a one-step forward on the plan's threads."""
    B, H = x.shape[0], packed.H
    y, h_new, c_new = (np.empty(s, np.float32) for s in ((1, B, H), (B, H), (B, H)))
    if lstm_forward_into(x[None], packed, np.ascontiguousarray(h), np.ascontiguousarray(c), y,
                         h_new, c_new):
        return h_new, c_new
    # (a one-step forward, which may enter parallel regions: the thread policy's)
    _, h, c, _ = thread_policy(lstm_forward_cpu, x[None], packed, h, c)
    return h, c


def _plain_tiled(packed):
    """Whether the packed weights run in the plain tiled loops (float32, no projection
    or peepholes), which lstm_forward_into's compiled calls cover."""
    return packed.kind != "blas" and not packed.proj and packed.peep is None


def _split_step(x, packed, h, c, h_out, c_out):
    """lstm_tiled.step_split on Numba's threads (thread_policy sets them for the call)."""
    step_split(x, packed.w_in, packed.bias, packed.w_fwd, h, c, h_out, c_out, packed.Hp,
               numba_threads(), packed.clip, packed.coupled, packed.gclip, packed.acts,
               POLICY.gate())


def _duet(x, packed, h, c, y, h_out, c_out):
    """duet.steps_duet on Numba's threads (thread_policy sets them for the call)."""
    steps_duet(x, packed.w_in, packed.bias, packed.w_fwd, h, c, y, h_out, c_out, packed.Hp,
               numba_threads(), packed.clip, packed.coupled, packed.gclip, packed.acts,
               POLICY.gate())


def lstm_forward_into(x, packed, h, c, y, h_out, c_out):
    """An inference forward from Python as one compiled call, into the caller's arrays:
    x [T,B,I] and the state h, c [B,H] (read only) -> y [T,B,H] and the last state
    h_out, c_out [B,H], all C-contiguous float32; no lengths. It runs on one thread
    (plan.runs_alone), except a large streamed step (T=1, plan.step_splits), which
    shares its units among the thread policy's threads in one parallel region, and
    a call of a few rows that runs as a duet on two threads (plan.duet_runs) where
    that was timed faster than one thread on this machine (plan.Trial).
    Returns False, writing nothing, where lstm_forward_cpu (or lstm_step_cpu)
    would take more threads or the options' loop (kernels/table.py: forward_into)."""
    T, B, I = x.shape
    route, trial = (into_route(T, B, I, packed.Hp, 4, blocks=packed.w_fwd.shape[0],
                               trial=True) if _plain_tiled(packed) else (0, None))
    start = perf_counter_ns() if trial is not None else 0
    if route > 0:
        steps_state(x, packed.w_in, packed.bias, packed.w_fwd, h, c, y, h_out, c_out,
                    packed.Hp, route, packed.clip, packed.coupled, packed.gclip, packed.acts)
    elif route == SPLIT:
        serialised(thread_policy, _split_step, x[0], packed, h, c, h_out, c_out)
        y[0] = h_out
    elif route == DUET:
        serialised(thread_policy, _duet, x, packed, h, c, y, h_out, c_out)
    if trial is not None:
        trial.note(route, perf_counter_ns() - start)
    return route != 0


def lstm_backward_cpu(dy, dh_n, dc_n, cache, packed):
    """Backward of lstm_forward_cpu; consumes (overwrites) the cache's gates.

    dy: [T,B,P]; dh_n [B,P], dc_n [B,H]; packed: the weights the forward used.
    Returns dx [T,B,I], dh0 [B,P], dc0 [B,H] and {"w_ih", "w_hh", "b_ih", "b_hh"}
    (and "w_hr" with a projection) in torch's layout.
    """
    if packed.kind == "blas":
        return backward_blas_wrap(dy, dh_n, dc_n, cache, packed)
    x, y, lens, reverse = cache["x"], cache["y"], cache["lengths"], cache["reverse"]
    T, B, I = x.shape
    H, Hc, Pu, proj = packed.H, packed.Hp, packed.P, packed.proj
    dg = cache["gates"]
    Gp, Hp = dg.shape[2], y.shape[2]  # Hp: the units of h (Pp with a projection)
    Ip = packed.w_dx.shape[0] * CB
    dh_np = pad_units(dh_n, Hp)
    dc = pad_units(dc_n, Hc).copy()
    rec = np.empty((B, Hp), np.float32)
    plan = cache["plan"]
    P = plan.units_threads(packed.w_bwd.shape[0])
    if proj:  # the projection's input, before the loop overwrites the gates
        m_all = np.empty((T, B, Hc), np.float32)
        serial_if(m_all.size <= SMALL_REGION, cell_outputs, dg, cache["cs"], lens, packed.acts,
                  m_all)
    dhs = np.empty((T, B, Hp) if proj else (1, 1, 1), np.float32)
    dm = np.empty((B, Hc) if proj else (1, 1), np.float32)
    mask = cache["mask"]
    masked = mask.shape[0] > 0
    zoned = cache["zc"].shape[2] > 0
    kh, dhz, zb = ((np.zeros((B, Hp), np.float32) for _ in range(3)) if zoned else
                   (NO_ARRAY,) * 3)
    kc = np.zeros((B, Hc), np.float32) if zoned else NO_ARRAY
    # dG in blocks, the weight gradients' operand (in_blocks's layout): the blocks that
    # hold units only (Gl columns, as w_in has them; the rest are padding)
    dgb, Gl = None, packed.w_in.shape[0] * CB
    rows = plan.rows
    peep = packed.peep
    if proj or masked or zoned or peep is not None:
        backward_tiled_options(dg, cache["cs"], cache["c0"], pad_units(dy, Hp), packed.w_bwd,
                                packed.w_proj_bwd, rec, dhs, dm, dh_np, dc, lens, reverse, P,
                                packed.clip, packed.coupled, packed.gclip,
                                packed.acts, NO_PEEP if peep is None else peep, mask,
                                cache["czs"], cache["zc"], cache["zh"], kh, kc, dhz, zb,
                                plan.gate)
    elif rows:  # (the loop writes dgb as it goes)
        dgb = np.empty((Gl // CB, T * B, CB), np.float32)
        backward_rows(dg, cache["cs"], cache["c0"], pad_units(dy, Hp), packed.w_bwd, rec,
                       dh_np, dc, lens, reverse, plan.threads, packed.clip, packed.coupled,
                       packed.gclip, packed.acts, dgb, plan.gate)
    else:
        backward_tiled(dg, cache["cs"], cache["c0"], pad_units(dy, Hp), packed.w_bwd, rec,
                        dh_np, dc, lens, reverse, P, packed.clip, packed.coupled,
                        packed.gclip, packed.acts, plan.gate)
    dh = first_step_dh(dg, lens, reverse, packed.w_bwd)
    if masked:
        dh *= mask
    if zoned:
        dh += kh  # zoneout's kept part of the first steps' dh
    empty = lens == 0
    dh[empty] = dh_np[empty]
    dg2 = dg.reshape(T * B, Gp)
    dx = input_gradient(dg2, packed.w_dx)
    if dgb is None:
        dgb = in_blocks(dg2[:, :Gl], plan.small_copy)
    grads = weight_gradients(dgb, x, y, cache["h0"], first_forward_steps(lens, reverse), mask,
                             reverse, packed.cols, Pu, small_copy=plan.small_copy)
    if peep is not None:
        gate = dg.reshape(T, B, Gp // CB, 4, U)  # [..., gate, unit of the block]
        grads["peephole"] = peephole_gradients(
            gate[:, :, :, 0], gate[:, :, :, 1], gate[:, :, :, 3], cache["cs"], cache["czs"],
            cache["c0"], lens, reverse, (T, B, Hc // U, U))[:, :H].reshape(-1)
    if proj:  # dW_hr = sum over steps and rows of dh^T m
        dhs_t = np.empty((Hp, T * B), np.float32)
        serial_if(dhs.size <= SMALL_REGION, transpose, dhs.reshape(T * B, Hp), dhs_t, NO_MASK)
        dw_hr = np.empty((Hp, Hc), np.float32)
        matmul(dhs_t, in_blocks(m_all.reshape(T * B, Hc)), dw_hr, np.zeros((1, Hc), np.float32),
               False)
        grads["w_hr"] = dw_hr[:Pu, :H]
    dx = dx.reshape(T, B, Ip)[:, :, :I]
    return (np.ascontiguousarray(dx), np.ascontiguousarray(dh[:, :Pu]),
            np.ascontiguousarray(dc[:, :H]), grads)
