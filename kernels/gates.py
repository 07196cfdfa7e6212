"""Scalar gate math shared by every kernel: sigmoid, tanh, relu and their derivatives.

Each function is an @overload, so compiled code calling it gets the version
for its dtype (LLVM inlines them into the gate loops):

* float64 calls libm (math.exp, math.tanh): exact to the last bit or two, which
  the float64 gradient checks rely on.
* float32 uses exp_f32, a branch-free exp made of multiplies, adds, a floor and
  an integer shift, so LLVM vectorises the gate loops that call it (Numba has no
  SVML here, and a scalar libm call per gate cost about four times the
  recurrent matrix product). Measured error against float64 over the whole
  float32 range, tested in tests/kernels/test_gates.py:
      exp_f32:      relative error <= EXP_F32_MAX_REL_ERR
      sigmoid_f32:  absolute error <= SIGMOID_F32_MAX_ABS_ERR
      tanh_f32:     absolute error <= TANH_F32_MAX_ABS_ERR
  (libm's float32 sigmoid and tanh have absolute errors of about 6e-8.)

On the GPU (target "cuda") float32 takes CUDA's own expf and tanhf (libdevice,
a few ulp), which already run at full speed per thread; the polynomial exp
above is a CPU device for vectorising loops, and stays CPU-only.

Callers compile with error_model="numpy": under Numba's default (Python) error
model every division carries a zero check whose branch stops vectorisation
(measured: sigmoid + tanh 10.4 ns per element scalar, 1.5 ns vectorised).

Derivatives take the activation's output, as the backward has it stored:
sigmoid'(a) = s (1 - s), tanh'(a) = 1 - t^2 and relu'(a) = [relu(a) > 0].
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

EXP_F32_MAX_REL_ERR = 3e-7
SIGMOID_F32_MAX_ABS_ERR = 2e-7
TANH_F32_MAX_ABS_ERR = 3e-7

# Cody-Waite split of ln 2 (the high part has few mantissa bits, so n * hi is
# exact), and a degree-6 minimax polynomial of e^r on [-ln2/2, ln2/2]
# (coefficients published with Cephes' expf).
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)
# Inputs are clamped so that 2^n stays a normal float: the results saturate at
# about 1.7e38 and 1.3e-38 instead of overflowing to inf or going subnormal.
_X_HI = np.float32(88.0)
_X_LO = np.float32(-87.3)
_F32_ONE = np.float32(1.0)
_F32_TWO = np.float32(2.0)
_F32_HALF = np.float32(0.5)


@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret the bits of an int32 as a float32 (a no-op for the CPU)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(cache=True)
def exp_f32(x):
    """e^x for float32 x, vectorisable; see the module docstring for its error."""
    x = min(max(x, _X_LO), _X_HI)
    n = np.floor(x * _LOG2E + _F32_HALF)
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO
    p = _P0 * r + _P1
    p = p * r + _P2
    p = p * r + _P3
    p = p * r + _P4
    p = p * r + _P5
    p = p * (r * r) + r + _F32_ONE
    scale = _f32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))
    return p * scale


def exp(a):
    """e^a."""
    return math.exp(a)


def sigmoid(a):
    """1 / (1 + e^-a)."""
    return 1.0 / (1.0 + math.exp(-a))


def tanh(a):
    """tanh(a)."""
    return math.tanh(a)


@overload(exp, target="cpu")
def _exp_impl(a):
    if a == types.float32:
        return lambda a: exp_f32(a)
    if isinstance(a, types.Float):
        return lambda a: math.exp(a)


@overload(sigmoid, target="cpu")
def _sigmoid_impl(a):
    if a == types.float32:
        def impl(a):
            return _F32_ONE / (_F32_ONE + exp_f32(-a))
        return impl
    if isinstance(a, types.Float):
        def impl(a):
            return 1.0 / (1.0 + math.exp(-a))
        return impl


@overload(tanh, target="cpu")
def _tanh_impl(a):
    if a == types.float32:
        def impl(a):
            # 1 - 2 / (e^2a + 1): saturates cleanly at +-1 for large |a|.
            return _F32_ONE - _F32_TWO / (exp_f32(a + a) + _F32_ONE)
        return impl
    if isinstance(a, types.Float):
        def impl(a):
            return math.tanh(a)
        return impl


# The GPU's versions: math.exp and math.tanh in the argument's precision.
@overload(exp, target="cuda")
def _exp_cuda(a):
    if isinstance(a, types.Float):
        return lambda a: math.exp(a)


@overload(sigmoid, target="cuda")
def _sigmoid_cuda(a):
    if isinstance(a, types.Float):
        one = np.float32(1.0) if a == types.float32 else 1.0

        def impl(a):
            return one / (one + math.exp(-a))
        return impl


@overload(tanh, target="cuda")
def _tanh_cuda(a):
    if isinstance(a, types.Float):
        return lambda a: math.tanh(a)


def dsigmoid(s):
    """Derivative of the sigmoid, from its output s: s (1 - s)."""
    return s - s * s


def dtanh(t):
    """Derivative of tanh, from its output t: 1 - t^2."""
    return 1.0 - t * t


# Written as overloads so that no float64 literal promotes float32 arithmetic.
@overload(dsigmoid)
def _dsigmoid_impl(s):
    if isinstance(s, types.Float):
        def impl(s):
            return s - s * s
        return impl


@overload(dtanh)
def _dtanh_impl(t):
    if isinstance(t, types.Float):
        one = np.float32(1.0) if t == types.float32 else 1.0

        def impl(t):
            return one - t * t
        return impl


def relu(a):
    """max(a, 0); a NaN stays a NaN."""
    return 0.0 if a <= 0 else a


def drelu(h):
    """Derivative of relu, from its output h: 1 where h > 0, else 0."""
    return 1.0 if h > 0 else 0.0


# Overloads, so that the result keeps the argument's float type and the unit
# loops see a select (vectorisable) rather than a branch.
@overload(relu)
def _relu_impl(a):
    if isinstance(a, types.Float):
        zero = np.float32(0.0) if a == types.float32 else 0.0

        def impl(a):
            return zero if a <= zero else a
        return impl


@overload(drelu)
def _drelu_impl(h):
    if isinstance(h, types.Float):
        zero, one = (np.float32(0.0), np.float32(1.0)) if h == types.float32 else (0.0, 1.0)

        def impl(h):
            return one if h > zero else zero
        return impl


# -- the LSTM's cell update, with ONNX's options --------------------------------------
def lstm_cell(i, f, g, c, clip, coupled):
    """The LSTM's new cell state from the activated gates and the old state c:
    returns (the forget gate as used, c' = f c + i g).

    coupled (ONNX's input_forget): f = 1 - i, the forget gate's own value unused.
    clip (TensorFlow's cell_clip; inf for none): c' is held to [-clip, clip]. Written with
    comparisons, so a NaN stays a NaN and, with clip = inf, c' is bit for bit the
    plain update.
    """
    if coupled:
        f = 1 - i
    cc = f * c + i * g
    return f, (clip if cc > clip else (-clip if cc < -clip else cc))


def lstm_cell_grads(dc, dh, i, f, g, o, tc, c_prev, c, clip, coupled):
    """Backward of lstm_cell and h' = o tanh(c'): from dc (the gradient reaching c'
    from the step after), dh (h's), the activated gates (f as used), tc = tanh(c'),
    the old state c_prev and c' itself, returns the gradients of the four gate
    pre-activations and of c_prev. A clipped unit (|c'| at clip) passes none."""
    d = dc + dh * o * dtanh(tc)
    if c >= clip or c <= -clip:
        d = d * 0
    do = dh * tc * dsigmoid(o)
    dg = d * i * dtanh(g)
    if coupled:
        di = d * (g - c_prev) * dsigmoid(i)
        df = d * 0
    else:
        di = d * g * dsigmoid(i)
        df = d * c_prev * dsigmoid(f)
    return di, df, dg, do, d * f


@overload(lstm_cell)
def _lstm_cell_impl(i, f, g, c, clip, coupled):
    if isinstance(i, types.Float):
        cast = np.float32 if i == types.float32 else np.float64

        def impl(i, f, g, c, clip, coupled):
            lim = cast(clip)  # (a float64 clip would promote float32 arithmetic)
            if coupled:
                f = cast(1) - i
            cc = f * c + i * g
            if cc > lim:
                cc = lim
            elif cc < -lim:
                cc = -lim
            return f, cc
        return impl


@overload(lstm_cell_grads)
def _lstm_cell_grads_impl(dc, dh, i, f, g, o, tc, c_prev, c, clip, coupled):
    if isinstance(i, types.Float):
        cast = np.float32 if i == types.float32 else np.float64

        def impl(dc, dh, i, f, g, o, tc, c_prev, c, clip, coupled):
            lim = cast(clip)
            zero = cast(0)
            d = dc + dh * o * dtanh(tc)
            if c >= lim or c <= -lim:
                d = zero
            do = dh * tc * dsigmoid(o)
            dg = d * i * dtanh(g)
            if coupled:
                di = d * (g - c_prev) * dsigmoid(i)
                df = zero
            else:
                di = d * g * dsigmoid(i)
                df = d * c_prev * dsigmoid(f)
            return di, df, dg, do, d * f
        return impl


# -- ONNX's gate clip -------------------------------------------------------------------
def clip_gate(a, clip):
    """A gate pre-activation held to [-clip, clip] (ONNX's LSTM clip; inf for none);
    a NaN stays a NaN."""
    return clip if a > clip else (-clip if a < -clip else a)


def gate_clip_bounds(clip, like):
    """The activated values of clipped pre-activations, in like's float type:
    (sigmoid(-clip), sigmoid(clip), tanh(-clip), tanh(clip)). A kernel computes
    them once, with the same functions as its gates, so that a clipped gate equals
    its bound exactly (see unclipped_grads)."""
    return sigmoid(-clip), sigmoid(clip), tanh(-clip), tanh(clip)


def unclipped_grads(di, df, dg, do, i, f, g, o, bounds):
    """The four gate gradients, zero where the gate's pre-activation was clipped:
    where its activated value (i, f and o sigmoid, g tanh) is not strictly inside
    gate_clip_bounds. (Where an activation saturates its derivative is zero
    anyway; with clip = inf callers skip this.)"""
    s_lo, s_hi, t_lo, t_hi = bounds
    return (di * (s_lo < i < s_hi), df * (s_lo < f < s_hi), dg * (t_lo < g < t_hi),
            do * (s_lo < o < s_hi))


@overload(clip_gate)
def _clip_gate_impl(a, clip):
    if isinstance(a, types.Float):
        cast = np.float32 if a == types.float32 else np.float64

        def impl(a, clip):
            lim = cast(clip)
            if a > lim:
                return lim
            if a < -lim:
                return -lim
            return a
        return impl


@overload(gate_clip_bounds)
def _gate_clip_bounds_impl(clip, like):
    if isinstance(like, types.Float):
        cast = np.float32 if like == types.float32 else np.float64

        def impl(clip, like):
            lim = cast(clip)
            return sigmoid(-lim), sigmoid(lim), tanh(-lim), tanh(lim)
        return impl


@overload(unclipped_grads)
def _unclipped_grads_impl(di, df, dg, do, i, f, g, o, bounds):
    if isinstance(i, types.Float):
        zero = np.float32(0.0) if i == types.float32 else 0.0

        def impl(di, df, dg, do, i, f, g, o, bounds):
            s_lo, s_hi, t_lo, t_hi = bounds
            return (di if s_lo < i < s_hi else zero, df if s_lo < f < s_hi else zero,
                    dg if t_lo < g < t_hi else zero, do if s_lo < o < s_hi else zero)
        return impl
