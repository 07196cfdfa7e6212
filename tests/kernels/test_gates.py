"""The float32 gate math against float64 over the whole float32 range."""
import numpy as np
from numba import njit

from numlstm.kernels import gates
from numlstm.kernels.gates import dsigmoid, dtanh, exp, sigmoid, tanh


@njit(error_model="numpy")
def _apply(x, out):
    for k in range(x.size):
        out[0, k] = exp(x[k])
        out[1, k] = sigmoid(x[k])
        out[2, k] = tanh(x[k])
        out[3, k] = dsigmoid(out[1, k])
        out[4, k] = dtanh(out[2, k])


def _evaluate(x):
    out = np.empty((5, x.size), x.dtype)
    _apply(x, out)
    return out


def test_float32_exp_sigmoid_tanh_within_stated_error():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-87.3, 88.0, 2_000_001),
                        rng.standard_normal(200_000) * 4]).astype(np.float32)
    out = _evaluate(x)
    assert out.dtype == np.float32
    x64 = x.astype(np.float64)
    ref_exp = np.exp(x64)
    exp_err = (np.abs(out[0] - ref_exp) / ref_exp).max()
    sig_err = np.abs(out[1] - 1 / (1 + np.exp(-x64))).max()
    tanh_err = np.abs(out[2] - np.tanh(x64)).max()
    print(f"exp rel {exp_err:.2e}, sigmoid abs {sig_err:.2e}, tanh abs {tanh_err:.2e}")
    assert exp_err <= gates.EXP_F32_MAX_REL_ERR
    assert sig_err <= gates.SIGMOID_F32_MAX_ABS_ERR
    assert tanh_err <= gates.TANH_F32_MAX_ABS_ERR


def test_float32_gates_saturate_without_overflow():
    x = np.array([-1e30, -1000, -100, 100, 1000, 1e30, np.float32(3.4e38)], np.float32)
    out = _evaluate(x)
    assert np.isfinite(out).all()
    # exp saturates at about 1.7e38, so the sigmoid bottoms out near 6e-39, not 0.
    assert (out[1, :3] >= 0).all() and (out[1, :3] < 1e-38).all()
    np.testing.assert_array_equal(out[1, 3:], [1, 1, 1, 1])
    np.testing.assert_array_equal(out[2], [-1, -1, -1, 1, 1, 1, 1])


def test_float64_gates_are_libm_accurate():
    x = np.linspace(-40, 40, 10001)
    out = _evaluate(x)
    np.testing.assert_allclose(out[0], np.exp(x), rtol=1e-15)
    np.testing.assert_allclose(out[1], 1 / (1 + np.exp(-x)), rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(out[2], np.tanh(x), rtol=1e-15)
    np.testing.assert_allclose(out[3], out[1] * (1 - out[1]), rtol=0, atol=1e-16)
    np.testing.assert_allclose(out[4], 1 - out[2] ** 2, rtol=0, atol=1e-15)


def test_float32_gates_propagate_nan_and_saturate_at_infinity():
    out = _evaluate(np.array([np.nan, np.inf, -np.inf], np.float32))
    assert np.isnan(out[:, 0]).all()  # a NaN is never clamped into a number
    np.testing.assert_array_equal(out[1:3, 1], [1, 1])
    np.testing.assert_array_equal(out[2, 1:], [1, -1])


def test_activation_kinds_match_numpy_and_their_derivatives():
    """Each built-in kind, compiled in float32 and float64, against the reference's
    NumPy version; the derivative from the output against a central difference;
    a NaN stays a NaN."""
    from numlstm.kernels.gates import ACTIVATIONS, activate, dactivate
    from numlstm.kernels.reference import activation_grad, apply_activation

    @njit(error_model="numpy")
    def run(kind, x, out, grad):
        for k in range(x.size):
            out[k] = activate(kind, x[k])
            grad[k] = dactivate(kind, out[k])

    for name, kind in ACTIVATIONS.items():
        for dtype, tol in ((np.float32, 3e-7), (np.float64, 1e-15)):
            x = np.concatenate([np.linspace(-8, 8, 1601), [np.nan]]).astype(dtype)
            out, grad = np.empty_like(x), np.empty_like(x)
            run(kind, x, out, grad)
            assert out.dtype == dtype
            want = apply_activation(kind, x.astype(np.float64))
            np.testing.assert_allclose(out[:-1], want[:-1], rtol=0, atol=tol, err_msg=name)
            assert np.isnan(out[-1]), name
            np.testing.assert_allclose(grad[:-1], activation_grad(kind, want[:-1]), atol=2 * tol)
            x64, h = x[:-1].astype(np.float64), 1e-6
            slope = (apply_activation(kind, x64 + h) - apply_activation(kind, x64 - h)) / (2 * h)
            smooth = np.abs(slope - np.roll(slope, 1)) < 1e-3  # away from relu's kinks
            np.testing.assert_allclose(grad[:-1][smooth], slope[smooth], atol=1e-4,
                                       err_msg=name)
            # the plain-Python versions (the CUDA simulator runs them) agree
            py = [gates.activate(kind, float(v)) for v in x64[::50]]
            np.testing.assert_allclose(py, want[:-1][::50], atol=1e-15, err_msg=name)
