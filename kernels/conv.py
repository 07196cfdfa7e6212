"""The geometry of a convolution, shared by the CPU and CUDA ConvLSTM kernels.

A convolution is described by `geo`, int64 [13]: kh, kw, sh, sw, dh, dw (kernel,
strides, dilation), pt, pl (padding before), R, C (source grid), Ro, Co (output
grid), ch (source channels). Output pixel (y, x) reads, under kernel tap (ky, kx),
the source pixel (y*sh + ky*dh - pt, x*sw + kx*dw - pl), or zero outside the grid.
"""
import numpy as np


def conv_geometry(size, k, stride, dilation, padding):
    """(out, pad_before, pad_after) along one axis, Keras's "valid" and "same"
    (out = ceil(size / stride), the odd padding pixel after)."""
    span = (k - 1) * dilation + 1
    if padding == "valid":
        return max(0, (size - span) // stride + 1), 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    return out, total // 2, total - total // 2


def geometry(kernel, strides, dilation, pads, grid, out, channels):
    return np.array(list(kernel) + list(strides) + list(dilation) + list(pads) + list(grid)
                    + list(out) + [channels], np.int64)


def convlstm_convs(kernel, rec_kernel, F, x_shape, strides, padding, dilation):
    """(gx, gh): the input convolution and the recurrent one ("same", stride 1) of a
    ConvLSTM for frames of x_shape [T,B,R,C,I]."""
    R, C, I = x_shape[2:]
    geo = [conv_geometry(n, k, s, d, padding)
           for n, k, s, d in zip((R, C), kernel, strides, dilation)]
    out = (geo[0][0], geo[1][0])
    rec = [conv_geometry(n, k, 1, 1, "same") for n, k in zip(out, rec_kernel)]
    gx = geometry(kernel, strides, dilation, (geo[0][1], geo[1][1]), (R, C), out, I)
    gh = geometry(rec_kernel, (1, 1), (1, 1), (rec[0][1], rec[1][1]), out, out, F)
    return gx, gh
