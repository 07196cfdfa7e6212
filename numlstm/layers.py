"""Recurrent layers: the public API over the kernels.

Dimensions: T steps, B batch, I input features, H hidden units, G = 4H,
L layers, D directions (2 when bidirectional, else 1).
"""
import numbers

import numpy as np

from . import dispatch
from .packing import LSTMSpec, PackCache, as_array, from_canonical, get_layout, to_canonical

_DTYPES = (np.float32, np.float64)


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


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


class LSTM:
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
                 seed=None):
        self.spec = LSTMSpec(_check_int(input_size, "input_size", 1),
                             _check_int(hidden_size, "hidden_size", 1),
                             _check_int(num_layers, "num_layers", 1), bool(bidirectional))
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise TypeError(f"dropout: expected a number in [0, 1), got "
                            f"{type(dropout).__name__}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout}")
        if np.dtype(dtype) not in [np.dtype(d) for d in _DTYPES]:
            raise TypeError(f"dtype: expected float32 or float64, got {np.dtype(dtype)}")
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.backend = dispatch.check_name(backend)
        self.dtype = np.dtype(dtype)
        init_seq, drop_seq = np.random.SeedSequence(seed).spawn(2)
        self._drop_rng = np.random.default_rng(drop_seq)
        init_rng = np.random.default_rng(init_seq)
        k = 1.0 / np.sqrt(self.spec.hidden_size)
        self._params = {}
        self._set_params({name: init_rng.uniform(-k, k, shape).astype(self.dtype)
                          for name, shape in self.spec.torch_shapes().items()})
        self.grads = {name: np.zeros_like(p) for name, p in self._params.items()}
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

    # -- parameters ----------------------------------------------------------------------
    @property
    def params(self):
        """{name: array} in the torch layout; the arrays are read-only (use load_weights)."""
        return dict(self._params)

    def _set_params(self, params):
        for arr in params.values():
            arr.flags.writeable = False
        self._params = params
        if not hasattr(self, "_packs"):
            self._packs = PackCache()
        self._packs.invalidate()

    def zero_grad(self):
        """Set every gradient in `grads` to zero."""
        for g in self.grads.values():
            g.fill(0)

    def load_weights(self, weights, layout="torch"):
        """Replace all parameters with `weights` in `layout` ("torch", "keras", "onnx").

        Every name and shape is checked before anything changes: a failed load
        leaves the layer as it was. See numlstm.packing for each layout's form.
        """
        self._set_params(to_canonical(weights, get_layout(layout), self.spec, self.dtype))

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
            if D == 1:
                y = y.copy()
            self._cache = dict(layers=layers, backend=backend, cells=cells, T=T, B=B,
                               batched=batched)
            self._cache_state = "ready"
        else:
            self._cache = None
            self._cache_state = "inference"
        return self._to_user(y, batched), (self._state_out(h_n, batched),
                                           self._state_out(c_n, batched))

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

        backend, cells = cache["backend"], cache["cells"]
        self._cache, self._cache_state = None, "used"
        dh0, dc0 = np.empty_like(zeros), np.empty_like(zeros)
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
        dx = self._to_user(grad, batched)
        return dx, (self._state_out(dh0, batched), self._state_out(dc0, batched))
