"""The sequence helpers of the CPU kernels: lengths, masks, zoneout weights, state
buffers and padding, shared by the LSTM, GRU and RNN.

Dimensions: T steps, B batch, H hidden units, Hp padded to the kernels' block.
A row b is valid at steps t < lengths[b]; past it the state is held and the
output is zero; the reverse direction starts at its last valid step.
"""
import numpy as np
from numba import njit

from .jit import BORROW, FAST


@njit(inline="always", **FAST)
def step_before(seq, first, reverse, t):
    """seq [T,B,N] at the step before t in the forward's order, or first [B,N] where t
    is the first step (the backward's gate gradients read a row's initial state at
    its first step in any case): the cell states for the LSTM, the outputs for the
    GRU."""
    if reverse:
        return seq[t + 1] if t + 1 < seq.shape[0] else first
    return seq[t - 1] if t > 0 else first


def mask_buffers(h_mask, hbuf):
    """The tiled loops' recurrent dropout arguments: the mask padded to hbuf's units
    and the double buffer of h * mask the products read (h0's in its first half);
    for h_mask None, an empty mask and hbuf itself (unread)."""
    if h_mask is None:
        return NO_MASK, hbuf
    mask = pad_units(h_mask.astype(np.float32), hbuf.shape[2])
    hmbuf = np.empty_like(hbuf)
    hmbuf[0] = hbuf[0] * mask
    return mask, hmbuf


@njit(**BORROW)
def copy_units(src, dst, H):
    """dst[:, :H] = src[:, :H] for [B,*] arrays (the state in and out of the padded
    buffers of the one-thread loops, steps_state)."""
    for r in range(dst.shape[0]):
        for j in range(H):
            dst[r, j] = src[r, j]


def lengths_or_full(lengths, T, B):
    if lengths is None:
        return np.full(B, T, np.int64)
    return np.ascontiguousarray(lengths, dtype=np.int64)


# Stand-ins for the arrays of an option not in use (read by no kernel): made once,
# since at B=1 a call's few microseconds of allocations show.
NO_ARRAY = np.zeros((1, 1), np.float32)
NO_MASK = np.zeros((0, 0), np.float32)  # (a recurrent dropout mask of size 0: none)
NO_ZONE = {np.dtype(d): np.ones((1, 1, 0), d) for d in (np.float32, np.float64)}


def zone_weights(zone, width, dtype):
    """Zoneout's weights of one state for the kernels, padded to `width` units, or
    [1,1,0] meaning none (no unit: H = 1 is a real width, on the unpadded paths)."""
    if zone is None:
        return NO_ZONE[np.dtype(dtype)]
    return pad_units(np.asarray(zone).astype(dtype, copy=False), width)


def first_forward_steps(lens, reverse):
    """Each row's first step in the forward's order (the one that read h0)."""
    return np.clip(lens - 1, 0, None) if reverse else np.zeros(len(lens), np.int64)


def first_step_gradients(dg, lens, reverse):
    """dG at each row's first forward step (the one that read h0), zero for rows
    of length 0, and the mask of those rows."""
    B = dg.shape[1]
    dg_first = dg[first_forward_steps(lens, reverse), np.arange(B)]
    empty = lens == 0
    dg_first[empty] = 0
    return dg_first, empty


def writable(*arrays):
    """The arrays, each copied if it is read-only (None stays None). Numba's array
    types carry the flag, so a layer's parameters (read-only between updates) would
    compile every loop that takes them as they are a second time, beside the
    writable arrays of everything else (62 s of the test suite's compiling)."""
    return tuple(a if a is None or a.flags.writeable else a.copy() for a in arrays)


LINE = 64  # bytes in a cache line


def aligned_empty(shape, dtype=np.float32):
    """An uninitialised array starting on a cache line. The buffers that the
    threads of a step write share rows, split at multiples of CB floats; aligned,
    no line holds two threads' parts (measured at B=128, H=128 on two threads: a
    GRU step took 110 us aligned, 123-137 us at NumPy's 16 bytes). The weights in
    blocks too (products.in_blocks): at NumPy's 16 bytes every vector of W that a
    product loads spans two lines."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    buf = np.empty(n + LINE // dtype.itemsize, dtype)
    start = (-buf.ctypes.data % LINE) // dtype.itemsize
    return buf[start:start + n].reshape(shape)


def state_buffers(h0, T, Hp):
    """The tiled loop's h buffers [2,B,Hp], h0 (padded) in the first, and y [T,B,Hp]."""
    B, H = h0.shape
    hbuf = aligned_empty((2, B, Hp))
    hbuf[:] = 0
    hbuf[0, :, :H] = h0
    return hbuf, aligned_empty((T, B, Hp))


def unpadded(y, hbuf, H):
    """y [T,B,Hp] and the final state hbuf[0] cut to H units: y_out, h_n."""
    y_out = y if y.shape[2] == H else np.ascontiguousarray(y[:, :, :H])
    return y_out, hbuf[0, :, :H].copy()


def pad_units(a, Hp):
    """[..., H] -> [..., Hp] with zeros (the array itself when H == Hp)."""
    H = a.shape[-1]
    if H == Hp:
        return np.ascontiguousarray(a)
    out = np.zeros(a.shape[:-1] + (Hp,), a.dtype)
    out[..., :H] = a
    return out
