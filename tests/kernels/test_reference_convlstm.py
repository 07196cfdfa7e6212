"""The ConvLSTM reference (convlstm_forward_ref / convlstm_backward_ref) against
central finite differences in float64, over paddings, strides, dilations, uneven
kernels, lengths and recurrent dropout; and its patches against a direct sum."""
import numpy as np
import pytest

from numlstm.kernels.reference import (conv_geometry, conv_matrix, conv_patches,
                                       convlstm_backward_ref, convlstm_forward_ref)
from helpers import assert_close, convlstm_case, numeric_gradient

CASES = {  # (T, B, R, C, I, F, kernel, strides, dilation, padding, lengths, masked)
    "same-3x3": (3, 2, 5, 4, 2, 2, (3, 3), (1, 1), (1, 1), "same", None, False),
    "valid-strided": (2, 2, 6, 5, 1, 2, (2, 3), (2, 1), (1, 2), "valid", [2, 1], True),
    "same-even-strided": (3, 1, 5, 6, 2, 1, (2, 2), (2, 2), (1, 1), "same", None, True),
    "dilated-lengths": (3, 3, 5, 5, 1, 1, (3, 2), (1, 1), (2, 1), "same", [3, 1, 2], False),
    "1d-T1": (1, 1, 1, 5, 1, 2, (1, 3), (1, 1), (1, 1), "same", None, False),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_convlstm_reference_backward_matches_finite_differences(rng, case):
    T, B, R, C, I, F, kernel, strides, dilation, padding, lengths, masked = case
    args = convlstm_case(rng, T, B, R, C, I, F, kernel, strides, dilation, padding,
                         lengths=lengths, masked=masked)
    y, h, c, cache = convlstm_forward_ref(**args)
    wy, wh, wc = (rng.standard_normal(a.shape) for a in (y, h, c))

    def loss():
        y, h, c, _ = convlstm_forward_ref(**args)
        return (y * wy).sum() + (h * wh).sum() + (c * wc).sum()

    grads = convlstm_backward_ref(wy, wh, wc, cache)
    for name, key in (("x", "dx"), ("w_ih", "dw_ih"), ("w_hh", "dw_hh"), ("b", "db"),
                      ("h0", "dh0"), ("c0", "dc0")):
        assert_close(grads[key], numeric_gradient(loss, args[name]), 1e-7, key, atol=1e-8)
    if lengths is not None:  # a finished sequence writes zeros and keeps its state
        short = int(np.argmin(lengths))
        assert not y[lengths[short]:, short].any()
        assert np.array_equal(h[short], y[lengths[short] - 1, short])


@pytest.mark.parametrize("padding,strides,dilation,kernel", [
    ("valid", (1, 1), (1, 1), (3, 3)), ("same", (2, 3), (1, 1), (2, 3)),
    ("same", (1, 1), (2, 3), (3, 2)), ("valid", (2, 1), (2, 1), (2, 2))])
def test_conv_patches_compute_the_convolution(rng, padding, strides, dilation, kernel):
    """patches @ conv_matrix(w) is the sum over the receptive field, written out."""
    N, R, C, I, O = 2, 7, 6, 3, 4
    x, w = rng.standard_normal((N, R, C, I)), rng.standard_normal((O, I) + kernel)
    geo = [conv_geometry(n, k, s, d, padding)
           for n, k, s, d in zip((R, C), kernel, strides, dilation)]
    out = (geo[0][0], geo[1][0])
    got = conv_patches(x, kernel, strides, dilation, (geo[0][1], geo[1][1]), out) @ \
        conv_matrix(w)
    want = np.zeros((N,) + out + (O,))
    for r in range(out[0]):
        for q in range(out[1]):
            for ky in range(kernel[0]):
                for kx in range(kernel[1]):
                    rr = r * strides[0] + ky * dilation[0] - geo[0][1]
                    cc = q * strides[1] + kx * dilation[1] - geo[1][1]
                    if 0 <= rr < R and 0 <= cc < C:
                        want[:, r, q] += x[:, rr, cc] @ w[:, :, ky, kx].T
    assert_close(got, want, 1e-12, "convolution")
    if padding == "same":  # Keras's "same": ceil(size / stride) outputs
        assert out == (-(-R // strides[0]), -(-C // strides[1]))
