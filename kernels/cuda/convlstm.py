"""CUDA kernels of the ConvLSTM layer (reference: reference.convlstm_forward_ref and
convlstm_backward_ref; tests: tests/kernels/test_cuda_convlstm.py).

Direct convolutions, one thread an output element, one launch a step (phase):
    _forward_step    thread (p, u): the four gates' sums over both receptive
                     fields, the gate math, the new c and h of pixel p, unit u
    _gates_backward  thread (p, u): the gate gradients dz of step t
    _dh_backward     thread (q, f): dh of the step before, the sum over the output
                     pixels whose receptive fields hold q (the transpose as a
                     gather: no two threads write one element)
    _dx              thread (t, pixel, i): dx, the same gather for the input
                     convolution (strided, dilated)
    _dw              thread (o, c, ky, kx): a weight's gradient, summed over T*N
This is the plain form (no shared-memory tiling, no persistent grid): correct on
any grid size, the simulator included, and the place a tiled version starts from.

Layout as the CPU kernels' (kernels/cpu/convlstm.py): pixel-major x [T,B*R*C,I],
states [N,F] (N = B*Ro*Co); weights as the layer keeps them, w_ih [4F,I,kh,kw],
w_hh [4F,F,kh,kw], b [4F]; gates and dz [T,N,4F] in torch's gate order; geo as
kernels/conv.py describes it.
"""
import numpy as np
from numba import cuda

from ..conv import convlstm_convs
from ..gates import dsigmoid, dtanh, sigmoid, tanh
from .common import (as_device, column_sums, copy, device_array, flat_launch, is_device,
                     ones)


@cuda.jit
def _forward_step(x, w_ih, w_hh, b, gx, gh, h, mask, c, lengths, t, training, h_next, y,
                  gates, cs, hs):
    """Step t: x [T,B*R*C,I]; h [N,F] (the state entering), mask [N,F] (ones when no
    recurrent dropout); c [N,F] updated in place; writes h_next [N,F], y[t] and,
    when training, gates[t] (activated), cs[t] and hs[t] (h * mask, what entered the
    recurrent convolution)."""
    idx = cuda.grid(1)
    N, F = h.shape
    if idx >= N * F:
        return
    p, u = idx // F, idx % F
    Ro, Co = gx[10], gx[11]
    bi = p // (Ro * Co)
    yo, xo = (p % (Ro * Co)) // Co, p % Co
    if training:
        hs[t, p, u] = h[p, u] * mask[p, u]
    if t >= lengths[bi]:  # past the row's length: state held, y = 0
        h_next[p, u] = h[p, u]
        y[t, p, u] = 0
        if training:
            for g in range(4):
                gates[t, p, g * F + u] = 0
            cs[t, p, u] = c[p, u]
        return
    z0 = b[u]
    z1 = b[F + u]
    z2 = b[2 * F + u]
    z3 = b[3 * F + u]
    I, R, C = gx[12], gx[8], gx[9]
    for ky in range(gx[0]):
        yy = yo * gx[2] + ky * gx[4] - gx[6]
        for kx in range(gx[1]):
            xx = xo * gx[3] + kx * gx[5] - gx[7]
            if 0 <= yy < R and 0 <= xx < C:
                src = (bi * R + yy) * C + xx
                for i in range(I):
                    v = x[t, src, i]
                    z0 += v * w_ih[u, i, ky, kx]
                    z1 += v * w_ih[F + u, i, ky, kx]
                    z2 += v * w_ih[2 * F + u, i, ky, kx]
                    z3 += v * w_ih[3 * F + u, i, ky, kx]
    for ky in range(gh[0]):
        yy = yo + ky - gh[6]
        for kx in range(gh[1]):
            xx = xo + kx - gh[7]
            if 0 <= yy < Ro and 0 <= xx < Co:
                q = (bi * Ro + yy) * Co + xx
                for f in range(F):
                    v = h[q, f] * mask[q, f]
                    z0 += v * w_hh[u, f, ky, kx]
                    z1 += v * w_hh[F + u, f, ky, kx]
                    z2 += v * w_hh[2 * F + u, f, ky, kx]
                    z3 += v * w_hh[3 * F + u, f, ky, kx]
    i_, f_, g_, o_ = sigmoid(z0), sigmoid(z1), tanh(z2), sigmoid(z3)
    cn = f_ * c[p, u] + i_ * g_
    hn = o_ * tanh(cn)
    c[p, u] = cn
    h_next[p, u] = hn
    y[t, p, u] = hn
    if training:
        gates[t, p, u] = i_
        gates[t, p, F + u] = f_
        gates[t, p, 2 * F + u] = g_
        gates[t, p, 3 * F + u] = o_
        cs[t, p, u] = cn


@cuda.jit
def _gates_backward(dy, gates, cs, c0, lengths, HW, t, dh, dc, dz):
    """Step t's gate gradients: dz[t] [N,4F] from dh, dc [N,F] (dc updated in place
    to the step before's; zero dz past a row's length, dc held)."""
    idx = cuda.grid(1)
    N, F = dh.shape
    if idx >= N * F:
        return
    p, u = idx // F, idx % F
    if t >= lengths[p // HW]:
        for g in range(4):
            dz[t, p, g * F + u] = 0
        return
    i, f = gates[t, p, u], gates[t, p, F + u]
    g, o = gates[t, p, 2 * F + u], gates[t, p, 3 * F + u]
    c_prev = cs[t - 1, p, u] if t > 0 else c0[p, u]
    tc = tanh(cs[t, p, u])
    d_h = dh[p, u] + dy[t, p, u]
    d_c = dc[p, u] + d_h * o * dtanh(tc)
    dz[t, p, u] = d_c * g * dsigmoid(i)
    dz[t, p, F + u] = d_c * c_prev * dsigmoid(f)
    dz[t, p, 2 * F + u] = d_c * i * dtanh(g)
    dz[t, p, 3 * F + u] = d_h * tc * dsigmoid(o)
    dc[p, u] = d_c * f


@cuda.jit
def _dh_backward(dz, w_hh, gh, mask, lengths, t, zero, dh, dh_next):
    """dh_next [N,F]: dh of the step before step t, W_h's transpose applied to dz[t]
    (times the mask); past a row's length dh passes unchanged."""
    idx = cuda.grid(1)
    N, F = dh.shape
    if idx >= N * F:
        return
    q, f = idx // F, idx % F
    Ro, Co = gh[10], gh[11]
    bi = q // (Ro * Co)
    if t >= lengths[bi]:
        dh_next[q, f] = dh[q, f]
        return
    yq, xq = (q % (Ro * Co)) // Co, q % Co
    G = dz.shape[2]
    s = zero
    for ky in range(gh[0]):
        yo = yq - ky + gh[6]
        for kx in range(gh[1]):
            xo = xq - kx + gh[7]
            if 0 <= yo < Ro and 0 <= xo < Co:
                p = (bi * Ro + yo) * Co + xo
                for o in range(G):
                    s += dz[t, p, o] * w_hh[o, f, ky, kx]
    dh_next[q, f] = s * mask[q, f]


@cuda.jit
def _dx(dz, w_ih, gx, zero, dx):
    """dx [T,B*R*C,I]: the input convolution's transpose of dz, as a gather."""
    idx = cuda.grid(1)
    T, NX, I = dx.shape
    if idx >= T * NX * I:
        return
    t, rem = idx // (NX * I), idx % (NX * I)
    pix, i = rem // I, rem % I
    R, C, Ro, Co = gx[8], gx[9], gx[10], gx[11]
    bi, r, col = pix // (R * C), (pix % (R * C)) // C, pix % C
    G = dz.shape[2]
    s = zero
    for ky in range(gx[0]):
        num = r + gx[6] - ky * gx[4]
        if num < 0 or num % gx[2] != 0 or num // gx[2] >= Ro:
            continue
        yo = num // gx[2]
        for kx in range(gx[1]):
            numx = col + gx[7] - kx * gx[5]
            if numx < 0 or numx % gx[3] != 0 or numx // gx[3] >= Co:
                continue
            p = (bi * Ro + yo) * Co + numx // gx[3]
            for o in range(G):
                s += dz[t, p, o] * w_ih[o, i, ky, kx]
    dx[t, pix, i] = s


@cuda.jit
def _dw(dz, src, geo, zero, dw):
    """dw [G,ch,kh,kw] = sum over t and output pixels p of dz[t,p,o] times the source
    value under tap (ky, kx) of p, channel c (src [T,pixels,ch]: x, or the h that
    entered each step)."""
    idx = cuda.grid(1)
    G, ch, kh, kw = dw.shape
    if idx >= G * ch * kh * kw:
        return
    o, rem = idx // (ch * kh * kw), idx % (ch * kh * kw)
    c, rem = rem // (kh * kw), rem % (kh * kw)
    ky, kx = rem // kw, rem % kw
    T, N = dz.shape[0], dz.shape[1]
    R, C, Ro, Co = geo[8], geo[9], geo[10], geo[11]
    s = zero
    for t in range(T):
        for p in range(N):
            bi, yo, xo = p // (Ro * Co), (p % (Ro * Co)) // Co, p % Co
            yy = yo * geo[2] + ky * geo[4] - geo[6]
            xx = xo * geo[3] + kx * geo[5] - geo[7]
            if 0 <= yy < R and 0 <= xx < C:
                s += dz[t, p, o] * src[t, (bi * R + yy) * C + xx, c]
    dw[o, c, ky, kx] = s


def _host_or_device(like_device, a):
    return a if like_device else a.copy_to_host()


def convlstm_forward_cuda(x, w_ih, w_hh, b, h0, c0, lengths=None, h_mask=None,
                          strides=(1, 1), padding="valid", dilation=(1, 1), training=False):
    """x [T,B,R,C,I] (host or device) -> y [T,B,Ro,Co,F], h_n, c_n (device arrays for
    a device x, NumPy otherwise) and the cache convlstm_backward_cuda reads (None
    unless training). Weights as the layer keeps them (host or device)."""
    on_device = is_device(x)
    x = as_device(x)
    T, B = x.shape[:2]
    F = w_hh.shape[1]
    gx, gh = convlstm_convs(w_ih.shape[2:], w_hh.shape[2:], F, x.shape, strides, padding,
                            dilation)
    Ro, Co = int(gx[10]), int(gx[11])
    N, dtype = B * Ro * Co, x.dtype
    xs = x.reshape(T, B * x.shape[2] * x.shape[3], x.shape[4])
    w_ih, w_hh, b = as_device(w_ih), as_device(w_hh), as_device(b)
    lengths = cuda.to_device(np.full(B, T, np.int64) if lengths is None
                             else np.asarray(lengths, np.int64))
    mask = as_device(np.ones((N, F), dtype) if h_mask is None
                     else np.asarray(h_mask, dtype).reshape(N, F))
    h, c = _fresh(h0, N, F, dtype), _fresh(c0, N, F, dtype)
    c0_saved = _fresh(c0, N, F, dtype) if training else None  # (c changes in place)
    h_next = device_array((N, F), dtype)
    y = device_array((T, N, F), dtype)
    saved = (T, N) if training else (1, 1)
    gates, cs, hs = (device_array(saved + (4 * F,), dtype), device_array(saved + (F,), dtype),
                     device_array(saved + (F,), dtype))
    gxd, ghd = cuda.to_device(gx), cuda.to_device(gh)
    launch = flat_launch(N * F)
    for t in range(T):
        _forward_step[launch](xs, w_ih, w_hh, b, gxd, ghd, h, mask, c, lengths, t, training,
                              h_next, y, gates, cs, hs)
        h, h_next = h_next, h
    grid = (B, Ro, Co, F)
    cache = dict(x=xs, x_shape=x.shape, w=(w_ih, w_hh), convs=(gxd, ghd), lengths=lengths,
                 mask=mask, c0=c0_saved, gates=gates, cs=cs, hs=hs, grid=grid,
                 on_device=on_device) if training else None
    out = [_host_or_device(on_device, a) for a in (y, h, c)]
    return (out[0].reshape((T,) + grid), out[1].reshape(grid), out[2].reshape(grid), cache)


def _fresh(a, N, F, dtype):
    """A new device array [N,F] holding a (host or device, of N*F elements)."""
    if is_device(a):
        return copy(as_device(a).reshape(N * F), device_array(N * F, dtype)).reshape(N, F)
    return cuda.to_device(np.array(a, dtype).reshape(N, F))


def convlstm_backward_cuda(dy, dh_n, dc_n, cache):
    """Backward of convlstm_forward_cuda(training=True): dy [T,B,Ro,Co,F], dh_n,
    dc_n [B,Ro,Co,F] -> dict of dx [T,B,R,C,I], dw_ih, dw_hh, db [4F], dh0, dc0
    (device arrays when the forward's x was one)."""
    gates, grid, (w_ih, w_hh) = cache["gates"], cache["grid"], cache["w"]
    gxd, ghd = cache["convs"]
    T, N, G = gates.shape
    F, dtype = G // 4, gates.dtype
    zero = dtype.type(0)
    dy = (as_device(dy) if is_device(dy) else cuda.to_device(
        np.ascontiguousarray(dy, dtype))).reshape(T, N, F)
    dh, dc = _fresh(dh_n, N, F, dtype), _fresh(dc_n, N, F, dtype)
    dh_next = device_array((N, F), dtype)
    dz = device_array((T, N, G), dtype)
    HW = grid[1] * grid[2]
    launch = flat_launch(N * F)
    for t in range(T - 1, -1, -1):
        _gates_backward[launch](dy, gates, cache["cs"], cache["c0"], cache["lengths"], HW,
                                t, dh, dc, dz)
        _dh_backward[launch](dz, w_hh, ghd, cache["mask"], cache["lengths"], t, zero, dh,
                             dh_next)
        dh, dh_next = dh_next, dh
    x = cache["x"]
    dx = device_array(x.shape, dtype)
    _dx[flat_launch(dx.size)](dz, w_ih, gxd, zero, dx)
    dw_ih, dw_hh = device_array(w_ih.shape, dtype), device_array(w_hh.shape, dtype)
    _dw[flat_launch(dw_ih.size)](dz, x, gxd, zero, dw_ih)
    _dw[flat_launch(dw_hh.size)](dz, cache["hs"], ghd, zero, dw_hh)
    db = column_sums(dz.reshape(T * N, G), device_array(G, dtype), ones(T * N, dtype))
    out = dict(dx=dx.reshape(cache["x_shape"]), dw_ih=dw_ih, dw_hh=dw_hh, db=db,
               dh0=dh.reshape(grid), dc0=dc.reshape(grid))
    out = {k: _host_or_device(cache["on_device"], v) for k, v in out.items()}
    return out
