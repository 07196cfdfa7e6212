"""The gradients made after a backward time loop, shared by the cells: the weight
gradients as products over all T*B rows (computed transposed, dW^T = X^T @ dG),
dx, W_hh's part of dh0, and the peepholes' sums over steps and rows.

Dimensions: T steps, B batch, I inputs, Hp padded hidden units, Gp padded gate
columns; dG: the pre-activation gradients [T,B,Gp] the loop wrote.
"""
import numpy as np

from .microkernel import CB
from .plan import SMALL_COPY
from .products import matmul, padded_cols, product_for, transpose_into, untile
from .sequence import first_forward_steps, first_step_gradients, pad_units
from .threads import SMALL_REGION, serial_if


def weight_gradients(dgb, x, y, h0, first_steps, mask, reverse, cols, n_h, hh=None,
                     small_copy=SMALL_COPY):
    """{"w_ih", "w_hh", "b_ih", "b_hh"} in torch's layout from the gate gradients
    dgb [Gp/CB, T*B, CB] (copy_to_blocks's layout), the inputs x [T,B,I] and outputs
    y [T,B,Hp] of the forward, h0 [B,n_h], each row's first step in the forward
    (the one that read h0) and the recurrent dropout mask ([B,Hp], or [0,0]);
    cols[j]: the column of dgb's product that holds torch's row j; n_h: the units
    of h that W_hh reads (P with a projection). hh: None, or (dgb_hh, cols_hh)
    where W_hh's gate gradients differ from W_ih's (the GRU's n gate): W_hh's
    product then reads dgb_hh, and its bias gradient comes from a row of ones
    under h. small_copy: copies of at most this many elements use NumPy.

    Computed transposed, dW^T = X^T @ dG, with dG as the products' blocked second
    operand: the rows are I + 1 (the bias: a row of ones) and Hp rather than Gp,
    so I is not padded to a block, and only x and y (a quarter of dG's size with
    I = H) are transposed. Measured on 2 cores against dW = dG^T @ X with dG
    transposed: 3.8 -> 2.6 ms at T=64, B=32, I=32, H=128; 137 -> 120 ms at T=128,
    B=128, I=H=256."""
    dgb_hh, cols_hh = (dgb, cols) if hh is None else hh
    Gp = dgb.shape[0] * CB
    zeros = np.zeros((1, Gp), np.float32)
    T, B, I = x.shape
    x_t = np.empty((I + 1, T * B), np.float32)  # x^T and a row of ones
    transpose_into(x.reshape(T * B, I), x_t, 0, x.size <= small_copy)
    x_t[I] = 1
    # [dW_ih^T; db_ih], and dW_hh^T (and db_hh, with hh), in rows of padded_cols
    dw_ih = np.empty((I + 1, padded_cols(Gp)), np.float32)
    matmul(x_t, dgb, dw_ih, zeros, False)
    h_t = transposed_states(y, h0, first_steps, mask, reverse, hh is not None, small_copy)
    dw_hh = np.empty((h_t.shape[0], padded_cols(Gp)), np.float32)
    matmul(h_t, dgb_hh, dw_hh, zeros, False)
    w_ih, w_hh = np.empty((len(cols), I), np.float32), np.empty((len(cols), n_h), np.float32)
    serial_if(w_ih.size <= SMALL_REGION, untile, dw_ih, cols, w_ih)
    serial_if(w_hh.size <= SMALL_REGION, untile, dw_hh, cols_hh, w_hh)
    db = dw_ih[I, cols]
    db_hh = db.copy() if hh is None else dw_hh[-1, cols_hh]
    return dict(w_ih=w_ih, w_hh=w_hh, b_ih=db, b_hh=db_hh)


def transposed_states(y, h0, first_steps, mask, reverse, ones, small_copy=SMALL_COPY):
    """The h entering each step, transposed: [Hp (+ 1 with ones: a row of ones), T*B],
    column t*B + b. That is y [T,B,Hp] at the step before it in the forward's
    order, and h0 [B, <= Hp] at each row's first step (first_steps [B]). Where
    that first step is not the direction's first (the reverse direction, with
    lengths), the slot holds y past the row's length, which is zero. Rows past
    their length meet zero gradients. With recurrent dropout (mask [B,Hp], or
    [0,0] for none), the products read h times the mask. small_copy: as
    weight_gradients's."""
    T, B, Hp = y.shape
    M = T * B
    small = M * Hp <= small_copy  # (NumPy's copies: no parallel region's few microseconds)
    h_t = np.empty((Hp + ones, M), np.float32)
    if reverse:
        transpose_into(y[1:].reshape(-1, Hp), h_t, 0, small)
        h_t[:Hp, M - B:] = 0
    else:
        transpose_into(y[:-1].reshape(-1, Hp), h_t, B, small)
    h_t[:Hp, first_steps * B + np.arange(B)] = pad_units(h0, Hp).T
    if mask.shape[0] > 0:
        h_t[:Hp].reshape(Hp, T, B)[...] *= mask.T[:, None, :]
    if ones:
        h_t[Hp] = 1
    return h_t


def first_step_dh(dg, lens, reverse, w_bwd):
    """W_hh's part of dh0 [B,Hp]: dG [T,B,Gp] at each row's first forward step
    (the one that read h0) @ W_hh (w_bwd, its blocks); zero for rows of length 0.
    (The LSTM's, the GRU's.)"""
    dg_first, _ = first_step_gradients(dg, lens, reverse)
    dh0 = np.empty((dg.shape[1], w_bwd.shape[0] * CB), np.float32)
    matmul(dg_first, w_bwd, dh0, np.zeros((1, dh0.shape[1]), np.float32), False)
    return dh0


def input_gradient(dg2, w_dx):
    """dx [T*B,Ip] = dG [T*B,Gp] @ W_ih (w_dx, its blocks; I padded to Ip): every
    cell's input gradient."""
    dx = np.empty((dg2.shape[0], w_dx.shape[0] * CB), np.float32)
    matmul(dg2, w_dx, dx, np.zeros((1, dx.shape[1]), np.float32), False)
    return dx


def peephole_gradients(dg_i, dg_f, dg_o, cs, czs, c0, lens, reverse, shape):
    """The peephole weights' gradients [3, units] (i, f, o): each gate's dG [T,B,...]
    times the state it read, summed over steps and rows: the state entering the
    step (c0 at a row's first step; czs, the states passed on, elsewhere) for i
    and f, the step's new state cs for o. shape: the gates' views' shape, to
    which the states [T,B,units] are reshaped; a step past a row's length has
    dG zero."""
    T, B = cs.shape[:2]
    c_prev = np.empty_like(czs)
    if reverse:
        c_prev[:-1], c_prev[-1] = czs[1:], c0
    else:
        c_prev[1:], c_prev[0] = czs[:-1], c0
    c_prev[first_forward_steps(lens, reverse), np.arange(B)] = c0
    # (every slot is set: a held step's dG is zero, but zero times stale memory can be NaN)
    c_prev, c_new = c_prev.reshape(shape), cs.reshape(shape)
    dims = "tbkj,tbkj->kj" if len(shape) == 4 else "tbj,tbj->j"
    return np.stack([np.einsum(dims, dg_i, c_prev).reshape(-1),
                     np.einsum(dims, dg_f, c_prev).reshape(-1),
                     np.einsum(dims, dg_o, c_new).reshape(-1)])


def blas_recurrent_gradient(dg, y, h0, lens, reverse):
    """sum over steps of dG[t]^T @ (h entering step t) (products.product_for's products).
    dg [T,B,G] zero past each length; y [T,B,H]; h0 [B,H] -> [G,H]."""
    mm = product_for(dg.dtype)
    dg_first, _ = first_step_gradients(dg, lens, reverse)
    dg_prev, y_prev = (dg[:-1], y[1:]) if reverse else (dg[1:], y[:-1])
    G, H = dg.shape[2], y.shape[2]
    return mm(dg_prev.reshape(-1, G).T, y_prev.reshape(-1, H)) + mm(dg_first.T, h0)
