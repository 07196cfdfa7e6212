"""Recurrent layers: the public API over the kernels.

Dimensions: T steps, B batch, I input features, H hidden units, G = 4H,
L layers, D directions (2 when bidirectional, else 1).
"""
import contextlib
import numbers

import numpy as np

from . import dispatch
from ._checks import check_int
from .kernels.cpu import dense_backward_cpu, dense_forward_cpu
from .packing import LSTMSpec, PackCache, as_array, from_canonical, get_layout, to_canonical

_DTYPES = (np.float32, np.float64)


def _numeric(value, what):
    """value as a NumPy array (no copy when it already is one), refusing non-numbers."""
    if hasattr(value, "detach"):  # torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    if hasattr(value, "__cuda_array_interface__"):
        return value
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{what}: expected a real numeric array, got dtype {arr.dtype}")
    return arr


class Layer:
    """What a layer offers a Sequential model (and an optimizer).

    Arrays in a model are batch-first: a sequence is [B,T,F], a vector [B,F].

        forward(x, training=False, lengths=None) -> out
        backward_output(dout) -> dx (None for an Embedding: integer inputs have no
            gradient); parameter gradients are added to `grads`
        params / grads        {name: array}, torch's names and shapes
        output_shape(shape)   the output's shape for an input shape (None for an
                              unknown size), ValueError when the input does not fit
        updating()            a context in which `params` may be changed in place
        get_config()          the constructor's arguments, JSON-serialisable
    """
    name = None

    @property
    def params(self):
        return dict(self._params)

    def zero_grad(self):
        """Set every gradient in `grads` to zero."""
        for g in self.grads.values():
            g.fill(0)

    @contextlib.contextmanager
    def updating(self):
        """Yield the parameters as writable arrays; changes take effect on exit."""
        for arr in self._params.values():
            arr.flags.writeable = True
        try:
            yield self._params
        finally:
            for arr in self._params.values():
                arr.flags.writeable = False
            self._params_changed()

    def _params_changed(self):
        pass

    def _init_params(self, params):
        self._replace_params(params)
        self.grads = {name: np.zeros_like(p) for name, p in params.items()}

    def _replace_params(self, params):
        for arr in params.values():
            arr.flags.writeable = False
        self._params = params
        self._params_changed()

    def load_params(self, params):
        """Replace the parameters with arrays of the same names and shapes (copied)."""
        want = {k: v.shape for k, v in self._params.items()}
        got = {k: tuple(np.shape(v)) for k, v in params.items()}
        if got != want:
            raise ValueError(f"{self.name or type(self).__name__}: expected parameters "
                             f"{want}, got {got}")
        self._replace_params({k: as_array(params[k], k, self.dtype) for k in want})

    def rng_state(self):
        """The state of the generator behind dropout masks (None if the layer has none)."""
        rng = getattr(self, "_drop_rng", None)
        return None if rng is None else rng.bit_generator.state

    def set_rng_state(self, state):
        if state is not None:
            self._drop_rng.bit_generator.state = state

    def __call__(self, x, training=False):
        return self.forward(x, training)

    def backward(self, dout):
        return self.backward_output(dout)


def _check_dtype(dtype):
    if np.dtype(dtype) not in [np.dtype(d) for d in _DTYPES]:
        raise TypeError(f"dtype: expected float32 or float64, got {np.dtype(dtype)}")
    return np.dtype(dtype)


def _check_probability(p, what):
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{what}: expected a number in [0, 1), got {type(p).__name__}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{what}: expected a probability in [0, 1), got {p}")
    return float(p)


def _floats(x, what, dtype, features=None):
    """x as a C-contiguous array of dtype whose last axis has `features` entries."""
    arr = _numeric(x, what)
    if features is not None and (arr.ndim < 2 or arr.shape[-1] != features):
        raise ValueError(f"{what}: expected [..., {features}] ({features} features on the "
                         f"last axis, a batch axis first), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype)


class LSTM(Layer):
    r"""A stack of LSTM layers, optionally bidirectional, with torch.nn.LSTM's semantics.

    Each step of each layer and direction computes (s = sigmoid, * elementwise)::

        i = s(W_ii x + b_ii + W_hi h + b_hi)      f = s(W_if x + b_if + W_hf h + b_hf)
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)   o = s(W_io x + b_io + W_ho h + b_ho)
        c' = f * c + i * g                        h' = o * tanh(c')

    Layer l > 0 reads the output of layer l-1 (both directions concatenated),
    with dropout applied to it when training.

    Args:
        input_size (I), hidden_size (H), num_layers (L): sizes, each >= 1.
        bidirectional: add a reverse direction per layer (D = 2).
        batch_first: x and y are [B,T,*] instead of [T,B,*] (states stay [L*D,B,H]).
        dropout: probability in [0, 1) of zeroing an inter-layer activation when
            training=True (inverted dropout: survivors scaled by 1/(1-p)).
        backend: "auto" (the CPU kernels for NumPy input), "cpu", or "numpy" (the
            slow reference).
        dtype: np.float32 (default) or np.float64. Inputs of any real dtype are
            cast to it.
        seed: seeds the initial weights and the dropout masks.

    Parameters (`params`, read-only arrays; gradients in `grads`, same names),
    named and shaped as in torch.nn.LSTM, gate blocks in the order i, f, g, o,
    k = layer index, `_reverse` for the reverse direction:
        weight_ih_l{k} [G, I or D*H], weight_hh_l{k} [G,H], bias_ih_l{k} [G],
        bias_hh_l{k} [G] (two biases, as cuDNN has them, so torch weights load as
        they are). Initialised uniform in [-1/sqrt(H), 1/sqrt(H)] like torch.

    Call: ``y, (h_n, c_n) = lstm(x, state=None, training=False, lengths=None)``
        x: [T,B,I] ([B,T,I] with batch_first; [T,I] unbatched)
        state: (h0, c0), each [L*D,B,H] ([L*D,H] unbatched); zeros if omitted
        lengths: [B] ints in [1, T]: sequence b is valid at steps t < lengths[b];
            its outputs past that are zero, h_n and c_n are its state at its last
            valid step, and the reverse direction starts there.
        y: [T,B,D*H]; h_n, c_n: [L*D,B,H]
        training=True keeps what backward needs and turns dropout on.

    Backward: ``dx, (dh0, dc0) = lstm.backward(dy, (dh_n, dc_n))``, after a
    training forward; the state gradient, or either half of it, may be None.
    Parameter gradients are added to `grads` (they accumulate across backward
    calls, as in torch, until `zero_grad()`). Each training forward supports one
    backward (its saved activations are consumed).

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

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 batch_first=False, dropout=0.0, backend="auto", dtype=np.float32,
                 seed=None, return_sequences=True):
        self.spec = LSTMSpec(check_int(input_size, "input_size", 1),
                             check_int(hidden_size, "hidden_size", 1),
                             check_int(num_layers, "num_layers", 1), bool(bidirectional))
        self.dropout = _check_probability(dropout, "dropout")
        self.dtype = _check_dtype(dtype)
        self.batch_first = bool(batch_first)
        self.return_sequences = bool(return_sequences)
        self.backend = dispatch.check_name(backend)
        init_seq, drop_seq = np.random.SeedSequence(seed).spawn(2)
        self._drop_rng = np.random.default_rng(drop_seq)
        init_rng = np.random.default_rng(init_seq)
        k = 1.0 / np.sqrt(self.spec.hidden_size)
        self._packs = PackCache()
        self._init_params({name: init_rng.uniform(-k, k, shape).astype(self.dtype)
                           for name, shape in self.spec.torch_shapes().items()})
        self._cache = None
        self._cache_state = "none"

    # -- sizes -------------------------------------------------------------------------
    input_size = property(lambda self: self.spec.input_size)
    hidden_size = property(lambda self: self.spec.hidden_size)
    num_layers = property(lambda self: self.spec.num_layers)
    bidirectional = property(lambda self: self.spec.bidirectional)

    def __repr__(self):
        s = self.spec
        return (f"LSTM(input_size={s.input_size}, hidden_size={s.hidden_size}, "
                f"num_layers={s.num_layers}, bidirectional={s.bidirectional}, "
                f"batch_first={self.batch_first}, dropout={self.dropout}, "
                f"backend={self.backend!r}, dtype={self.dtype.name})")

    def get_config(self):
        s = self.spec
        return dict(input_size=s.input_size, hidden_size=s.hidden_size,
                    num_layers=s.num_layers, bidirectional=s.bidirectional,
                    batch_first=self.batch_first, dropout=self.dropout,
                    backend=self.backend, dtype=self.dtype.name,
                    return_sequences=self.return_sequences)

    # -- parameters ----------------------------------------------------------------------
    @property
    def params(self):
        """{name: array} in the torch layout; the arrays are read-only (use load_weights,
        or `updating()` to change them in place)."""
        return dict(self._params)

    def _params_changed(self):
        self._packs.invalidate()

    def load_weights(self, weights, layout="torch"):
        """Replace all parameters with `weights` in `layout` ("torch", "keras", "onnx").

        Every name and shape is checked before anything changes: a failed load
        leaves the layer as it was. See numlstm.packing for each layout's form.
        """
        self._replace_params(to_canonical(weights, get_layout(layout), self.spec, self.dtype))

    def export_weights(self, layout="torch"):
        """All parameters as copies in `layout` ("torch", "keras", "onnx")."""
        out = from_canonical(self._params, get_layout(layout), self.spec)
        if isinstance(out, dict):  # the torch layout shares no memory with the layer
            out = {k: np.array(v) for k, v in out.items()}
        return out

    def state_dict(self):
        """The parameters in the torch layout, as torch.nn.LSTM.state_dict() names them."""
        return self.export_weights("torch")

    # -- forward -------------------------------------------------------------------------
    def _state_shape(self, batch):
        s = self.spec
        return (s.num_layers * s.directions,) + ((batch,) if batch else ()) + (
            s.hidden_size,)

    def _as_state(self, value, what, batch):
        """value ([L*D,B,H], or [L*D,H] unbatched) as a C-contiguous [L*D,B,H] array."""
        arr = _numeric(value, what)
        want = self._state_shape(batch)
        if arr.shape != want:
            raise ValueError(f"{what}: expected shape {want}, got {tuple(arr.shape)}")
        arr = np.ascontiguousarray(arr, self.dtype)
        return arr if batch else arr[:, None, :]

    def _check_pair(self, state, what):
        if state is None:
            return None, None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"{what}: expected a pair (h, c), got "
                             f"{type(state).__name__}" +
                             (f" of length {len(state)}" if hasattr(state, "__len__") else ""))
        return state

    def __call__(self, x, state=None, training=False, lengths=None):
        s = self.spec
        x = _numeric(x, "x")
        backend = dispatch.select(self.backend, x)
        if x.ndim not in (2, 3):
            raise ValueError(f"x: expected rank 3 ([T,B,I], or [B,T,I] with batch_first) "
                             f"or rank 2 ([T,I], unbatched), got shape {x.shape}")
        if x.shape[-1] != s.input_size:
            raise ValueError(f"x: expected {s.input_size} input features (last axis), "
                             f"got {x.shape[-1]} (shape {x.shape})")
        batched = x.ndim == 3
        if batched:
            x_tm = x.transpose(1, 0, 2) if self.batch_first else x
        else:
            x_tm = x[:, None, :]
        T, B = x_tm.shape[:2]
        if T < 1 or B < 1:
            raise ValueError(f"x: expected at least one step and one sequence, got shape "
                             f"{x.shape}")
        x_tm = np.ascontiguousarray(x_tm, self.dtype)
        h0, c0 = self._check_pair(state, "state")
        if (h0 is None) != (c0 is None):
            raise ValueError("state: expected both h0 and c0, got one of them as None")
        bdim = B if batched else 0
        if h0 is None:
            h0 = np.zeros(self._state_shape(B), self.dtype)
            c0 = np.zeros_like(h0)
        else:
            h0 = self._as_state(h0, "h0", bdim)
            c0 = self._as_state(c0, "c0", bdim)
        lens = self._check_lengths(lengths, T, B, batched)

        y, h_n, c_n = self._run(backend, x_tm, h0, c0, lens, training, batched)
        return self._to_user(y, batched), (self._state_out(h_n, batched),
                                           self._state_out(c_n, batched))

    def _run(self, backend, x_tm, h0, c0, lens, training, batched=True, private_y=True):
        """All layers and directions on time-major x_tm [T,B,I] -> y [T,B,D*H], h_n, c_n.
        private_y=False: the caller only reads y, so it may be the cache's own array."""
        s = self.spec
        T, B = x_tm.shape[:2]
        cells = self._packs.get(backend, self._params, s)
        H, D = s.hidden_size, s.directions
        h_n = np.empty((s.num_layers * D, B, H), self.dtype)
        c_n = np.empty_like(h_n)
        layers = []
        inp = x_tm
        for l in range(s.num_layers):
            outs, caches = [], []
            for d in range(D):
                k = l * D + d
                y, h_n[k], c_n[k], cache = backend.lstm_forward(
                    cells[k], inp, h0[k], c0[k], lens, d == 1, training)
                outs.append(y)
                caches.append(cache)
            out = outs[0] if D == 1 else np.concatenate(outs, axis=2)
            mask = None
            if training and self.dropout > 0 and l < s.num_layers - 1:
                keep = self._drop_rng.random(out.shape) >= self.dropout
                mask = keep.astype(self.dtype) / self.dtype.type(1.0 - self.dropout)
                out = out * mask
            layers.append((caches, mask))
            inp = out
        y = inp
        if training:
            # The cache holds y; hand the caller a copy it may modify freely.
            if D == 1 and private_y:
                y = y.copy()
            self._cache = dict(layers=layers, backend=backend, cells=cells, T=T, B=B,
                               batched=batched)
            self._cache_state = "ready"
        else:
            self._cache = None
            self._cache_state = "inference"
        return y, h_n, c_n

    def _check_lengths(self, lengths, T, B, batched):
        if lengths is None:
            return None
        if not batched:
            raise ValueError("lengths: only batched input ([T,B,I]) takes lengths")
        arr = _numeric(lengths, "lengths")
        if arr.dtype.kind not in "iu":
            raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
        if arr.shape != (B,):
            raise ValueError(f"lengths: expected shape ({B},), got {arr.shape}")
        if B and (arr.min() < 1 or arr.max() > T):
            raise ValueError(f"lengths: expected values in [1, {T}], got min {arr.min()} "
                             f"max {arr.max()}")
        return np.ascontiguousarray(arr, np.int64)

    def _to_user(self, y, batched):
        if not batched:
            return y[:, 0, :]
        return np.ascontiguousarray(y.transpose(1, 0, 2)) if self.batch_first else y

    def _state_out(self, state, batched):
        return state if batched else state[:, 0, :]

    # -- backward ------------------------------------------------------------------------
    def backward(self, dy, dstate=None):
        """Gradients of a loss with respect to x and to the initial state.

        dy: gradient of y, shaped like y; dstate: (dh_n, dc_n) shaped like
        (h_n, c_n), either may be None. Returns dx, (dh0, dc0) shaped like x and
        the state. Adds parameter gradients into `grads`.
        """
        self._check_ready()
        s, cache = self.spec, self._cache
        T, B, batched = cache["T"], cache["B"], cache["batched"]
        H, D = s.hidden_size, s.directions
        want = (T, B, D * H) if batched else (T, D * H)
        if batched and self.batch_first:
            want = (B, T, D * H)
        dy = _numeric(dy, "dy")
        if tuple(dy.shape) != want:
            raise ValueError(f"dy: expected the shape of y, {want}, got {tuple(dy.shape)}")
        dh_n, dc_n = self._check_pair(dstate, "dstate")
        bdim = B if batched else 0
        zeros = np.zeros(self._state_shape(B), self.dtype)
        dh_n = zeros if dh_n is None else self._as_state(dh_n, "dh_n", bdim)
        dc_n = zeros if dc_n is None else self._as_state(dc_n, "dc_n", bdim)
        if not batched:
            dy = dy[:, None, :]
        elif self.batch_first:
            dy = dy.transpose(1, 0, 2)
        grad = np.ascontiguousarray(dy, self.dtype)

        dx, dh0, dc0 = self._run_backward(grad, dh_n, dc_n)
        return self._to_user(dx, batched), (self._state_out(dh0, batched),
                                            self._state_out(dc0, batched))

    def _check_ready(self):
        if self._cache_state != "ready":
            raise RuntimeError({
                "none": "backward: no forward has run; call the layer with "
                        "training=True first",
                "inference": "backward: the last forward ran with training=False, which "
                             "keeps nothing for backward; call the layer with "
                             "training=True",
                "used": "backward: this forward's activations were already consumed by a "
                        "backward call; run a training forward again",
            }[self._cache_state])

    def _run_backward(self, grad, dh_n, dc_n):
        """Time-major dy [T,B,D*H], dh_n, dc_n [L*D,B,H] -> dx [T,B,I], dh0, dc0."""
        s, cache = self.spec, self._cache
        H, D = s.hidden_size, s.directions
        backend, cells = cache["backend"], cache["cells"]
        self._cache, self._cache_state = None, "used"
        dh0, dc0 = np.empty_like(dh_n), np.empty_like(dc_n)
        new_grads = {}
        for l in range(s.num_layers - 1, -1, -1):
            caches, _ = cache["layers"][l]
            dx = None
            for d in range(D):
                k = l * D + d
                dy_d = grad if D == 1 else np.ascontiguousarray(grad[:, :, d * H:(d + 1) * H])
                dx_d, dh0[k], dc0[k], g = backend.lstm_backward(
                    cells[k], caches[d], dy_d, dh_n[k], dc_n[k])
                sfx = f"_l{l}" + ("_reverse" if d else "")
                for name, key in (("weight_ih", "w_ih"), ("weight_hh", "w_hh"),
                                  ("bias_ih", "b_ih"), ("bias_hh", "b_hh")):
                    new_grads[name + sfx] = g[key]
                dx = dx_d if dx is None else dx + dx_d
            if l > 0:
                mask = cache["layers"][l - 1][1]
                if mask is not None:
                    dx *= mask
            grad = dx
        for name, g in new_grads.items():
            self.grads[name] += g
        return grad, dh0, dc0

    # -- the Sequential protocol (batch-first) -------------------------------------------
    def output_shape(self, shape):
        s = self.spec
        if len(shape) != 3 or shape[-1] not in (None, s.input_size):
            raise ValueError(f"expected input [B,T,{s.input_size}], got {_shape_str(shape)}")
        width = s.directions * s.hidden_size
        return (shape[0], shape[1], width) if self.return_sequences else (shape[0], width)

    def forward(self, x, training=False, lengths=None):
        """x [B,T,I] (batch-first, whatever `batch_first` says) -> y [B,T,D*H], or with
        return_sequences=False the output at each sequence's last valid step [B,D*H]
        (for the reverse direction, its state after reading the whole sequence: step
        0, as Keras returns it)."""
        x = _floats(x, "x", self.dtype, self.spec.input_size)
        if x.ndim != 3 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"x: expected [B,T,{self.spec.input_size}] with B, T >= 1, "
                             f"got shape {x.shape}")
        B, T = x.shape[:2]
        backend = dispatch.select(self.backend, x)
        lens = self._check_lengths(lengths, T, B, True)
        zeros = np.zeros(self._state_shape(B), self.dtype)
        y, h_n, _ = self._run(backend, np.ascontiguousarray(x.transpose(1, 0, 2)), zeros,
                              zeros, lens, training, private_y=False)
        if self.return_sequences:
            return np.ascontiguousarray(y.transpose(1, 0, 2))
        D = self.spec.directions
        return np.concatenate(list(h_n[-D:]), axis=1)

    def backward_output(self, dout):
        """The gradient of forward's output -> that of its input x [B,T,I]."""
        self._check_ready()
        s, T, B = self.spec, self._cache["T"], self._cache["B"]
        H, D = s.hidden_size, s.directions
        want = (B, T, D * H) if self.return_sequences else (B, D * H)
        dout = _numeric(dout, "dout")
        if tuple(dout.shape) != want:
            raise ValueError(f"dout: expected the shape of the output, {want}, got "
                             f"{tuple(dout.shape)}")
        dstate = np.zeros(self._state_shape(B), self.dtype)
        if self.return_sequences:
            dy = np.ascontiguousarray(dout.transpose(1, 0, 2), self.dtype)
        else:
            dy = np.zeros((T, B, D * H), self.dtype)
            dstate[-D:] = np.asarray(dout, self.dtype).reshape(B, D, H).transpose(1, 0, 2)
        dx, _, _ = self._run_backward(dy, dstate, np.zeros_like(dstate))
        return np.ascontiguousarray(dx.transpose(1, 0, 2))


def _shape_str(shape):
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


_ACTIVATIONS = (None, "relu", "tanh", "sigmoid")


class Dense(Layer):
    """A fully connected layer, torch.nn.Linear's parameters: y = act(x W^T + b).

    Applied to the last axis, so it maps [B,F] -> [B,out] and, at every step of a
    sequence, [B,T,F] -> [B,T,out].

    Args:
        in_features, out_features: sizes, each >= 1.
        activation: None (identity: logits stay logits), "relu", "tanh" or "sigmoid".
        dtype: np.float32 (default) or np.float64.
        seed: seeds the initial weights, uniform in [-1/sqrt(in), 1/sqrt(in)] as torch's.

    Parameters: weight [out,in], bias [out].
    """

    def __init__(self, in_features, out_features, activation=None, dtype=np.float32,
                 seed=None):
        self.in_features = check_int(in_features, "in_features", 1)
        self.out_features = check_int(out_features, "out_features", 1)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation: expected one of {_ACTIVATIONS}, got "
                             f"{activation!r}")
        self.activation = activation
        self.dtype = _check_dtype(dtype)
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(self.in_features)
        self._init_params({
            "weight": rng.uniform(-k, k, (self.out_features, self.in_features)).astype(dtype),
            "bias": rng.uniform(-k, k, self.out_features).astype(dtype)})
        self._saved = None

    def __repr__(self):
        return (f"Dense({self.in_features}, {self.out_features}, "
                f"activation={self.activation!r}, dtype={self.dtype.name})")

    def get_config(self):
        return dict(in_features=self.in_features, out_features=self.out_features,
                    activation=self.activation, dtype=self.dtype.name)

    def output_shape(self, shape):
        if len(shape) < 2 or shape[-1] not in (None, self.in_features):
            raise ValueError(f"expected input [..., {self.in_features}], got "
                             f"{_shape_str(shape)}")
        return tuple(shape[:-1]) + (self.out_features,)

    def forward(self, x, training=False, lengths=None):
        """x [..., in] -> y [..., out]."""
        x = _floats(x, "x", self.dtype, self.in_features)
        y = dense_forward_cpu(x.reshape(-1, self.in_features), self._params["weight"],
                              self._params["bias"]).reshape(x.shape[:-1] + (-1,))
        if self.activation == "relu":
            np.maximum(y, 0, out=y)
        elif self.activation == "tanh":
            np.tanh(y, out=y)
        elif self.activation == "sigmoid":
            y = 0.5 * (1 + np.tanh(0.5 * y))  # no overflow warning for large |y|
        self._saved = (x, y if self.activation else None) if training else None
        return y

    def backward_output(self, dout):
        """dout [..., out] -> dx [..., in]; adds to grads["weight"] and grads["bias"]."""
        if self._saved is None:
            raise RuntimeError("backward: run forward with training=True first (each "
                               "training forward supports one backward)")
        x, y = self._saved
        dout = _floats(dout, "dout", self.dtype)
        if dout.shape != x.shape[:-1] + (self.out_features,):
            raise ValueError(f"dout: expected the output's shape "
                             f"{x.shape[:-1] + (self.out_features,)}, got {dout.shape}")
        self._saved = None
        if self.activation == "relu":
            dout = dout * (y > 0)
        elif self.activation == "tanh":
            dout = dout * (1 - y * y)
        elif self.activation == "sigmoid":
            dout = dout * y * (1 - y)
        dx, dw, db = dense_backward_cpu(dout.reshape(-1, self.out_features),
                                        x.reshape(-1, self.in_features),
                                        self._params["weight"])
        self.grads["weight"] += dw
        self.grads["bias"] += db
        return dx.reshape(x.shape)


class Embedding(Layer):
    """A lookup table from integer ids to vectors, torch.nn.Embedding's parameters.

    Args:
        num_embeddings (V): the number of ids, 0..V-1.
        embedding_dim (E): the size of each vector.
        dtype: np.float32 (default) or np.float64.
        seed: seeds the initial weights, standard normal as torch's.

    Parameters: weight [V,E]. Maps ids [B,T] (any integer shape) -> [B,T,E]. The ids
    have no gradient; backward_output returns None.
    """

    def __init__(self, num_embeddings, embedding_dim, dtype=np.float32, seed=None):
        self.num_embeddings = check_int(num_embeddings, "num_embeddings", 1)
        self.embedding_dim = check_int(embedding_dim, "embedding_dim", 1)
        self.dtype = _check_dtype(dtype)
        rng = np.random.default_rng(seed)
        self._init_params({"weight": rng.standard_normal(
            (self.num_embeddings, self.embedding_dim)).astype(dtype)})
        self._ids = None

    def __repr__(self):
        return (f"Embedding({self.num_embeddings}, {self.embedding_dim}, "
                f"dtype={self.dtype.name})")

    def get_config(self):
        return dict(num_embeddings=self.num_embeddings, embedding_dim=self.embedding_dim,
                    dtype=self.dtype.name)

    def output_shape(self, shape):
        return tuple(shape) + (self.embedding_dim,)

    def forward(self, ids, training=False, lengths=None):
        ids = _numeric(ids, "ids")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids: expected integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise ValueError(f"ids: expected values in [0, {self.num_embeddings}), got min "
                             f"{ids.min()} max {ids.max()}")
        self._ids = ids if training else None
        return self._params["weight"][ids]

    def backward_output(self, dout):
        """Adds dout's rows into grads["weight"] at their ids; returns None."""
        if self._ids is None:
            raise RuntimeError("backward: run forward with training=True first (each "
                               "training forward supports one backward)")
        ids, self._ids = self._ids, None
        dout = _floats(dout, "dout", self.dtype)
        if dout.shape != ids.shape + (self.embedding_dim,):
            raise ValueError(f"dout: expected {ids.shape + (self.embedding_dim,)}, got "
                             f"{dout.shape}")
        np.add.at(self.grads["weight"], ids.ravel(), dout.reshape(-1, self.embedding_dim))
        return None


class Dropout(Layer):
    """Zeroes each input element with probability p when training, and scales the
    survivors by 1/(1-p) (inverted dropout, as torch.nn.Dropout); the identity at
    inference. No parameters.

    Args:
        p: the probability of zeroing, in [0, 1).
        seed: seeds the masks.
    """

    def __init__(self, p=0.5, seed=None):
        self.p = _check_probability(p, "p")
        self._drop_rng = np.random.default_rng(seed)
        self._init_params({})
        self._mask = None

    def __repr__(self):
        return f"Dropout(p={self.p})"

    def get_config(self):
        return dict(p=self.p)

    def output_shape(self, shape):
        return tuple(shape)

    def forward(self, x, training=False, lengths=None):
        x = _numeric(x, "x")
        if x.dtype.kind != "f":
            raise TypeError(f"x: expected floats, got dtype {x.dtype}")
        if not training or self.p == 0:
            self._mask = 1 if training else None
            return x
        keep = self._drop_rng.random(x.shape) >= self.p
        self._mask = keep.astype(x.dtype) / x.dtype.type(1 - self.p)
        return x * self._mask

    def backward_output(self, dout):
        if self._mask is None:
            raise RuntimeError("backward: run forward with training=True first")
        mask, self._mask = self._mask, None
        return dout * mask


LAYER_TYPES = {cls.__name__: cls for cls in (LSTM, Dense, Embedding, Dropout)}
