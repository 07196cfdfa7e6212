"""CPU kernels of one GRU layer in one direction, checked against reference.py.

Dimensions: T steps, B batch, I input features, H hidden units, G = 3H; Hp is H
padded to a multiple of U = 64 units, Gp = 3 Hp.

Two paths, chosen when the weights are packed (pack_gru_cpu):

  float32 with reset_after=True, "tiled": lstm.py's design (read its docstring)
      for three gates, with no BLAS. A block of U hidden units owns three
      consecutive tile blocks of CB = U columns, [r | z | n], so a thread's
      slice of the recurrent product h @ W_hh^T is the input of its own gate
      math; the step is one parallel region, each thread owning a range of
      unit blocks, when it is large enough (else one thread). r multiplies only
      the recurrent part of n, so the product starts from b_hh instead of the
      projected inputs (as the LSTM's does) and the gate pass adds those.
  float64, and reset_after=False in either dtype, "blas": per step two
      products and serial gate passes. reset_after=False needs r before W_hn
      (r * h) can start, a second barrier in every step both ways; it is
      Keras's older form, so it takes this simple path. In float64 every
      product is SciPy's BLAS (np.dot in the loop, products.blas_dot around it); in
      float32 none is: the tiled products on Numba's threads
      (products.step_product, products.tiled_dot), as everywhere else in float32.
      Two thread pools in one call, or BLAS's beside the other layers'
      Numba threads, slowed each other: T=128, B=16, H=256 inference took
      48 ms alone and 124 ms alternating with a tiled GRU, which it slowed
      from 8.5 to 33 ms; now 18 ms either way.

Hidden units are padded with zero weights and zero state: with the default
activations a padded unit has r = z = 1/2 and n = 0, so its state stays exactly
zero; with others (n = activation(0) may not be 0) it can move, but W_hh's
padded columns are zero, so it feeds nothing, and it is cut from every output
and gradient.

The path of a call:
    forward:  xw = x @ W_ih^T + b_ih for all steps (one product), then the time
              loop in one compiled function. The training forward writes the
              activated gates r, z, n over xw and keeps the n gate's recurrent
              term hn = W_hn h + b_hn of every step (its product with r's
              derivative is dr); h of every step is y.
    backward: the time loop writes dG_hh = [dr dz dn*r], the gradients of the
              recurrent pre-activations, over the gates (one product dG_hh[t] @
              W_hh per step) and dn over hn, and (the batch split, as it goes)
              both in the weight gradients' blocked layout; after it, dW_hh
              comes from dG_hh and dx and dW_ih from dG_ih = [dr dz dn], each
              one product over all T*B rows (the weight gradients computed
              transposed, as the LSTM's are: _weight_gradients).
"""
import numpy as np

from ..gates import DEFAULT_ACTS, for_dtype
from .cells import BlasGRU, NormGRU, TiledGRU
from .gradients import first_step_dh, input_gradient, weight_gradients
from .gru_blas import backward_blas_wrap, backward_norm_wrap, forward_blas, forward_norm_wrap
from .gru_tiled import (U, backward_rows, backward_tiled, forward_rows, forward_tiled,
                        gate_blocks, step_split, steps_state)
from .plan import SPLIT, into_route, make_plan
from .products import (blas_projection, in_blocks, run_in_chunks, step_tiles, tiled_bias,
                       tiled_weights)
from .sequence import (NO_ARRAY, NO_MASK, NO_ZONE, aligned_empty, first_forward_steps,
                       lengths_or_full, mask_buffers, pad_units, state_buffers, unpadded,
                       writable, zone_weights)
from .threads import POLICY, SMALL_REGION, numba_threads, serial_if, serialised
from .threads import run as thread_policy


# -- packing and the Python-level wrappers ---------------------------------------------
def _gate_columns(H):
    """cols[j]: the tiled column of torch's gate column j (gate k = j // H, unit j % H)."""
    k, u = np.divmod(np.arange(3 * H), H)
    return (u // U) * 3 * U + k * U + u % U


def forward_plan(shape, packed, training, plain=True):
    """plan.make_plan for a float32 call on x of this shape [T,B,I] with these weights
    (a TiledGRU); the GRU's batch split runs with its options too, so plain is
    unused (it is there so that every cell's forward_plan takes the same)."""
    T, B, I = shape
    return make_plan(T, B, I, packed.Hp, 3, training)


def pack_gru_cpu(w_ih, w_hh, b_ih, b_hh, reset_after=True, acts=DEFAULT_ACTS, ln_ih=None,
                 ln_hh=None):
    """One cell's torch-layout weights (w_ih [3H,I], w_hh [3H,H], b_ih, b_hh [3H],
    gates r, z, n) and options (acts: gates.make_acts's tuple; ln_ih, ln_hh [3H]:
    layer_norm's gains, reset_after only) -> the layout these kernels read (cells.py):
    NormGRU with layer_norm, TiledGRU for float32 with reset_after, BlasGRU else."""
    H = w_ih.shape[0] // 3
    acts = for_dtype(acts, w_ih.dtype)
    if ln_ih is not None:  # a row's statistics span all 3H columns: one product a step
        if not reset_after:
            raise ValueError("layer_norm: the GRU with reset_after=True only")
        # (this loop and the next take the arrays as they are)
        w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh = writable(w_ih, w_hh, b_ih, b_hh, ln_ih, ln_hh)
        tiles = None if w_ih.dtype != np.float32 else dict(w_hh=in_blocks(w_hh.T),
                                                           w_hh_bwd=in_blocks(w_hh))
        return NormGRU(H=H, acts=acts, w_ih=w_ih, b_ih=b_ih, b_hh=b_hh,
                       w_hh=np.ascontiguousarray(w_hh), w_hh_t=np.ascontiguousarray(w_hh.T),
                       ln=(ln_ih, ln_hh), tiles=tiles)
    if w_ih.dtype != np.float32 or not reset_after:
        # float32 keeps off BLAS, as the tiled loops do: its products run on Numba's
        # threads (products.product_for's reasons)
        w_ih, w_hh, b_ih, b_hh = writable(w_ih, w_hh, b_ih, b_hh)
        w_rz, w_n = w_hh[:2 * H], w_hh[2 * H:]
        tiles = None if w_ih.dtype != np.float32 else dict(
            w_rz=in_blocks(w_rz.T), w_n=in_blocks(w_n.T), w_rz_bwd=in_blocks(w_rz),
            w_n_bwd=in_blocks(w_n))
        return BlasGRU(H=H, reset_after=bool(reset_after), acts=acts, w_ih=w_ih,
                       tiles=tiles, b_ih=b_ih, b_hh=b_hh, w_rz=np.ascontiguousarray(w_hh[:2 * H]),
                       w_n=np.ascontiguousarray(w_hh[2 * H:]),
                       w_rz_t=np.ascontiguousarray(w_hh[:2 * H].T),
                       w_n_t=np.ascontiguousarray(w_hh[2 * H:].T))
    Hp = -(-H // U) * U
    cols = _gate_columns(H)
    return TiledGRU(H=H, Hp=Hp, cols=cols, acts=acts,
                    b_in=tiled_bias(b_ih, cols, 3 * Hp), b_rec=tiled_bias(b_hh, cols, 3 * Hp),
                    **tiled_weights(w_ih, w_hh, cols, 3 * Hp, Hp))


def gru_forward_cpu(x, packed, h0, lengths=None, reverse=False, training=False, h_mask=None,
                    zone_h=None, plan=None):
    """One GRU layer and direction on the CPU.

    x: [T,B,I] C-contiguous; packed: pack_gru_cpu(...) of the same dtype;
    h0: [B,H]; lengths: [B] ints in [0, T], or None for all T; h_mask: None, or
    [B,H] multiplying h wherever W_hh reads it (recurrent dropout,
    reference.gru_forward_ref); zone_h: None, or zoneout's weights [T,B,H] (or
    [1,B,H], the same at every step; reference.gru_forward_ref); plan: how the
    float32 loops run (a plan.Plan; by default forward_plan's).
    Returns y [T,B,H], h_n [B,H] and, when training, the cache that
    gru_backward_cpu consumes (else None); the backward runs the same plan.
    """
    T, B, I = x.shape
    H = packed.H
    lens = lengths_or_full(lengths, T, B)
    if packed.kind == "norm":
        return forward_norm_wrap(x, packed, h0, lens, reverse, training, h_mask, zone_h)
    if packed.kind == "blas":
        xw = blas_projection(x, packed.w_ih, packed.b_ih)
        h = h0.copy()
        y = np.empty((T, B, H), x.dtype)
        hn = np.empty((T, B, H) if training else (1, 1, 1), x.dtype)
        mask = np.zeros((0, 0), x.dtype) if h_mask is None else np.ascontiguousarray(h_mask)
        zh = zone_weights(zone_h, H, x.dtype)
        forward_blas(xw, packed.w_rz_t, packed.w_n_t, packed.b_hh, mask, h, lens,
                      reverse, training, packed.reset_after, y, hn, packed.acts,
                      step_tiles(packed, B, "w_rz", "w_n"), zh)
        y_out, h0_kept = y, h0
    else:
        Hp = packed.Hp
        hbuf, y = state_buffers(h0, T, Hp)
        hn = aligned_empty((T, B, Hp) if training else (1, 1, 1))
        rec = aligned_empty((B, 3 * Hp))
        if plan is None:
            plan = forward_plan(x.shape, packed, training)
        rows = plan.rows
        P = plan.threads if rows else plan.units_threads(Hp // U)
        mask, hmbuf = mask_buffers(h_mask, hbuf)
        zh = zone_weights(zone_h, Hp, np.float32)

        def run(xw, t0, t1):  # training runs all steps in one chunk, so hn needs no slice
            loop = forward_rows if rows else forward_tiled
            loop(xw, packed.w_fwd, packed.b_rec, hbuf, hmbuf, mask, y[t0:t1], hn, rec,
                 lens - t0, reverse, training, P, packed.acts,
                 zh if zh.shape[0] == 1 else zh[t0:t1], plan.gate)
            if (t1 - t0) & 1 and h_mask is not None:  # as run_in_chunks moves hbuf
                hmbuf[0] = hmbuf[1]

        xw = run_in_chunks(x, packed.w_in, packed.b_in, 3 * Hp, hbuf, reverse,
                           T if training else plan.chunk, run)
        y_out, h = unpadded(y, hbuf, H)
        h0_kept = pad_units(h0, Hp) if training else None
    if not training:
        return y_out, h, None
    cache = dict(x=x, h0=h0_kept, lengths=lens, reverse=reverse, gates=xw, hn=hn, y=y,
                 mask=mask, zh=zh, plan=plan)
    return y_out, h, cache


def gru_step_cpu(x, packed, h):
    """One inference step, for streaming: x [B,I], h [B,H] -> h' [B,H] (a new
    array). Equal to gru_forward_cpu on one step, as one compiled call
    (gru_forward_into): on one thread unless plan.step_splits; the loops it lacks
    take a one-step forward on the plan's threads."""
    B, H = x.shape[0], packed.H
    y, h_new = np.empty((1, B, H), np.float32), np.empty((B, H), np.float32)
    if gru_forward_into(x[None], packed, np.ascontiguousarray(h), y, h_new):
        return h_new
    # (a one-step forward: the thread policy's)
    return thread_policy(gru_forward_cpu, x[None], packed, h)[1]


def _split_step(x, packed, h, h_out):
    """gru_tiled.step_split on Numba's threads (thread_policy sets them for the call)."""
    step_split(x, packed.w_in, packed.b_in, packed.w_fwd, packed.b_rec, h, h_out, packed.Hp,
               numba_threads(), NO_MASK, packed.acts, NO_ZONE[np.dtype(np.float32)][0],
               POLICY.gate())


def gru_forward_into(x, packed, h, y, h_out):
    """An inference forward from Python as one compiled call, into the caller's arrays:
    x [T,B,I] and the state h [B,H] (read only) -> y [T,B,H] and the last state
    h_out [B,H], all C-contiguous float32; no lengths. It runs on one thread
    (plan.runs_alone), except a large streamed step (T=1, plan.step_splits), which
    shares its units among the thread policy's threads in one parallel region.
    Returns False, writing nothing, where gru_forward_cpu (or gru_step_cpu) would
    take more threads or another loop (kernels/table.py: forward_into)."""
    T, B, I = x.shape
    route = into_route(T, B, I, packed.Hp, 3) if packed.kind == "tiled" else 0
    if route > 0:
        steps_state(x, packed.w_in, packed.b_in, packed.w_fwd, packed.b_rec, h, y, h_out,
                    packed.Hp, route, NO_MASK, packed.acts, NO_ZONE[np.dtype(np.float32)][0])
    elif route == SPLIT:
        serialised(thread_policy, _split_step, x[0], packed, h, h_out)
        y[0] = h_out
    return route != 0


def gru_backward_cpu(dy, dh_n, cache, packed):
    """Backward of gru_forward_cpu; consumes (overwrites) the cache's gates and hn.

    dy: [T,B,H]; dh_n: [B,H]; packed: the weights the forward used.
    Returns dx [T,B,I], dh0 [B,H] and {"w_ih", "w_hh", "b_ih", "b_hh"} in
    torch's layout.
    """
    if packed.kind == "norm":
        return backward_norm_wrap(dy, dh_n, cache, packed)
    if packed.kind == "blas":
        return backward_blas_wrap(dy, dh_n, cache, packed)
    x, y, h0, lens = cache["x"], cache["y"], cache["h0"], cache["lengths"]
    dg, hn, reverse = cache["gates"], cache["hn"], cache["reverse"]
    T, B, _ = x.shape
    Gp, Hp = dg.shape[2], y.shape[2]
    dh_np = pad_units(dh_n, Hp)
    carry = aligned_empty((B, Hp))
    carry[:] = 0
    rec = aligned_empty((B, Hp))
    plan = cache["plan"]
    rows = plan.rows
    P = plan.threads if rows else plan.units_threads(Hp // U)
    mask, zh = cache["mask"], cache["zh"]
    # zoneout's scratch: the parts of dh kept and passed to the gates, and zeros
    dhz, kept, zb = ((np.zeros((B, Hp), np.float32) for _ in range(3)) if zh.shape[2] else
                     (NO_ARRAY,) * 3)
    # dG's and dn's rows in the weight gradients' layout (gate_blocks), which the
    # rows split writes as it goes
    store = np.empty((4, Hp // U, T * B, U), np.float32)
    if rows:
        backward_rows(dg, hn, y, h0, pad_units(dy, Hp), packed.w_bwd, rec, carry, dh_np, lens,
                       reverse, P, mask, packed.acts, zh, dhz, kept, zb, store,
                       plan.gate)
    else:
        backward_tiled(dg, hn, y, h0, pad_units(dy, Hp), packed.w_bwd, rec, carry, dh_np, lens,
                        reverse, P, mask, packed.acts, zh, dhz, kept, zb, plan.gate)
        serial_if(dg.size <= SMALL_REGION, gate_blocks, dg.reshape(T * B, Gp),
                  hn.reshape(T * B, Hp), store)
    dh0 = first_step_dh(dg, lens, reverse, packed.w_bwd)
    if mask.shape[0] > 0:  # W_hh read h times the recurrent dropout mask
        dh0 *= mask
    dh0 += carry
    empty = lens == 0
    dh0[empty] = dh_np[empty]
    dg2, dn = dg.reshape(T * B, Gp), hn.reshape(T * B, Hp)
    grads = _weight_gradients(store, x, y, h0, first_forward_steps(lens, reverse), mask, reverse,
                              packed.H)
    # dx reads dG_ih, which differs from dG_hh in the n gate only: dn for dn * r.
    nk = Hp // U
    dg2.reshape(T * B, nk, 3, U)[:, :, 2] = dn.reshape(T * B, nk, U)
    dx = input_gradient(dg2, packed.w_dx).reshape(T, B, -1)[:, :, :x.shape[2]]
    return np.ascontiguousarray(dx), np.ascontiguousarray(dh0[:, :packed.H]), grads


def _weight_gradients(store, x, y, h0, first_steps, mask, reverse, H):
    """{"w_ih", "w_hh", "b_ih", "b_hh"} in torch's layout from the gate gradients
    in gate_blocks's layout (store [4, Hp/U, T*B, U]: [dn*r | dr | dz | dn]), the
    forward's x, y and h0 [B,Hp], each row's first step in the forward's order
    and the recurrent dropout mask ([B,Hp] or [0,0]).

    gradients.weight_gradients's products, dW^T = X^T @ dG, with the gate gradients
    re-laid in the products' blocked layout gate by gate, so that W_hh's product
    reads the store's first three gates (columns n, r, z) and W_ih's its last
    three (r, z, n), without a copy. Measured on 2 Zen 4 cores at T=128, B=128,
    I=H=256 against transposing dG and dn (both ways with products.transpose's
    256 x 8 tiles), median of 7: the training step 226 -> 212 ms (217 with
    gate_blocks a pass of its own rather than in the loop)."""
    _, nk, M, _ = store.shape
    Hp = nk * U
    gate, unit = np.divmod(np.arange(3 * H), H)
    return weight_gradients(
        store[1:].reshape(3 * nk, M, U), x, y, h0, first_steps, mask, reverse,
        gate * Hp + unit, H, hh=(store[:3].reshape(3 * nk, M, U), (gate + 1) % 3 * Hp + unit))
