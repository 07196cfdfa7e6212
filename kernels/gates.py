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

The LSTM's backward gate math (lstm_cell_grads, and lstm_gate_grads, its part
after c', which the layer-normalised kernels call alone) is written once here for
every kernel, with its options: ONNX's gate clip, input_forget and peepholes,
TensorFlow's cell clip, and the activations chosen by type (make_acts). Each
kernel spells out the forward's few lines itself (activate, clip_gate,
lstm_cell): a shared forward function that LLVM was left to inline stopped the
gate loops vectorising (8 times fewer zmm instructions, inference 2.4 times
slower), and one inlined into the callers' IR (inline="always", as an overload
or an njit function) made a process that compiled the kernels compute results a
rounding apart (1e-7) from a process that loaded them from the cache.

Derivatives take the activation's output, as the backward has it stored:
sigmoid'(a) = s (1 - s), tanh'(a) = 1 - t^2 and relu'(a) = [relu(a) > 0].
"""
import math

import numpy as np
from llvmlite import ir
from numba import cfunc, njit, types
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


# -- activation kinds ------------------------------------------------------------------
# An activation is chosen by the *type* of a small value, so that compiled code is
# specialised to it at compile time (the default pair compiles to exactly the
# sigmoid/tanh code above) and the choice still caches across processes. A
# built-in kind is a zero of its own integer type (a scalar: Numba's parallel
# loops take scalars and flat tuples as arguments, not namedtuples). A user's
# activation is a pair of UserFunctions (f, df), df(y) the derivative of f written
# from f's output y = f(a) (what the backward has stored); the kernels receive
# them as C callbacks of the array's dtype (for_dtype) and call them through a
# pointer, so one compilation serves every user's function and caches like the
# built-ins. (Passed as Numba dispatchers instead, each function was a type of its
# own: compiled again in every process, and its cache entries named the user's
# module, which another process could not import: its kernels then failed to load.)
SIGMOID, TANH, RELU, HARD_SIGMOID = np.int8(0), np.int16(0), np.uint8(0), np.uint16(0)
ACTIVATIONS = {"sigmoid": SIGMOID, "tanh": TANH, "relu": RELU, "hard_sigmoid": HARD_SIGMOID}
# hard_sigmoid: min(max(a / 6 + 1/2, 0), 1), Keras 3's and torch's Hardsigmoid
# (relu6(a + 3) / 6).


def make_acts(gate, cell):
    """The kernels' flat tuple (gate f, gate df, cell f, cell df) from two activations,
    each a name of ACTIVATIONS or a user's pair of functions (f, df): gate for the
    LSTM's i, f and o (Keras's recurrent_activation), cell for its candidate g and
    for c in h = o * cell(c) (Keras's activation)."""
    def parts(kind):
        if isinstance(kind, str):
            return (ACTIVATIONS[kind],) * 2
        return tuple(kind)
    return parts(gate) + parts(cell)


DEFAULT_ACTS = make_acts("sigmoid", "tanh")


class UserFunction:
    """One scalar function of a user's activation: callable in Python (the NumPy
    reference, the CUDA simulator), and compiled by Numba as a C callback for
    float32 and for float64 (`compiled[dtype]`), which the CPU kernels call.
    Compiling happens here, so a function Numba cannot compile fails at once. The
    CUDA kernels take it as a device function (`device`, made on first use)."""

    def __init__(self, fn):
        self.fn = getattr(fn, "py_func", fn)  # (a Numba dispatcher's Python function)
        self._device = None
        self.compiled = {np.dtype(t): cfunc(nb(nb), error_model="numpy")(self.fn)
                         for t, nb in ((np.float32, types.float32),
                                       (np.float64, types.float64))}

    @property
    def device(self):
        """The function as a CUDA device function (compiled into each kernel that
        calls it, so the kernels specialise to it; numba.cuda is imported only
        here, on first use)."""
        if self._device is None:
            from numba import cuda
            self._device = cuda.jit(device=True)(self.fn)
        return self._device

    def __call__(self, x):
        return self.fn(x)

    def __repr__(self):
        return f"UserFunction({getattr(self.fn, '__name__', self.fn)!r})"


def user_activation(f, df):
    """A user's activation as make_acts takes it, from f and df (df(y), the derivative
    from the output): a pair of UserFunctions (each as it is, if it is one)."""
    return tuple(g if isinstance(g, UserFunction) else UserFunction(g) for g in (f, df))


def for_dtype(acts, dtype):
    """make_acts's tuple as the kernels of dtype take it: a user's functions as their
    compiled callbacks for dtype, the built-in kinds as they are."""
    return tuple(k.compiled[np.dtype(dtype)] if isinstance(k, UserFunction) else k
                 for k in acts)


def for_cuda(acts):
    """make_acts's tuple as the CUDA kernels take it: a user's functions as CUDA
    device functions (UserFunction.device), the built-in kinds as they are."""
    return tuple(k.device if isinstance(k, UserFunction) else k for k in acts)


LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default (Keras's LayerNormalization: 1e-3)
RNN_NONLINEARITIES = ("tanh", "relu")  # the plain RNN's activations (torch's nonlinearity)
_SIXTH = 1.0 / 6.0


def activation_name(kind):
    """A built-in kind's name, or None for a user's function."""
    for name, k in ACTIVATIONS.items():
        if type(kind) is type(k):
            return name
    return None


def hard_sigmoid(a):
    """min(max(a / 6 + 1/2, 0), 1); a NaN stays a NaN."""
    v = a * _SIXTH + 0.5
    return 0.0 if v < 0 else (1.0 if v > 1 else v)


def dhard_sigmoid(y):
    """Derivative of hard_sigmoid, from its output y: 1/6 where 0 < y < 1, else 0."""
    return _SIXTH if 0 < y < 1 else 0.0


@overload(hard_sigmoid)
def _hard_sigmoid_impl(a):
    if isinstance(a, types.Float):
        cast = np.float32 if a == types.float32 else np.float64
        zero, one, sixth, half = cast(0), cast(1), cast(_SIXTH), cast(0.5)

        def impl(a):
            v = a * sixth + half
            return zero if v < zero else (one if v > one else v)
        return impl


@overload(dhard_sigmoid)
def _dhard_sigmoid_impl(y):
    if isinstance(y, types.Float):
        cast = np.float32 if y == types.float32 else np.float64
        zero, one, sixth = cast(0), cast(1), cast(_SIXTH)
        return lambda y: sixth if zero < y < one else zero


# Each built-in kind's (function, derivative from the output), by name.
_FUNCTIONS = {"sigmoid": (sigmoid, dsigmoid), "tanh": (tanh, dtanh), "relu": (relu, drelu),
              "hard_sigmoid": (hard_sigmoid, dhard_sigmoid)}


def activate(kind, x):
    """kind's activation of x (the plain-Python version runs under the CUDA simulator)."""
    name = activation_name(kind)
    return kind(x) if name is None else _FUNCTIONS[name][0](x)


def dactivate(kind, x):
    """The derivative of kind's activation, from its output x (kind: the derivative's
    slot of the tuple, the same code for a built-in)."""
    name = activation_name(kind)
    return kind(x) if name is None else _FUNCTIONS[name][1](x)


_KIND_TYPES = {types.int8: "sigmoid", types.int16: "tanh", types.uint8: "relu",
               types.uint16: "hard_sigmoid"}


def _kind_impl(kind, x, which):
    """activate's (which=0) or dactivate's (which=1) implementation for kind's type."""
    if not isinstance(x, types.Float):
        return None
    name = _KIND_TYPES.get(kind)
    if name is not None:
        fn = _FUNCTIONS[name][which]
        return lambda kind, x: fn(x)
    if isinstance(kind, (types.FunctionType, types.Dispatcher)):
        # a user's function: for_dtype's C callback, or for_cuda's device function
        return lambda kind, x: kind(x)


@overload(activate)
def _activate_impl(kind, x):
    return _kind_impl(kind, x, 0)


@overload(dactivate)
def _dactivate_impl(kind, x):
    return _kind_impl(kind, x, 1)


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


def lstm_cell_grads(dc, dh, i, f, g, o, tc, c_prev, c, clip, coupled, acts, pp, bounds,
                    gated):
    """Backward of an LSTM unit's step (the kernels' gate math: lstm_cell and
    h' = o * cell(c'), with gate clips and peepholes): from dc (the gradient
    reaching c' from the step after), dh (h's), the activated gates (f as used),
    tc = cell(c'), the old state c_prev and c' itself, returns the gradients of
    the four gate pre-activations and of c_prev. With gated (a gate clip), a
    clipped pre-activation (one whose activated value is not strictly inside
    bounds, gate_clip_bounds's) passes no gradient; lstm_gate_grads takes the
    rest. pp: None, or the unit's peephole weights (p_i, p_f, p_o)."""
    s_lo, s_hi = bounds[0], bounds[1]
    do = dh * tc * dactivate(acts[1], o)
    if gated and not s_lo < o < s_hi:
        do = do * 0
    d = dc + dh * o * dactivate(acts[3], tc)
    if pp is not None:
        d = d + do * pp[2]
    di, df, dg, dcp = lstm_gate_grads(d, i, f, g, c_prev, c, clip, coupled, acts, pp, bounds,
                                      gated)
    return di, df, dg, do, dcp


def lstm_gate_grads(d, i, f, g, c_prev, c, clip, coupled, acts, pp, bounds, gated):
    """The part of lstm_cell_grads after c': from d, the whole gradient reaching c'
    (through h', through o's peephole, and from the step after), the gradients of
    the i, f and g pre-activations and of c_prev. A clipped unit (|c'| at clip)
    passes none; with gated, nor does a clipped pre-activation. (The
    layer-normalised LSTM calls it directly: its h' reads c' through a
    normalisation that spans the row.)"""
    s_lo, s_hi, t_lo, t_hi = bounds
    if c >= clip or c <= -clip:
        d = d * 0
    dg = d * i * dactivate(acts[3], g)
    if coupled:
        di = d * (g - c_prev) * dactivate(acts[1], i)
        df = d * 0
    else:
        di = d * g * dactivate(acts[1], i)
        df = d * c_prev * dactivate(acts[1], f)
    if gated:
        di = di if s_lo < i < s_hi else di * 0
        df = df if s_lo < f < s_hi else df * 0
        dg = dg if t_lo < g < t_hi else dg * 0
    dcp = d * f
    if pp is not None:
        dcp = dcp + di * pp[0] + df * pp[1]
    return di, df, dg, dcp


def peephole_at(peep, v):
    """None for no peepholes, else unit v's (p_i, p_f, p_o) from peep [3,H]."""
    if peep is None:
        return None
    return peep[0, v], peep[1, v], peep[2, v]


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
def _lstm_cell_grads_impl(dc, dh, i, f, g, o, tc, c_prev, c, clip, coupled, acts, pp, bounds,
                          gated):
    if not isinstance(i, types.Float):
        return None
    cast = np.float32 if i == types.float32 else np.float64
    peep = pp is not types.none

    def impl(dc, dh, i, f, g, o, tc, c_prev, c, clip, coupled, acts, pp, bounds, gated):
        s_lo, s_hi = bounds[0], bounds[1]
        do = dh * tc * dactivate(acts[1], o)
        if gated and not s_lo < o < s_hi:
            do = cast(0)
        d = dc + dh * o * dactivate(acts[3], tc)
        if peep:
            d += do * pp[2]
        di, df, dg, dcp = lstm_gate_grads(d, i, f, g, c_prev, c, clip, coupled, acts, pp,
                                          bounds, gated)
        return di, df, dg, do, dcp
    return impl


@overload(lstm_gate_grads)
def _lstm_gate_grads_impl(d, i, f, g, c_prev, c, clip, coupled, acts, pp, bounds, gated):
    if not isinstance(i, types.Float):
        return None
    cast = np.float32 if i == types.float32 else np.float64
    peep = pp is not types.none

    def impl(d, i, f, g, c_prev, c, clip, coupled, acts, pp, bounds, gated):
        lim = cast(clip)
        zero = cast(0)
        s_lo, s_hi, t_lo, t_hi = bounds
        if c >= lim or c <= -lim:
            d = zero
        dg = d * i * dactivate(acts[3], g)
        if coupled:
            di = d * (g - c_prev) * dactivate(acts[1], i)
            df = zero
        else:
            di = d * g * dactivate(acts[1], i)
            df = d * c_prev * dactivate(acts[1], f)
        if gated:
            if not s_lo < i < s_hi:
                di = zero
            if not s_lo < f < s_hi:
                df = zero
            if not t_lo < g < t_hi:
                dg = zero
        dcp = d * f
        if peep:
            dcp += di * pp[0] + df * pp[1]
        return di, df, dg, dcp
    return impl


@overload(peephole_at)
def _peephole_at_impl(peep, v):
    if peep is types.none:
        return lambda peep, v: None
    return lambda peep, v: (peep[0, v], peep[1, v], peep[2, v])


# -- ONNX's gate clip -------------------------------------------------------------------
def clip_gate(a, clip):
    """A gate pre-activation held to [-clip, clip] (ONNX's LSTM clip; inf for none);
    a NaN stays a NaN."""
    return clip if a > clip else (-clip if a < -clip else a)


def gate_clip_bounds(clip, like, acts):
    """The activated values of clipped pre-activations, in like's float type:
    (gate(-clip), gate(clip), cell(-clip), cell(clip)) of acts (sigmoid and tanh
    by default). A kernel computes them once, with the same functions as its
    gates, so that a clipped gate equals its bound exactly (see
    lstm_cell_grads)."""
    return (activate(acts[0], -clip), activate(acts[0], clip), activate(acts[2], -clip),
            activate(acts[2], clip))


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
def _gate_clip_bounds_impl(clip, like, acts):
    if isinstance(like, types.Float):
        cast = np.float32 if like == types.float32 else np.float64

        def impl(clip, like, acts):
            lim = cast(clip)
            return (activate(acts[0], -lim), activate(acts[0], lim),
                    activate(acts[2], -lim), activate(acts[2], lim))
        return impl
