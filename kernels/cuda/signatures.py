"""The argument types of every CUDA kernel, for compiling them with no GPU and no
arrays: tools/cuda_compile_check.py (PTX for every kernel and activation kind) and
resources.py (ptxas's registers and shared memory of the launched kernels) read
them. Keep them in step with the kernels' arguments (grouped as the kernels group
them: kernels/cuda/lstm_cell.py's docstring names the groups); a kernel whose
arguments change and whose entry here does not fails to compile in those checks.

Dimensions: as the kernels' modules. Kernels are typed with C-contiguous arrays
of the dtype given (int64 lengths), the activations as gates.make_acts builds them.
"""
from numba import typeof, types

from ..gates import for_cuda, make_acts, user_activation
from . import common, convlstm, gru, gru_norm, lstm, lstm_cell, lstm_norm, norm, rnn


def arr(dt, nd):
    return types.Array(dt, nd, "C")


def common_signatures(dt):
    A1, A2 = arr(dt, 1), arr(dt, 2)
    A3 = arr(dt, 3)
    b = types.boolean
    return {
        common._matmul_kernel: (A2, A2, A2, A1, dt, b, b, b, b),
        common._copy_kernel: (A1, A1),
        common._combine_kernel: (A1, A1, A1, types.int64, dt),
        common._copy3_kernel: (types.Array(dt, 3, "A"), types.Array(dt, 3, "A"), b),
        common._copy2_kernel: (types.Array(dt, 2, "A"), types.Array(dt, 2, "A")),
        common._fill_kernel: (A1, dt),
        common._scale_rows_kernel: (A3, A2, A3),
        common.dh_one: (types.int64, A2, A2, arr(types.int64, 1), A3, WALK, types.int64,
                        types.int64, A2, dt),  # (A2: the mask)
    }


# The argument groups of the recurrence kernels (lstm_cell.py): walk is
# (reverse, units, training).
WALK = types.Tuple((types.boolean, types.int64, types.boolean))


def lstm_signatures(dt, acts):
    A2, A3 = arr(dt, 2), arr(dt, 3)
    L, i64 = arr(types.int64, 1), types.int64
    T = types.Tuple
    opts = T((dt, dt, types.boolean, dt, acts))   # (zero, clip, coupled, gclip, acts)
    extras = T((A2, A2, A3, A3))                  # (peep, mask, zc, zh)
    # (xp, w_hh, the projection w_hr [P,H] or [0,0] and its input m, lengths, then the
    # groups: state (h, c, y), saved (gates, cs, cin, hin))
    fwd = (A2, A2, A2, A3, L, T((A3, A2, A3)), T((A3, A3, A3, A3)), WALK, opts, extras)
    # (dy, w_hh, w_hr, dhs (h's gradient per step with a projection), lengths, then
    # saved (gates, cs, cin), grads (dgates, dh, dc))
    bwd = (A3, A2, A2, A2, L, T((A3, A3, A3)), T((A2, A3, A2)), WALK, opts, extras)
    return {
        lstm._forward_persistent: fwd,
        lstm._forward_one: (i64, i64) + fwd,
        lstm._backward_persistent: bwd,
        lstm._backward_gates_one: (i64,) + bwd,
        lstm_cell.peephole_gradients: (A2, A2, A2, A2, dt),
    }


def lstm_norm_signatures(dt, acts):
    """The layer-normalised LSTM's kernels (kernels/cuda/lstm_norm.py)."""
    A1, A2, A3 = arr(dt, 1), arr(dt, 2), arr(dt, 3)
    L, i64, b = arr(types.int64, 1), types.int64, types.boolean
    T = types.Tuple
    opts = T((dt, dt, b, dt, acts))
    extras = T((A2, A2, A3, A3))
    ln = T((A1, A1, A1, dt, dt, dt))  # (ln_hh, ln_c, ln_c_bias, 1/G, 1/H, epsilon)
    # (xp, w_hh, w_hr, m, r, lengths, state (h, c, y), saved (cn, gates, cin, hin),
    # normed (hhat, sdh))
    fwd = (A2, A2, A2, A3, A2, L, T((A3, A2, A3)), T((A3, A3, A3, A3)), T((A2, A1)), ln,
           WALK, opts, extras)
    # (dy, w_hh, w_hr, dhs, lengths, saved (gates, cs, cin), grads (dgates, dh, dc),
    # normed (dn, chat, sdc, hhat, sdh, dr))
    bwd = (A3, A2, A2, A2, L, T((A3, A3, A3)), T((A2, A3, A2)),
           T((A2, A2, A1, A2, A1, A2)), ln, WALK, opts, extras)
    return {
        norm.normalise_rows: (A2, A1, A1, A2, A2, A1, dt, dt, dt, b),
        norm.norm_grad_rows: (A2, A1, A2, A1, A2, dt, dt),
        norm.column_dots_kernel: (A2, A2, A1, dt),
        lstm_norm._forward_norm_persistent: fwd,
        lstm_norm._forward_norm_one: (i64, i64) + fwd,
        lstm_norm._backward_norm_persistent: bwd,
        lstm_norm._backward_norm_one: (i64, i64) + bwd,
    }


def _softsign(a):
    return a / (1 + abs(a))


def _softsign_grad(y):
    return (1 - abs(y)) ** 2


DEFAULT_ACTS = typeof(make_acts("sigmoid", "tanh"))
_USER = []  # the user's activations, kept: their Numba type refers to the device functions weakly


def activation_types():
    """The activations the checks compile for: the default ones, the other built-in
    kinds (hard_sigmoid gates, relu cells) and a user's function (softsign gates, as
    CUDA device functions: gates.for_cuda). The last needs the CUDA target (not the
    simulator), so it is made on first use."""
    if not _USER:
        _USER.append(for_cuda(make_acts(user_activation(_softsign, _softsign_grad), "tanh")))
    return [DEFAULT_ACTS, typeof(make_acts("hard_sigmoid", "relu")), typeof(_USER[0])]


def gru_signatures(dt, acts):
    """The GRU's kernels (kernels/cuda/gru.py) with the activations acts."""
    A1, A2, A3 = arr(dt, 1), arr(dt, 2), arr(dt, 3)
    L, i64, b = arr(types.int64, 1), types.int64, types.boolean
    T = types.Tuple
    opts, extras = T((dt, acts)), T((A2, A3))  # (zero, acts), (mask, zh)
    # (xp, w_hh, b_hh, lengths, state (h, y), saved (gates, hn, hin, rh), reset_after)
    gru_fwd = (A2, A2, A1, L, T((A3, A3)), T((A3, A3, A3, A3)), b, WALK, opts, extras)
    # (dy, w_hh, lengths, saved (gates, hn, hin), grads (dgi, drec, dh), reset_after)
    gru_bwd = (A3, A2, L, T((A3, A3, A3)), T((A2, A2, A3)), b, WALK, opts, extras)
    return {
        gru._forward_persistent: gru_fwd,
        gru._forward_one: (i64, i64) + gru_fwd,
        gru._backward_persistent: gru_bwd,
        gru._backward_gates_one: (i64,) + gru_bwd,
        gru._backward_n_one: (i64,) + gru_bwd,
    }


def gru_norm_signatures(dt, acts):
    """The layer-normalised GRU's kernels (kernels/cuda/gru_norm.py; it launches
    lstm_norm's row kernels too)."""
    A2, A3 = arr(dt, 2), arr(dt, 3)
    L, i64, b = arr(types.int64, 1), types.int64, types.boolean
    return {
        gru_norm._gates: (i64, A2, A2, L, A2, A2, A2, A3, A3, A3, A3, b, dt, acts, A2, A3),
        gru_norm._gate_grads: (i64, A3, L, A3, A3, A3, A2, A2, A2, A2, dt, acts, A3),
        gru_norm._add_masked: (A2, A2, A2),
    }


def rnn_signatures(dt):
    """The RNN's kernels (kernels/cuda/rnn.py)."""
    A2, A3 = arr(dt, 2), arr(dt, 3)
    L, i64, b = arr(types.int64, 1), types.int64, types.boolean
    rnn_fwd = (A2, A2, L, A3, A3, A3, WALK, b, dt)
    rnn_bwd = (A3, A2, L, A3, A2, A3, WALK, b, dt)
    return {
        rnn._forward_persistent: rnn_fwd,
        rnn._forward_one: (i64,) + rnn_fwd,
        rnn._backward_persistent: rnn_bwd,
        rnn._backward_act_one: (i64,) + rnn_bwd,
    }


def flat(sig):
    """The types of a signature, those inside its tuples (argument groups) included."""
    out = []
    for t in sig:
        acts = isinstance(t, types.BaseTuple) and t in activation_types()
        out += flat(t.types) if isinstance(t, types.BaseTuple) and not acts else [t]
    return out


def convlstm_signatures(dt):
    A1, A2, A3, A4 = arr(dt, 1), arr(dt, 2), arr(dt, 3), arr(dt, 4)
    L, i64, b = arr(types.int64, 1), types.int64, types.boolean
    return {
        # (x, w_ih, w_hh, b, gx, gh, h, mask, c, lengths, t, training, h_next, y, gates,
        # cs, hs)
        convlstm._forward_step: (A3, A4, A4, A1, L, L, A2, A2, A2, L, i64, b, A2, A3, A3,
                                 A3, A3),
        convlstm._gates_backward: (A3, A3, A3, A2, L, i64, i64, A2, A2, A3),
        convlstm._dh_backward: (A3, A4, L, A2, L, i64, dt, A2, A2),
        convlstm._dx: (A3, A4, L, dt, A3),
        convlstm._dw: (A3, A3, L, dt, A4),
    }


def kernel_signatures(dt, every_activation=True):
    """[(kernel, argument types)] of every kernel for dtype dt (types.float32 or
    float64): every kernel with the default activations and, with
    every_activation, the persistent ones (which call every device function the
    per-step ones call) and the layer-normalised GRU's with the other kinds too."""
    sigs = [*common_signatures(dt).items(), *rnn_signatures(dt).items(),
            *convlstm_signatures(dt).items()]
    for n, acts in enumerate(activation_types() if every_activation else [DEFAULT_ACTS]):
        cells = [*lstm_signatures(dt, acts).items(),
                 *lstm_norm_signatures(dt, acts).items(), *gru_signatures(dt, acts).items()]
        sigs += [(k, sig) for k, sig in cells if n == 0 or "persistent" in k.py_func.__name__]
        sigs += [(k, sig) for k, sig in gru_norm_signatures(dt, acts).items()
                 if n == 0 or k is not gru_norm._add_masked]
    return sigs


def kernel_name(kernel):
    """module.function of a kernel, as the checks print it."""
    return f"{kernel.py_func.__module__.rsplit('.', 1)[-1]}.{kernel.py_func.__name__}"
