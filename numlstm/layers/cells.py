"""LSTM, GRU and RNN: the recurrent layer of each cell, its equations and options."""
from ..validation import check_activation, check_bool, check_clip, check_int
from .recurrent import Recurrent


class LSTM(Recurrent):
    r"""A stack of LSTM layers, optionally bidirectional, with torch.nn.LSTM's semantics.

    Each step of each layer and direction computes (s = sigmoid, * elementwise)::

        i = s(W_ii x + b_ii + W_hi h + b_hi)      f = s(W_if x + b_if + W_hf h + b_hf)
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)   o = s(W_io x + b_io + W_ho h + b_ho)
        c' = f * c + i * g                        h' = o * tanh(c')

    Layer l > 0 reads the output of layer l-1 (both directions concatenated),
    with dropout applied to it when training.

    Args:
        input_size: I, the features of each step's input (>= 1).
        hidden_size: H, the units of the state (>= 1).
        num_layers: L, the layers stacked (>= 1; default 1).
        bidirectional: add a reverse direction per layer (D = 2).
        batch_first: x and y are `[B,T,*]` instead of `[T,B,*]` (states stay
            `[L*D,B,H]`).
        dropout: probability in [0, 1) of zeroing an inter-layer activation when
            training=True (inverted dropout: survivors scaled by 1/(1-p)).
        backend: "auto" (default: the CPU kernels for NumPy input, the CUDA kernels
            for input on an NVIDIA GPU), "cpu", "cuda" (Numba's CUDA kernels; weights
            and states move to the device), or "numpy" (the slow reference).
        dtype: np.float32 (default) or np.float64. Inputs of any real dtype are
            cast to it.
        seed: seeds the initial weights and the dropout masks.
        return_sequences: in a Sequential model, pass on the whole output sequence
            (True) or only each sequence's last valid output (False).
        merge_mode: how a bidirectional layer's top two directions are combined in
            y, as Keras's Bidirectional does: "concat" (default, [.., 2H]), "sum",
            "mul", "ave" ([.., H]), or None (y is a pair (forward, backward)).
            Between stacked layers the directions are always concatenated, as in
            torch.
        stateful: carry the final state into the next call that passes no state
            (Keras's stateful=True), until reset_state(); the batch size must stay
            the same. Gradients do not flow across calls.
        recurrent_init: "uniform" (default, torch's) or "orthogonal": each gate
            block of weight_hh starts as a random orthogonal [H,H] matrix.
        cell_clip: None (default) or a number > 0: c' is clipped to [-cell_clip,
            cell_clip] at every step (TensorFlow's LSTMCell cell_clip); no gradient
            flows through a clipped unit. (ONNX's LSTM clip differs: it bounds the
            gate pre-activations, so export_onnx refuses a layer with cell_clip.)
        input_forget: couple the forget gate to the input gate, f = 1 - i (ONNX's
            input_forget; the forget gate's weights are kept but unused).
        gate_clip: None (default) or a number > 0: every gate pre-activation is
            clipped to [-gate_clip, gate_clip] before its activation, as the ONNX
            LSTM's clip is computed by onnxruntime; no gradient flows through a
            clipped value.
        unit_forget_bias: start the forget gate's bias at 1.0 (bias_ih's forget
            block 1, bias_hh's 0), as Keras does by default (LSTM only).
        recurrent_dropout: probability in [0, 1) of dropping each unit of h where it
            enters the recurrent product, W_hh (h * mask), when training=True: one
            mask per sequence and layer direction, held over all its steps (Keras's
            recurrent_dropout and Gal and Ghahramani's variational form; survivors
            scaled by 1/(1-p)); inference runs the plain layer. LSTM and GRU, on
            every backend. torch has no such option; to_torch still gives the
            module that computes the inference.
        zoneout: a rate in [0, 1), or a pair (for c, for h): zoneout (Krueger et al.,
            2016). When training, each unit of c and of h keeps its previous value
            with that probability at each step, c' <- c' + z (c - c') with z drawn 0
            or 1 per sequence, unit and step (h likewise); at inference z is the rate
            itself, the expectation. LSTM (with a projection, h's zoneout mixes the
            projected h, P units) and GRU (one rate: it has one state, h), on every
            backend. Keras, torch and ONNX have no such option (to_torch and
            export_onnx refuse such a layer).
        proj_size: 0 (default) or P in [1, H): a recurrent projection, as torch.nn.LSTM's
            proj_size: h' = W_hr (o * tanh(c')), so h, h0, h_n and y have P units
            (c keeps H), W_hh is [G,P] and each cell gains weight_hr_l{k} [P,H] (no
            bias). On every backend; the Keras, ONNX and haste layouts have no
            projection to hold it.
        peephole: connect the cell state to the gates as ONNX's LSTM does (Gers and
            Schmidhuber): i and f read p_i * c and p_f * c of the old state, o reads
            p_o * c' of the new one; each cell gains weight_peephole_l{k} [3H] (p_i,
            p_f, p_o; zeros at first, so the layer starts as the plain one).
            export_onnx writes it as the LSTM operator's P input. Every backend;
            torch and Keras have no peepholes.
        activation: the cell's activation, for the candidate g and for c in
            h = o * activation(c) (Keras's `activation`; ONNX's g and h):
            "tanh" (default), "sigmoid", "hard_sigmoid" (min(max(a/6 + 1/2, 0), 1),
            Keras 3's and torch's) or "relu"; or a pair (f, df) of functions Numba can
            compile, df(y) being f's derivative written from its output y = f(a)
            (for example softsign: (lambda a: a / (1 + abs(a)), lambda y: (1 -
            abs(y)) ** 2)). A user's pair runs on every backend: on the cpu as C
            callbacks the kernels call through a pointer (compiled once and cached
            for any user's functions; not inlined into the gate loops), on cuda as
            device functions compiled into the kernels (once per function and
            process: CUDA kernels are not cached on disk).
        recurrent_activation: the gates' activation, for i, f and o (Keras's
            `recurrent_activation`; ONNX's f): "sigmoid" (default) or any of the
            above. Either choice is compiled into the kernels (the default pair
            costs nothing); torch has neither option, so to_torch refuses other
            choices.
        layer_norm: a layer-normalised LSTM, as Ba, Kiros and Hinton (2016) define
            it: the input product W_ih x and the recurrent product W_hh h are each
            normalised over their 4H entries (mean 0, variance 1, eps 1e-5 as
            torch.nn.LayerNorm) and scaled by their own gains before the biases
            add, and h' = o * tanh(LN(c') * gain + bias); the state passed on is c'
            itself, as in the paper. Each cell gains weight_ln_ih_l{k} and
            weight_ln_hh_l{k} [G] (ones at first), weight_ln_c_l{k} [H] (ones) and
            bias_ln_c_l{k} [H] (zeros). Works with every other option, on every
            backend: on the cpu it runs the per-step BLAS path (the statistics of a
            row span all gate columns), on cuda three phases a step with a grid
            barrier after each (kernels/cuda/lstm_norm.py). torch,
            Keras and ONNX have no such layer, so to_torch, export_onnx and their
            layouts refuse it.

    Parameters (`params`, read-only arrays; gradients in `grads`, same names),
    named and shaped as in torch.nn.LSTM, gate blocks in the order i, f, g, o,
    k = layer index, `_reverse` for the reverse direction:
        weight_ih_l{k} `[G, I or D*H]`, weight_hh_l{k} [G,H], bias_ih_l{k} [G],
        bias_hh_l{k} [G] (two biases, as cuDNN has them, so torch weights load as
        they are), and weight_hr_l{k} [P,H] with a projection (W_hh then [G,P],
        layer k > 0 reading `D*P` features). Initialised uniform in [-1/sqrt(H),
        1/sqrt(H)] like torch.

    Call: ``y, (h_n, c_n) = lstm(x, state=None, training=False, lengths=None, mask=None)``
        x: [T,B,I] ([B,T,I] with batch_first; [T,I] unbatched)
        state: (h0, c0), each `[L*D,B,H]` (`[L*D,H]` unbatched); zeros if omitted
        lengths: [B] ints in [1, T], any order: sequence b is valid at steps
            t < lengths[b]; its outputs past that are zero, h_n and c_n are its
            state at its last valid step, and the reverse direction starts there
            (torch's packed sequences).
        mask: instead of lengths, a boolean [B,T] (Keras style; batch first even
            without batch_first), True at valid steps; it must be right-padded.
        y: [T,B,W] (W = output_size); h_n, c_n: `[L*D,B,H]`
        training=True keeps what backward needs and turns dropout on.

    Backward: ``dx, (dh0, dc0) = lstm.backward(dy, (dh_n, dc_n))``, after a
    training forward; the state gradient, or either half of it, may be None.
    Parameter gradients are added to `grads` (they accumulate across backward
    calls, as in torch, until `zero_grad()`). Each training forward supports one
    backward (its saved activations are consumed).

    Streaming: ``y_t, (h, c) = lstm.step(x_t, (h, c))`` for one step [B,I].

    Example:
        >>> import numpy as np, numlstm
        >>> lstm = numlstm.LSTM(input_size=3, hidden_size=4, num_layers=2, seed=0)
        >>> y, (h_n, c_n) = lstm(np.ones((5, 2, 3), np.float32), training=True)
        >>> y.shape, h_n.shape
        ((5, 2, 4), (2, 2, 4))
        >>> dx, (dh0, dc0) = lstm.backward(np.ones_like(y))
        >>> dx.shape, lstm.grads["weight_hh_l1"].shape
        ((5, 2, 3), (16, 4))
    """
    cell = "lstm"
    _state_parts = ("h", "c")

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 cell_clip=None, input_forget=False, gate_clip=None, proj_size=0,
                 peephole=False, activation="tanh", recurrent_activation="sigmoid",
                 layer_norm=False, **options):
        proj_size = check_int(proj_size, "proj_size", 0)
        if proj_size >= check_int(hidden_size, "hidden_size", 1):
            raise ValueError(f"proj_size: expected 0 (none) or fewer units than hidden_size "
                             f"({hidden_size}), got {proj_size}")
        super().__init__(input_size, hidden_size, num_layers, bidirectional,
                         cell_clip=check_clip(cell_clip, "cell_clip"),
                         input_forget=check_bool(input_forget, "input_forget"),
                         gate_clip=check_clip(gate_clip, "gate_clip"), proj_size=proj_size,
                         peephole=check_bool(peephole, "peephole"),
                         activation=check_activation(activation, "activation"),
                         recurrent_activation=check_activation(recurrent_activation,
                                                                "recurrent_activation"),
                         layer_norm=check_bool(layer_norm, "layer_norm"), **options)

    def _cell_config(self):
        s = self.spec
        return dict(cell_clip=s.cell_clip, input_forget=s.input_forget, gate_clip=s.gate_clip,
                    proj_size=s.proj_size, peephole=s.peephole, activation=s.activation,
                    recurrent_activation=s.recurrent_activation, layer_norm=s.layer_norm)


class GRU(Recurrent):
    r"""A stack of GRU layers with torch.nn.GRU's semantics; the LSTM's API.

    Each step computes (s = sigmoid, * elementwise), gate blocks r, z, n::

        r = s(W_ir x + b_ir + W_hr h + b_hr)      z = s(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    With reset_after=False (Keras's GRU(reset_after=False), the original form of
    Cho et al.), r multiplies h before the product:
    n = tanh(W_in x + b_in + W_hn (r * h) + b_hn).

    Args: those of numlstm.LSTM but its cell options (recurrent_dropout included:
    the mask multiplies h wherever W_hh reads it, in all three gates, not in the
    z * h term, as Keras's GRU applies it), reset_after (default True, torch's
    form), and activation (n's, default "tanh") and recurrent_activation (r's and
    z's, default "sigmoid"), chosen as the LSTM's are (Keras's GRU has both; the
    default pair is what torch computes, and to_torch refuses others), and
    zoneout, one rate (the GRU has one state): h' <- h' + z (h - h') after the
    cell, z drawn 0 or 1 per sequence, unit and step while training, the rate
    itself at inference. layer_norm (reset_after=True only): the input product
    W_ih x and the whole recurrent product W_hh h are each normalised over their
    3H entries (eps 1e-5) and scaled by their own gains before the biases add, as
    the LSTM's (Marian's layer-normalised GRU does the same), so
    n = tanh(x_n + r * (LN(W_hh h)_n + b_hn)); no state is normalised (the GRU has
    no c). Each cell gains weight_ln_ih_l{k} and weight_ln_hh_l{k} [3H] (ones at
    first). torch, Keras and ONNX have no such layer and refuse it.
    Parameters: torch's names, weight_ih_l{k} `[3H, I or D*H]`, weight_hh_l{k}
    [3H,H], bias_ih_l{k} [3H], bias_hh_l{k} [3H].

    Call: ``y, h_n = gru(x, state=None, training=False, lengths=None, mask=None)``,
    state (h0) and h_n `[L*D,B,H]`. Backward: ``dx, dh0 = gru.backward(dy, dh_n)``.
    Streaming: ``y_t, h = gru.step(x_t, h)``.
    """
    cell = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 reset_after=True, activation="tanh", recurrent_activation="sigmoid",
                 layer_norm=False, **options):
        reset_after = check_bool(reset_after, "reset_after")
        if check_bool(layer_norm, "layer_norm") and not reset_after:
            raise ValueError("layer_norm: the GRU normalises its whole recurrent product "
                             "W_hh h, which reset_after=False splits (W_hn multiplies r * h, "
                             "made from the rest); use reset_after=True with layer_norm")
        super().__init__(input_size, hidden_size, num_layers, bidirectional,
                         reset_after=reset_after,
                         activation=check_activation(activation, "activation"),
                         recurrent_activation=check_activation(recurrent_activation,
                                                                "recurrent_activation"),
                         layer_norm=layer_norm, **options)

    def _cell_config(self):
        s = self.spec
        return dict(reset_after=s.reset_after, activation=s.activation,
                    recurrent_activation=s.recurrent_activation, layer_norm=s.layer_norm)


class RNN(Recurrent):
    r"""A stack of Elman RNN layers with torch.nn.RNN's semantics; the LSTM's API.

    Each step computes h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or
    relu (`nonlinearity`). Parameters: torch's names, weight_ih_l{k} [H, I or
    D*H], weight_hh_l{k} [H,H], bias_ih_l{k} [H], bias_hh_l{k} [H].

    Call: ``y, h_n = rnn(x, state=None, training=False, lengths=None, mask=None)``,
    state (h0) and h_n `[L*D,B,H]`.
    Backward: ``dx, dh0 = rnn.backward(dy, dh_n)``.

    It forgets: gradients through many steps of tanh(W h) shrink or grow
    geometrically, which is why LSTMs exist (`numlstm train --task adding
    --cell rnn` shows it).
    """
    cell = "rnn"

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 nonlinearity="tanh", **options):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bidirectional,
                         nonlinearity=nonlinearity, **options)

    def _cell_config(self):
        return dict(nonlinearity=self.spec.nonlinearity)


CELLS = {cls.cell: cls for cls in (LSTM, GRU, RNN)}  # "lstm" -> LSTM, ...
