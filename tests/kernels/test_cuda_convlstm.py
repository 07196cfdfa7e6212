"""The ConvLSTM's CUDA kernels against the NumPy reference (forward and backward),
and the layer with backend="cuda" against the CPU backend.

Without a GPU they run in Numba's simulator (tests/conftest.py), so shapes stay
tiny: each case is a few hundred threads a launch.
"""
import numpy as np
import pytest
from helpers import assert_close, convlstm_case

import numlstm
from numlstm.kernels import reference as ref

cuda = pytest.importorskip("numba.cuda")
from numlstm.kernels.cuda.convlstm import (convlstm_backward_cuda,  # noqa: E402
                                           convlstm_forward_cuda)

RTOL = {np.float32: 2e-5, np.float64: 1e-12}
# T, B, R, C, I, F, kernel, strides, dilation, padding, lengths, masked
CASES = {
    "same": (2, 2, 4, 3, 2, 2, (3, 3), (1, 1), (1, 1), "same", None, False),
    "valid-strided-dilated-lengths-mask": (2, 2, 5, 6, 1, 2, (2, 3), (2, 1), (1, 2), "valid",
                                           [2, 1], True),
    "even-strided-T1-B1": (1, 1, 3, 4, 1, 3, (2, 2), (2, 2), (1, 1), "same", None, True),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_cuda_convlstm_matches_reference(rng, case, dtype):
    T, B, R, C, I, F, kernel, strides, dilation, padding, lengths, masked = case
    a = convlstm_case(rng, T, B, R, C, I, F, kernel, strides, dilation, padding,
                      dtype=dtype, lengths=lengths, masked=masked)
    y, h, c, cache = ref.convlstm_forward_ref(**a)
    got = convlstm_forward_cuda(a["x"], a["w_ih"], a["w_hh"], a["b"], a["h0"], a["c0"],
                                a["lengths"], a["h_mask"], a["strides"], a["padding"],
                                a["dilation"], training=True)
    for name, g, w in zip(("y", "h_n", "c_n"), got[:3], (y, h, c)):
        assert_close(g, w, RTOL[dtype], name)
    dy, dh, dc = (rng.standard_normal(v.shape).astype(dtype) for v in (y, h, c))
    want = ref.convlstm_backward_ref(dy, dh, dc, cache)
    grads = convlstm_backward_cuda(dy, dh, dc, got[3])
    for k in want:
        assert_close(grads[k], want[k], RTOL[dtype], k)


def test_cuda_convlstm_device_arrays_in_and_out(rng):
    """A device x gives device results, equal to the host call's."""
    a = convlstm_case(rng, 2, 1, 3, 3, 1, 2, (3, 3), padding="same", dtype=np.float32)
    args = (a["w_ih"], a["w_hh"], a["b"], a["h0"], a["c0"])
    host = convlstm_forward_cuda(a["x"], *args, padding="same")
    dev = convlstm_forward_cuda(cuda.to_device(a["x"]), *args, padding="same")
    assert all(hasattr(v, "copy_to_host") for v in dev[:3])
    for g, w in zip(dev[:3], host[:3]):
        assert np.array_equal(g.copy_to_host(), w)


@pytest.mark.parametrize("cls,shape,options", [
    (numlstm.ConvLSTM2D, (2, 2, 4, 3, 2), dict(kernel_size=3, padding="same")),
    (numlstm.ConvLSTM1D, (2, 2, 5, 2), dict(kernel_size=2, strides=2, padding="valid")),
])
def test_layer_on_cuda_equals_cpu(rng, cls, shape, options):
    x = rng.standard_normal(shape).astype(np.float32)
    lengths = np.array([2, 1])
    results = []
    for backend in ("cpu", "cuda"):
        layer = cls(2, 3, backend=backend, seed=4, recurrent_dropout=0.3, **options)
        y, (h, c) = layer(x, training=True, lengths=lengths)
        dx, (dh0, dc0) = layer.backward(np.ones_like(y), dh_n=h, dc_n=c)
        results.append([y, h, c, dx, dh0, dc0] + [layer.grads[k] for k in sorted(layer.grads)])
    for got, want in zip(*results[::-1]):
        assert isinstance(got, np.ndarray)
        assert_close(got, want, 3e-5)
