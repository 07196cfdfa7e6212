"""The optimizers' compiled passes (kernels/cpu/optim.py) against the NumPy
operations they replace: Adam's update with contiguous arrays runs the kernel,
the same update with strided arrays runs NumPy; the two must agree bit for bit."""
import numpy as np
import pytest

from numlstm.kernels.cpu.optim import sum_of_squares
from numlstm.optim import Adam, AdamW


def _strided(a):
    """A copy of a as a non-contiguous view (every other element of a wider array)."""
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    wide[..., ::2] = a
    return wide[..., ::2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opt", [Adam(lr=3e-3), Adam(lr=1e-2, weight_decay=0.1, eps=1e-6),
                                 AdamW(lr=2e-3, betas=(0.8, 0.99)),
                                 AdamW(lr=1e-2, weight_decay=0.0)],
                         ids=["adam", "adam-l2", "adamw", "adamw-no-decay"])
@pytest.mark.parametrize("shape", [(2,), (7, 3), (2, 5, 129)])
def test_adam_kernel_equals_numpy_bit_for_bit(rng, dtype, opt, shape):
    fast, slow = type(opt)(**_args(opt)), type(opt)(**_args(opt))
    p = rng.standard_normal(shape).astype(dtype)
    p_fast, p_slow = p.copy(), _strided(p)
    assert p_fast.flags.c_contiguous and not p_slow.flags.c_contiguous
    for _ in range(4):
        g = rng.standard_normal(shape).astype(dtype)
        fast.step([("p", p_fast, g.copy())])
        slow.step([("p", p_slow, _strided(g))])
    np.testing.assert_array_equal(p_fast, p_slow)
    for slot in ("exp_avg", "exp_avg_sq"):
        np.testing.assert_array_equal(fast.state["p"][slot], slow.state["p"][slot])
    assert not np.array_equal(p_fast, p)  # (it did move)


def _args(opt):
    return dict(lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 17, 100_003])
def test_sum_of_squares_in_float64(rng, dtype, size):
    a = (rng.standard_normal(size) * 1e3).astype(dtype)
    want = float(np.square(a, dtype=np.float64).sum())
    assert sum_of_squares(a) == pytest.approx(want, rel=1e-13)
