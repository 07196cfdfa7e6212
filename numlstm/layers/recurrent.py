"""The recurrent layer: one implementation of the LSTM's, GRU's and RNN's call path.

Dimensions: T steps, B batch, I input features, H hidden units, G = 4H (LSTM),
3H (GRU) or H (RNN), L layers, D directions (2 when bidirectional, else 1).

Two APIs over the same path (_run and _run_backward): torch's, time-major unless
batch_first (`__call__`, `backward`, `step`), and the Sequential protocol's,
batch-first (`forward`, `backward_output`).
"""
import numpy as np

from .. import dispatch
from ..packing import (PackCache, RecurrentSpec, from_canonical, get_layout, to_canonical,
                       torch_suffix)
from ..validation import (as_floats, as_numeric, available_memory, check_bool, check_dtype,
                          check_finite_params, check_int, check_probability, check_seed,
                          check_zoneout, gib, shape_str)
from .base import Layer, dropout_mask, host, keep_mask
from .state import CallState

MERGE_MODES = ("concat", "sum", "mul", "ave", None)
CPU_NAMES = ("auto", "cpu")  # (the backends that run a host array on the CPU kernels)


class Recurrent(CallState, Layer):
    """What LSTM, GRU and RNN share: a stack of layers of one cell, optionally
    bidirectional, over the backend's kernels. Subclasses set `cell` and the
    state's parts (`_state_parts`: ("h", "c") for the LSTM, ("h",) otherwise).

    States are held as tuples of [L*D,B,H] arrays; `_state_in`/`_state_out` turn
    them into what the user passes and gets: a pair (h, c) for the LSTM, one
    array h for the GRU and the RNN (as torch does).
    """
    cell = None
    _state_parts = ("h",)

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 batch_first=False, dropout=0.0, backend="auto", dtype=np.float32,
                 seed=None, return_sequences=True, merge_mode="concat", stateful=False,
                 recurrent_init="uniform", unit_forget_bias=False, recurrent_dropout=0.0,
                 zoneout=0.0, **cell_options):
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode: expected one of {list(MERGE_MODES)}, got "
                             f"{merge_mode!r}")
        if merge_mode != "concat" and not bidirectional:
            raise ValueError(f"merge_mode={merge_mode!r} merges the two directions of a "
                             "bidirectional layer; pass bidirectional=True")
        allowed = {"lstm": {"cell_clip", "input_forget", "gate_clip", "proj_size", "peephole",
                            "activation", "recurrent_activation", "layer_norm"},
                   "gru": {"reset_after", "activation", "recurrent_activation", "layer_norm"},
                   "rnn": {"nonlinearity"}}[self.cell]
        unknown = sorted(set(cell_options) - allowed)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unexpected argument(s) "
                            f"{', '.join(unknown)}")
        self.spec = RecurrentSpec(check_int(input_size, "input_size", 1),
                                  check_int(hidden_size, "hidden_size", 1),
                                  check_int(num_layers, "num_layers", 1),
                                  check_bool(bidirectional, "bidirectional"),
                                  self.cell, **cell_options)
        self.dropout = check_probability(dropout, "dropout")
        self.recurrent_dropout = check_probability(recurrent_dropout, "recurrent_dropout")
        if self.recurrent_dropout and self.cell == "rnn":
            raise ValueError("recurrent_dropout: the LSTM and the GRU have it, not the RNN")
        self.zoneout = check_zoneout(zoneout)
        if self.zoneout and self.cell == "rnn":
            raise ValueError("zoneout: the LSTM and the GRU have it, not the RNN")
        if isinstance(self.zoneout, tuple) and self.cell == "gru":
            raise ValueError(f"zoneout: the GRU has one state, h, so one rate; got the pair "
                             f"{self.zoneout}")
        self.dtype = check_dtype(dtype)
        self.batch_first = check_bool(batch_first, "batch_first")
        self.return_sequences = check_bool(return_sequences, "return_sequences")
        self.merge_mode = merge_mode
        self.stateful = check_bool(stateful, "stateful")
        self.backend = dispatch.check_name(backend)
        init_seq, drop_seq = np.random.SeedSequence(check_seed(seed)).spawn(2)
        self._drop_rng = np.random.default_rng(drop_seq)
        if recurrent_init not in ("uniform", "orthogonal"):
            raise ValueError(f"recurrent_init: expected 'uniform' or 'orthogonal', got "
                             f"{recurrent_init!r}")
        self.recurrent_init = recurrent_init
        self.unit_forget_bias = check_bool(unit_forget_bias, "unit_forget_bias")
        if self.unit_forget_bias and self.cell != "lstm":
            raise ValueError("unit_forget_bias: only an LSTM has a forget gate")
        init_rng = np.random.default_rng(init_seq)
        self._packs = PackCache()
        self._init_params(self._initial_params(init_rng))
        self._cache = None
        self._cache_state = "none"
        self._carried = None
        self._ops, self._device_io = dispatch.HostOps(), False

    def _initial_params(self, rng):
        """Every parameter uniform in [-1/sqrt(H), 1/sqrt(H)], as torch initialises
        them; then, as asked, each gate block of weight_hh an orthogonal [H,H] matrix
        (a random rotation: the recurrence neither grows nor shrinks the state at
        first; [H,P] orthonormal columns with a projection), peepholes zero, and the
        LSTM's forget-gate bias 1.0 (bias_ih's forget block 1, bias_hh's 0: the cell
        remembers by default, Keras's unit_forget_bias)."""
        H = self.spec.hidden_size
        k = 1.0 / np.sqrt(H)
        params = {name: rng.uniform(-k, k, shape)
                  for name, shape in self.spec.torch_shapes().items()}
        for name, w in params.items():
            if name.startswith("weight_peephole"):
                w[:] = 0  # the layer starts as the plain LSTM
            if name.startswith(("weight_ln", "bias_ln")):  # LN's gains 1, its bias 0
                w[:] = 1.0 if name.startswith("weight") else 0.0
            if name.startswith("weight_hh") and self.recurrent_init == "orthogonal":
                for g in range(self.spec.gates):
                    q, r = np.linalg.qr(rng.standard_normal((H, w.shape[1])))
                    w[g * H:(g + 1) * H] = q * np.sign(np.diag(r))  # uniform over rotations
            if name.startswith("bias") and self.unit_forget_bias:
                w[H:2 * H] = 1.0 if name.startswith("bias_ih") else 0.0  # i, f, g, o
        return {name: w.astype(self.dtype) for name, w in params.items()}

    # -- sizes -------------------------------------------------------------------------
    input_size = property(lambda self: self.spec.input_size)
    hidden_size = property(lambda self: self.spec.hidden_size)
    num_layers = property(lambda self: self.spec.num_layers)
    bidirectional = property(lambda self: self.spec.bidirectional)

    def _cell_config(self):
        return {}

    def get_config(self):
        s = self.spec
        return dict(input_size=s.input_size, hidden_size=s.hidden_size,
                    num_layers=s.num_layers, bidirectional=s.bidirectional,
                    batch_first=self.batch_first, dropout=self.dropout,
                    backend=self.backend, dtype=self.dtype.name,
                    return_sequences=self.return_sequences, merge_mode=self.merge_mode,
                    stateful=self.stateful, recurrent_init=self.recurrent_init,
                    unit_forget_bias=self.unit_forget_bias,
                    recurrent_dropout=self.recurrent_dropout, zoneout=self.zoneout,
                    **self._cell_config())

    def __repr__(self):
        config = self.get_config()
        for key, default in (("return_sequences", True), ("merge_mode", "concat"),
                             ("stateful", False), ("recurrent_init", "uniform"),
                             ("unit_forget_bias", False), ("cell_clip", None),
                             ("input_forget", False), ("gate_clip", None),
                             ("proj_size", 0), ("recurrent_dropout", 0.0), ("zoneout", 0.0),
                             ("peephole", False), ("activation", "tanh"),
                             ("recurrent_activation", "sigmoid"), ("layer_norm", False)):
            if key in config and config[key] == default:
                del config[key]
        return f"{type(self).__name__}(" + ", ".join(
            f"{k}={v!r}" for k, v in config.items()) + ")"

    @property
    def output_size(self):
        """Features of y at each step: D*H for merge_mode="concat", else H (P for H
        with a projection)."""
        s = self.spec
        return s.directions * s.out_size if self.merge_mode == "concat" else s.out_size

    def training_bytes(self, T, B):
        """An estimate of the memory a training step on [T,B] inputs takes at its
        peak (tracemalloc measures 0.7 to 1.15 times this on the CPU backend):
        per layer and direction the activated gates [T,B,G] and two [T,B,H] state
        sequences kept for the backward, the outputs passed between layers (and
        their dropout masks), and the backward's buffers: the gate gradients of a
        layer [T,B,D*G], y and dy [T,B,D*H] and dx [T,B,I]. layer_norm keeps two
        more [T,B,G] per cell (the normalised input and recurrent products)."""
        s = self.spec
        G, H, D = s.gates * s.hidden_size, s.hidden_size, s.directions
        per_cell = T * B * ((3 if s.layer_norm else 1) * G + 2 * H)
        between = (s.num_layers - 1) * T * B * D * H * (2 if self.dropout else 1)
        workspace = T * B * (D * G + 2 * D * H + max(s.input_size, D * H))
        return (s.num_layers * D * per_cell + between + workspace) * self.dtype.itemsize

    def _check_memory(self, backend, T, B):
        """Refuse a training forward whose cache cannot fit in host memory, before
        anything runs (the operating system would otherwise kill the process part
        way). The CUDA backend's cache lives on the GPU, whose allocator says so."""
        if backend.name == "cuda":
            return
        need = self.training_bytes(T, B)
        have = available_memory()
        if have is not None and need > have:
            raise MemoryError(
                f"{type(self).__name__}: training on T={T} steps x B={B} sequences keeps "
                f"about {gib(need)} for the backward pass, but about {gib(have)} of memory "
                f"is available; shorten the sequences (truncated backpropagation), use a "
                f"smaller batch, or run with training=False (no cache)")

    # -- parameters ----------------------------------------------------------------------
    @property
    def params(self):
        """{name: array} in the torch layout; the arrays are read-only (use load_weights,
        or `updating()` to change them in place)."""
        return dict(self._params)

    def _params_changed(self):
        self._packs.invalidate()

    def load_weights(self, weights, layout="torch"):
        """Replace all parameters with `weights` in `layout` ("torch", "keras", "onnx",
        "haste").

        Every name and shape is checked before anything changes: a failed load
        leaves the layer as it was. See numlstm.packing for each layout's form.
        """
        params = to_canonical(weights, get_layout(layout), self.spec, self.dtype)
        check_finite_params(params, f"{type(self).__name__}.load_weights")
        self._replace_params(params)

    def export_weights(self, layout="torch"):
        """All parameters as copies in `layout` ("torch", "keras", "onnx", "haste").

        The LSTM's cell options (cell_clip, gate_clip, input_forget) are not weights:
        a framework that lacks them computes something else with these arrays (to_torch
        refuses such a layer; export_onnx carries gate_clip and input_forget)."""
        out = from_canonical(self._params, get_layout(layout), self.spec)
        if isinstance(out, dict):  # the torch layout shares no memory with the layer
            out = {k: np.array(v) for k, v in out.items()}
        return out

    def state_dict(self):
        """The parameters in the torch layout, as torch's module.state_dict() names them."""
        return self.export_weights("torch")

    @classmethod
    def from_torch(cls, module, **options):
        """A layer with the configuration and weights of a torch.nn.LSTM (GRU, RNN for
        those classes); options (backend=, seed=, return_sequences=, ...) go to the
        constructor. A module with bias=False gets zero biases. Needs torch."""
        from ..torch_io import recurrent_from_torch
        return recurrent_from_torch(cls, module, **options)

    def to_torch(self):
        """The torch.nn.LSTM (GRU, RNN) computing what this layer computes, in eval
        mode, with copies of the weights. Needs torch."""
        from ..torch_io import recurrent_to_torch
        return recurrent_to_torch(self)

    # -- forward -------------------------------------------------------------------------
    def __call__(self, x, state=None, training=False, lengths=None, mask=None):
        s = self.spec
        if (type(x) is np.ndarray and not training and lengths is None and mask is None
                and x.ndim in (2, 3)):
            batched = x.ndim == 3
            out = self._host_forward((x.swapaxes(0, 1) if self.batch_first else x) if batched
                                     else x[:, None], state, batched)
            if out is not None:
                y = out[0]
                return (y[:, 0] if not batched else y.swapaxes(0, 1) if self.batch_first
                        else y), out[1]
        x = as_numeric(x, "x")
        backend = dispatch.select(self.backend, x)
        self._begin(backend, x)
        if x.ndim not in (2, 3):
            raise ValueError(f"x: expected rank 3 ([T,B,I], or [B,T,I] with batch_first) "
                             f"or rank 2 ([T,I], unbatched), got shape {x.shape}")
        if tuple(x.shape)[-1] != s.input_size:
            raise ValueError(f"x: expected {s.input_size} input features (last axis), "
                             f"got {tuple(x.shape)[-1]} (shape {tuple(x.shape)})")
        batched = x.ndim == 3
        if batched:
            T, B = (x.shape[1], x.shape[0]) if self.batch_first else x.shape[:2]
        else:
            T, B = x.shape[0], 1
        if T < 1 or B < 1:
            raise ValueError(f"x: expected at least one step and one sequence, got shape "
                             f"{tuple(x.shape)}")
        state0 = self._initial_state(state, B, batched)
        lens = self._check_lengths(lengths, mask, T, B, batched)
        if training:
            self._check_memory(backend, T, B)
        ops = self._ops
        x_tm = ops.from_host(x)
        if batched and self.batch_first:
            x_tm = ops.swap01(x_tm)
        x_tm = ops.contiguous(x_tm, self.dtype).reshape(T, B, self.spec.input_size)

        y, state_n = self._run(backend, x_tm, state0, lens, training, batched)
        self._carry(state_n)
        return (self._emit(self._to_user(y, batched)),
                self._emit(self._state_out(state_n, batched)))

    def _kernels(self, backend):
        """The backend whose kernels run this layer's cells for a call that the
        dispatcher sent to `backend`: that one (a subclass may run its own, as
        QuantizedLSTM does)."""
        return backend

    def _run(self, backend, x_tm, state0, lens, training, batched=True, private_y=True):
        """All layers and directions on time-major x_tm [T,B,I] -> y (merged as
        merge_mode says) and the final state, a tuple of [L*D,B,H] arrays.
        private_y=False: the caller only reads y, so it may be the cache's own array."""
        s = self.spec
        backend = self._kernels(backend)
        T, B = x_tm.shape[:2]
        cells = self._packs.get(backend, self._params, s)
        D = s.directions
        ops = backend.ops
        state_n = tuple(ops.empty(self._state_shape(B, n), self.dtype)
                        for n in self._state_parts)
        layers = []
        inp = x_tm
        for l in range(s.num_layers):
            outs, caches = [], []
            for d in range(D):
                k = l * D + d
                h_mask = None
                if training and self.recurrent_dropout:  # one mask a sequence, held over time
                    h_mask = dropout_mask(self._drop_rng, (B, s.out_size),
                                           self.recurrent_dropout, self.dtype, self.batch_rows)
                y, st, cache = backend.forward(s, cells[k], inp, tuple(p[k] for p in state0),
                                               lens, d == 1, training, h_mask=h_mask,
                                               zone=self._zone(training, T, B))
                for part, value in zip(state_n, st):
                    ops.assign(part[k], value)
                outs.append(y)
                caches.append(cache)
            last = l == s.num_layers - 1
            mask = None
            if not last:
                out = outs[0] if D == 1 else ops.concat(outs)
                if training and self.dropout > 0:
                    mask = ops.from_host(dropout_mask(  # out is [T,B,D*H]
                        self._drop_rng, out.shape, self.dropout, self.dtype, self.batch_rows,
                        axis=1))
                    out = ops.mul(out, mask)
            else:
                out = outs[0] if D == 1 else self._merge(outs)
                if training and private_y and (D == 1 or self.merge_mode is None):
                    # The cache holds these arrays; hand the caller copies.
                    out = ops.copy(out) if D == 1 else tuple(ops.copy(o) for o in out)
            layers.append((caches, mask))
            inp = out
        if training:
            self._cache = dict(layers=layers, backend=backend, cells=cells, T=T, B=B,
                               batched=batched, outs=outs, device_io=self._device_io)
            self._cache_state = "ready"
        else:
            self._cache = None
            self._cache_state = "inference"
        return inp, state_n

    def _zone(self, training, T, B):
        """Zoneout's weights for one layer and direction, as the kernels' keywords:
        zone_c and zone_h for the LSTM, zone_h for the GRU. When training, 0/1 draws
        [T,B,units], 1 (keep the old value) with the rate's probability, per unit and
        step; at inference the rates themselves, [1,B,units] (the expectation). {}
        without zoneout. units: H, or P for the h of a projected LSTM."""
        if not self.zoneout:
            return {}
        H = self.spec.hidden_size
        rates = self.zoneout if isinstance(self.zoneout, tuple) else (self.zoneout,) * 2
        widths = (H, self.spec.proj_size or H)  # c's units and h's (P with a projection)
        names = ("zone_c", "zone_h") if self.cell == "lstm" else ("zone_h",)
        parts = list(zip(names, rates[-len(names):], widths[-len(names):]))
        if not training:
            return {k: np.full((1, B, n), p, self.dtype) for k, p, n in parts}
        return {k: (~keep_mask(self._drop_rng, (T, B, n), p, self.batch_rows, axis=1))
                .astype(self.dtype) for k, p, n in parts}

    def _merge(self, pair):
        """The two directions' outputs (same shape) merged as merge_mode says."""
        fwd, bwd = pair
        mode, ops = self.merge_mode, self._ops
        if mode == "concat":
            return ops.concat(pair)
        if mode == "sum":
            return ops.add(fwd, bwd)
        if mode == "mul":
            return ops.mul(fwd, bwd)
        if mode == "ave":
            return ops.scale(ops.add(fwd, bwd), 0.5)
        return (fwd, bwd)  # a tuple: _to_user and callers tell a pair by its type

    def _unmerge(self, grad, pair):
        """The gradient of a merged output -> the gradient of each direction's."""
        mode, H, ops = self.merge_mode, self.spec.out_size, self._ops
        if mode == "concat":
            return [ops.features(grad, 0, H), ops.features(grad, H, 2 * H)]
        if mode == "sum":
            return [grad, grad]
        if mode == "mul":
            return [ops.mul(grad, pair[1]), ops.mul(grad, pair[0])]
        if mode == "ave":
            half = ops.scale(grad, 0.5)
            return [half, half]
        return list(grad)

    def _check_lengths(self, lengths, mask, T, B, batched):
        if mask is not None:
            if lengths is not None:
                raise ValueError("pass lengths or mask, not both")
            if not batched:
                raise ValueError("mask: only batched input ([T,B,I]) takes a mask")
            lengths = self._mask_lengths(mask, T, B)
        if lengths is None:
            return None
        if not batched:
            raise ValueError("lengths: only batched input ([T,B,I]) takes lengths")
        arr = host(as_numeric(lengths, "lengths"))
        if arr.dtype.kind not in "iu":
            raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
        if arr.shape != (B,):
            raise ValueError(f"lengths: expected shape ({B},), got {arr.shape}")
        if B and (arr.min() < 1 or arr.max() > T):
            raise ValueError(f"lengths: expected values in [1, {T}], got min {arr.min()} "
                             f"max {arr.max()}")
        return np.ascontiguousarray(arr, np.int64)

    @staticmethod
    def _mask_lengths(mask, T, B):
        """A Keras-style boolean mask [B,T] -> lengths [B], if it is right-padded."""
        m = host(as_numeric(mask, "mask"))
        if m.dtype != np.bool_:
            raise TypeError(f"mask: expected a boolean array [B,T], got dtype {m.dtype}")
        if m.shape != (B, T):
            raise ValueError(f"mask: expected shape ({B}, {T}) ([B,T], batch first), got "
                             f"{m.shape}")
        lengths = m.sum(axis=1)
        bad = np.flatnonzero((m != (np.arange(T) < lengths[:, None])).any(axis=1))
        if len(bad):
            raise ValueError(f"mask: expected each row to be True for its first steps and "
                             f"False after (right padding); rows {bad[:5].tolist()} are not "
                             f"(e.g. row {bad[0]}: {m[bad[0]].astype(int).tolist()[:20]}); "
                             f"move the padding to the end, or pass lengths=")
        empty = np.flatnonzero(lengths == 0)
        if len(empty):
            raise ValueError(f"mask: expected at least one True (valid step) in every row; "
                             f"rows {empty[:5].tolist()} have none")
        return lengths

    def _to_user(self, y, batched):
        if isinstance(y, tuple):
            return tuple(self._to_user(part, batched) for part in y)
        if not batched:
            return y[:, 0, :]
        return self._ops.swap01(y) if self.batch_first else y

    # -- streaming ------------------------------------------------------------------------
    def step(self, x_t, state=None):
        """One step for online inference: x_t [B,I] (or [I]) -> (y_t, state_n).

        y_t is the top layer's h, [B,H] (or [H]); the state is what __call__ takes
        and returns. With state=None a stateful layer continues from the state it
        carries (and carries the new one), any other layer starts from zeros.
        Equal to calling the layer on a sequence of one step.
        """
        if type(x_t) is np.ndarray and x_t.ndim in (1, 2):
            out = self._host_forward(x_t[None] if x_t.ndim == 2 else x_t[None, None], state,
                                     x_t.ndim == 2)
            if out is not None:
                return out[0][0] if x_t.ndim == 2 else out[0][0, 0], out[1]
        if self.spec.bidirectional:
            raise ValueError("step: a bidirectional layer needs the whole sequence (its "
                             "reverse direction starts at the last step); call the layer")
        x_t = as_numeric(x_t, "x_t")
        I = self.spec.input_size
        if x_t.ndim not in (1, 2) or tuple(x_t.shape)[-1] != I:
            raise ValueError(f"x_t: expected [B,{I}] (or [{I}] unbatched), got shape "
                             f"{tuple(x_t.shape)}")
        batched = x_t.ndim == 2
        B = x_t.shape[0] if batched else 1
        if B < 1:
            raise ValueError(f"x_t: expected at least one sequence, got shape "
                             f"{tuple(x_t.shape)}")
        backend = self._kernels(dispatch.select(self.backend, x_t))
        self._begin(backend, x_t)
        ops = self._ops
        state0 = self._initial_state(state, B, batched)
        inp = ops.contiguous(ops.from_host(x_t), self.dtype).reshape(B, I)
        cells = self._packs.get(backend, self._params, self.spec)
        state_n = tuple(ops.empty(p.shape, p.dtype) for p in state0)
        for l in range(self.spec.num_layers):
            state_l = tuple(p[l] for p in state0)
            if self.zoneout:  # its expectation, as a sequence of one step computes it
                st = backend.forward(self.spec, cells[l], inp[None], state_l, None, False,
                                     False, zone=self._zone(False, 1, B))[1]
            else:
                st = backend.step(self.spec, cells[l], inp, state_l)
            for part, value in zip(state_n, st):
                ops.assign(part[l], value)
            inp = st[0]
        self._cache, self._cache_state = None, "inference"
        self._carry(state_n)
        return (self._emit(inp if batched else inp[0]),
                self._emit(self._state_out(state_n, batched)))

    def _host_forward(self, x_tm, state, batched):
        """An inference call's common case (step(), a short call at small B) with
        little Python around the kernels: x_tm [T,B,I] a NumPy array of the
        layer's dtype on the CPU backend; the state None, carried, or NumPy arrays
        that need no conversion ([L,B,H], or [L,H] when not batched); the kernel
        table's forward_into taking every layer on one thread. Returns (the top
        layer's y [T,B,H], the state as the call returns it), or None for
        anything else, which the general path converts, checks (and refuses with
        its errors) and runs on the plan's threads. Both give bitwise the same
        results. What depends only on the batch (the state's shapes, zeros to
        start from, the kernel) is kept per batch (_host_batch). (At B=1, H=128 a
        step's general path took about 30 us of Python around a 7 us kernel, the
        first version of this one 9 us; at T=100, B=1, H=64 a call's about 55 us.)"""
        spec = self.spec
        if (x_tm.dtype != self.dtype or self.backend not in CPU_NAMES or spec.bidirectional
                or self.zoneout or x_tm.shape[2] != spec.input_size):
            return None
        T, B = x_tm.shape[:2]
        if T < 1 or B < 1:
            return None
        memo = self.__dict__.get("_host_batches")
        if memo is None:
            memo = self._host_batches = {}
        kept = memo.get(B)
        if kept is None:
            kept = memo[B] = self._host_batch(B)
        cpu, into, shapes, zeros = kept
        if into is None:
            return None
        per_layer = None  # (the state each layer starts from)
        if state is None:
            if self.stateful and self._carried is not None:
                state = self._carried
                if type(state[0]) is not np.ndarray or state[0].shape != shapes[0]:
                    return None  # (the general path says why)
            else:
                per_layer = zeros
        else:
            parts = (state,) if len(shapes) == 1 else state
            if type(parts) is not tuple or len(parts) != len(shapes):
                return None
            for p, s in zip(parts, shapes):
                if (type(p) is not np.ndarray or p.dtype != self.dtype
                        or p.shape != (s if batched else (s[0], s[2]))
                        or not p.flags.c_contiguous):
                    return None
            state = parts if batched else tuple(p.reshape(s) for p, s in zip(parts, shapes))
        inp = x_tm if x_tm.flags.c_contiguous else np.ascontiguousarray(x_tm)
        cells = self._packs.get(cpu, self._params, spec)
        state_n = [np.empty(s, self.dtype) for s in shapes]
        for l in range(len(cells)):
            y = np.empty((T, B, spec.out_size), self.dtype)
            if not into(inp, cells[l], *(per_layer[l] if per_layer is not None else
                                         [p[l] for p in state]), y, *[p[l] for p in state_n]):
                return None  # (it takes the plan's threads; nothing the caller sees changed)
            inp = y
        self._ops, self._device_io = cpu.ops, False
        self._cache, self._cache_state = None, "inference"
        if self.stateful:
            self._carry(state_n)
        if not batched:
            state_n = [p[:, 0] for p in state_n]
        return inp, (tuple(state_n) if len(state_n) > 1 else state_n[0])

    def _host_batch(self, B):
        """What _host_forward's calls at batch B share: (the CPU kernels, their
        forward_into or None, the state's shapes [L,B,H], and per layer its parts'
        zeros [B,H], which the kernels only read)."""
        cpu = self._kernels(dispatch.BACKENDS["cpu"])
        shapes = tuple(self._state_shape(B, n) for n in self._state_parts)
        zeros = [np.zeros(s, self.dtype) for s in shapes]  # (writable: read-only arrays
        # would be new types to Numba, each kernel compiled again for them)
        return (cpu, cpu.table(self.spec).forward_into, shapes,
                [[z[l] for z in zeros] for l in range(self.spec.num_layers)])

    # -- backward ------------------------------------------------------------------------
    def backward(self, dy, dstate=None):
        """Gradients of a loss with respect to x and to the initial state.

        dy: gradient of y, shaped like y (a pair when merge_mode=None); dstate:
        the gradient of the final state, shaped like it, or None (either half of
        the LSTM's pair may be None). Returns dx and the initial state's
        gradient, shaped like x and the state. Adds parameter gradients into
        `grads`.
        """
        self._check_ready()
        cache = self._cache
        self._ops, self._device_io = cache["backend"].ops, cache["device_io"]
        T, B, batched = cache["T"], cache["B"], cache["batched"]
        want = (T, B, self.output_size) if batched else (T, self.output_size)
        if batched and self.batch_first:
            want = (B, T, self.output_size)
        if self.merge_mode is None and self.spec.bidirectional:
            if not isinstance(dy, (tuple, list)) or len(dy) != 2:
                raise ValueError("dy: merge_mode=None gives y as a pair (forward, backward); "
                                 f"expected a pair of gradients, got {type(dy).__name__}")
            grad = tuple(self._grad_in(g, want, batched, "dy") for g in dy)
        else:
            grad = self._grad_in(dy, want, batched, "dy")
        parts = self._state_parts_in(dstate, "dstate") or (None,) * len(self._state_parts)
        dstate_n = self._state_arrays(parts, B, batched, "d{}_n")
        dx, dstate0 = self._run_backward(grad, dstate_n)
        return (self._emit(self._to_user(dx, batched)),
                self._emit(self._state_out(dstate0, batched)))

    def _grad_in(self, dy, want, batched, what):
        dy = self._same_side(as_numeric(dy, what), what)
        if tuple(dy.shape) != want:
            raise ValueError(f"{what}: expected the shape of y, {want}, got "
                             f"{tuple(dy.shape)}")
        ops = self._ops
        dy = ops.from_host(dy)
        if batched and self.batch_first:
            dy = ops.swap01(dy)
        dy = ops.contiguous(dy, self.dtype)
        return dy if batched else dy.reshape(want[0], 1, want[1])

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

    def _run_backward(self, grad, dstate_n, merged=True):
        """Time-major dy (merged as y, or with merged=False the directions
        concatenated) and the final state's gradient (a tuple of [L*D,B,H]) ->
        dx [T,B,I] and the initial state's gradient."""
        s, cache = self.spec, self._cache
        H, D = s.out_size, s.directions
        backend, cells = cache["backend"], cache["cells"]
        ops = backend.ops
        self._cache, self._cache_state = None, "used"
        dstate0 = tuple(ops.empty(p.shape, p.dtype) for p in dstate_n)
        new_grads = {}
        for l in range(s.num_layers - 1, -1, -1):
            caches, _ = cache["layers"][l]
            if D == 1:
                per_dir = [grad]
            elif merged and l == s.num_layers - 1:
                per_dir = self._unmerge(grad, cache["outs"])
            else:
                per_dir = [ops.features(grad, d * H, (d + 1) * H) for d in range(D)]
            dx = None
            for d in range(D):
                k = l * D + d
                dx_d, ds0, g = backend.backward(s, cells[k], caches[d], per_dir[d],
                                                tuple(p[k] for p in dstate_n))
                for part, value in zip(dstate0, ds0):
                    ops.assign(part[k], value)
                sfx = torch_suffix(l, d)
                for name, value in g.items():  # (the layer's names: dispatch's backward)
                    new_grads[name + sfx] = ops.to_host(value)
                dx = dx_d if dx is None else ops.add(dx, dx_d)
            if l > 0:
                mask = cache["layers"][l - 1][1]
                if mask is not None:
                    dx = ops.mul(dx, mask)
            grad = dx
        for name, g in new_grads.items():
            self.grads[name] += g
        return grad, dstate0

    # -- the Sequential protocol (batch-first) -------------------------------------------
    def output_shape(self, shape):
        s = self.spec
        if self.merge_mode is None and s.bidirectional:
            raise ValueError("merge_mode=None gives a pair of outputs, which a Sequential "
                             "model cannot pass on; choose concat, sum, mul or ave")
        if len(shape) != 3 or shape[-1] not in (None, s.input_size):
            raise ValueError(f"expected input [B,T,{s.input_size}], got {shape_str(shape)}")
        width = self.output_size
        return (shape[0], shape[1], width) if self.return_sequences else (shape[0], width)

    def forward(self, x, training=False, lengths=None):
        """x [B,T,I] (batch-first, whatever `batch_first` says) -> y [B,T,W], or with
        return_sequences=False the output at each sequence's last valid step [B,W]
        (for the reverse direction, its state after reading the whole sequence: step
        0, as Keras returns it); W = output_size."""
        shape = tuple(getattr(x, "shape", None) or np.shape(x))
        if training and len(shape) == 3:  # before x is copied
            self._check_memory(dispatch.select(self.backend, x), shape[1], shape[0])
        x = as_floats(x, "x", self.dtype, self.spec.input_size)
        if x.ndim != 3 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"x: expected [B,T,{self.spec.input_size}] with B, T >= 1, "
                             f"got shape {x.shape}")
        B, T = x.shape[:2]
        if not training and lengths is None and type(x) is np.ndarray:
            out = self._host_forward(x.swapaxes(0, 1), None, True)  # (small calls)
            if out is not None:  # (without lengths the last step is every row's last)
                return out[0].swapaxes(0, 1) if self.return_sequences else out[0][-1].copy()
        backend = dispatch.select(self.backend, x)
        self._begin(backend, x)
        ops = self._ops
        lens = self._check_lengths(lengths, None, T, B, True)
        state0 = self._initial_state(None, B, True)
        y, state_n = self._run(backend, ops.swap01(ops.from_host(x)), state0, lens, training,
                               private_y=False)
        self._carry(state_n)
        if self.return_sequences:
            return self._emit(self._to_batch_first(y))
        D = self.spec.directions
        last = tuple(state_n[0][k] for k in range(len(state_n[0]) - D, len(state_n[0])))
        if training:
            self._cache["last"] = last
        return self._emit(last[0] if D == 1 else self._merge(last))

    def _to_batch_first(self, y):
        if isinstance(y, tuple):
            return tuple(self._ops.swap01(p) for p in y)
        return self._ops.swap01(y)

    def backward_output(self, dout):
        """The gradient of forward's output -> that of its input x [B,T,I]."""
        self._check_ready()
        s, T, B = self.spec, self._cache["T"], self._cache["B"]
        H, D = s.out_size, s.directions
        ops = self._ops = self._cache["backend"].ops
        self._device_io = self._cache["device_io"]
        width = self.output_size
        want = (B, T, width) if self.return_sequences else (B, width)
        dout = as_numeric(dout, "dout")
        if tuple(dout.shape) != want:
            raise ValueError(f"dout: expected the shape of the output, {want}, got "
                             f"{tuple(dout.shape)}")
        dstate = tuple(ops.zeros(self._state_shape(B, n), self.dtype)
                       for n in self._state_parts)
        dout = ops.contiguous(ops.from_host(dout), self.dtype)
        if self.return_sequences:
            dx, _ = self._run_backward(ops.swap01(dout), dstate)
        else:
            # The output is the top layer's final h: its gradient enters as dh_n.
            per_dir = [dout] if D == 1 else self._unmerge(dout, self._cache["last"])
            for d in range(D):
                ops.assign(dstate[0][(s.num_layers - 1) * D + d], per_dir[d])
            dy = ops.zeros((T, B, D * H), self.dtype)
            dx, _ = self._run_backward(dy, dstate, merged=False)
        return self._emit(ops.swap01(dx))
