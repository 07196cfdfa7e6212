"""Attention of a decoder's outputs over an encoder's: the layer numlstm.Seq2Seq
puts between its decoder and its output layer.

Dimensions: B batch, T decoder steps (queries), S source steps, H the decoder's
output width, K the encoder's output width, A the additive score's width.
"""
from collections import namedtuple

import numpy as np

from ..kernels import reference_attention as ref
from ..kernels.cpu import (attention_backward_cpu, attention_forward_cpu, dense_backward_cpu,
                           dense_blocks, dense_forward_cpu)
from ..validation import as_floats, as_numeric, check_dtype, check_int, check_seed
from .base import Layer

KINDS = ("luong", "bahdanau")

Memory = namedtuple("Memory", "values keys lengths")
Memory.__doc__ = """What a decoder attends to, made once per source batch by
Attention.memory: values [B,S,K] (the encoder's outputs), keys [B,S,Q] (their
projection, Q = H for "luong", A for "bahdanau"), lengths [B] int64."""


def take(memory, rows):
    """The memory of the sources `rows` (an index array), in that order: a beam
    search's copies of each source."""
    return Memory(*(np.ascontiguousarray(part[rows]) for part in memory))


class Attention(Layer):
    """Global attention (Luong et al. 2015) with a multiplicative or an additive score.

    At each decoder step t, with h_t the decoder's output and s_1..s_S the encoder's
    outputs of one sequence (only its first `lengths` steps):

        "luong"     e_ts = h_t . (W_a s_s)                     ("general" score)
        "bahdanau"  e_ts = v . tanh(W_q h_t + W_k s_s)         (additive score)
        a_t = softmax(e_t),   c_t = sum_s a_ts s_s
        out_t = tanh(W_c [c_t; h_t] + b_c)                     (the attentional output)

    The query is the decoder's output at the same step, as in Luong's global
    attention and Keras's Attention / AdditiveAttention layers, not Bahdanau's
    previous state fed back into the decoder's input: so under teacher forcing
    the decoder runs over the whole target as one recurrent call, and attention
    over all steps at once.

    Args:
        query_size (H): the decoder's output width.
        key_size (K): the encoder's output width.
        kind: "luong" (default) or "bahdanau".
        units (A): the additive score's width (default H); not used by "luong".
        dtype: np.float32 (default) or np.float64.
        backend: "cpu" (the compiled kernels, default) or "numpy" (the reference).
        seed: seeds the initial weights, uniform in +-1/sqrt(fan-in) as torch's Linear.

    Parameters: "luong": weight_a [H,K]; "bahdanau": weight_q [A,H], weight_k [A,K],
    v [A]; both: weight_c [H,K+H], bias_c [H].

    Calls: memory(values, lengths, training) -> a Memory, once per source batch;
    forward(h [B,T,H], memory, training) -> (out [B,T,H], weights [B,T,S]);
    backward(dout) -> (dh [B,T,H], dvalues [B,S,K]) after one training memory()
    and forward().
    """

    def __init__(self, query_size, key_size, kind="luong", units=None, dtype=np.float32,
                 backend="cpu", seed=None):
        self.query_size = H = check_int(query_size, "query_size", 1)
        self.key_size = K = check_int(key_size, "key_size", 1)
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.units = A = H if units is None else check_int(units, "units", 1)
        if backend not in ("cpu", "numpy"):
            raise ValueError(f"backend: expected 'cpu' or 'numpy' (attention has no CUDA "
                             f"kernel yet), got {backend!r}")
        self.backend = backend
        self.dtype = check_dtype(dtype)
        rng = np.random.default_rng(check_seed(seed))
        uniform = lambda shape, fan_in: rng.uniform(  # noqa: E731 (three uses, one line)
            -fan_in ** -0.5, fan_in ** -0.5, shape).astype(self.dtype)
        params = ({"weight_a": uniform((H, K), K)} if kind == "luong" else
                  {"weight_q": uniform((A, H), H), "weight_k": uniform((A, K), K),
                   "v": uniform(A, A)})
        params.update(weight_c=uniform((H, K + H), K + H), bias_c=uniform(H, K + H))
        self._init_params(params)
        self._memory = self._saved = None

    def __repr__(self):
        units = f", units={self.units}" if self.kind == "bahdanau" else ""
        return (f"Attention({self.query_size}, {self.key_size}, kind={self.kind!r}{units}, "
                f"dtype={self.dtype.name})")

    def get_config(self):
        return dict(query_size=self.query_size, key_size=self.key_size, kind=self.kind,
                    units=self.units, dtype=self.dtype.name, backend=self.backend)

    # -- products (no BLAS: see kernels/cpu/dense.py) ------------------------------------
    def _params_changed(self):
        self._blocks = {}  # name -> (its bias, the weights as the product reads them)

    def _project(self, x, name, bias=None):
        """x [..., in] @ params[name].T (+ bias, else none) -> [..., out]."""
        w = self._params[name]
        if name not in self._blocks:
            b = np.zeros(w.shape[0], self.dtype) if bias is None else bias
            self._blocks[name] = b, dense_blocks(w, b)
        b, blocks = self._blocks[name]
        return dense_forward_cpu(x.reshape(-1, x.shape[-1]), w, b, blocks).reshape(
            x.shape[:-1] + (w.shape[0],))

    def _project_back(self, dy, x, name):
        """The gradient dy of _project(x, name) -> dx; adds into grads[name]."""
        dx, dw, _ = dense_backward_cpu(dy.reshape(-1, dy.shape[-1]),
                                       x.reshape(-1, x.shape[-1]), self._params[name])
        self.grads[name] += dw
        return dx.reshape(x.shape)

    def _v(self):
        return self._params["v"] if self.kind == "bahdanau" else np.zeros(0, self.dtype)

    # -- calls -----------------------------------------------------------------------------
    def memory(self, values, lengths=None, training=False):
        """The encoder's outputs values [B,S,K] and each source's length (None: S) ->
        the Memory a decoder attends to (keys projected once, for every step)."""
        values = as_floats(values, "values", self.dtype, self.key_size)
        if values.ndim != 3 or 0 in values.shape:
            raise ValueError(f"values: expected [B,S,{self.key_size}] with B, S >= 1, got "
                             f"shape {values.shape}")
        B, S = values.shape[:2]
        if lengths is None:
            lengths = np.full(B, S, np.int64)
        else:
            lengths = as_numeric(lengths, "lengths")
            if lengths.dtype.kind not in "iu":
                raise TypeError(f"lengths: expected integers, got dtype {lengths.dtype}")
            if lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > S:
                raise ValueError(f"lengths: expected {B} integers in [1, {S}], got "
                                 f"{lengths.tolist() if lengths.size <= 8 else lengths.shape}")
            lengths = np.ascontiguousarray(lengths, np.int64)
        keys = self._project(values, "weight_a" if self.kind == "luong" else "weight_k")
        memory = Memory(values, keys, lengths)
        self._memory = memory if training else None
        return memory

    def forward(self, h, memory, training=False):
        """h [B,T,H] (the decoder's outputs) over memory -> (out [B,T,H], weights
        [B,T,S]: each step's attention over the source, zero past its length)."""
        if not isinstance(memory, Memory):
            raise TypeError(f"memory: expected the Memory that attention.memory() returns, "
                            f"got {type(memory).__name__}")
        h = as_floats(h, "h", self.dtype, self.query_size)
        if h.ndim != 3 or h.shape[0] != memory.values.shape[0] or 0 in h.shape:
            raise ValueError(f"h: expected [{memory.values.shape[0]},T,{self.query_size}] "
                             f"(the memory's batch) with T >= 1, got shape {h.shape}")
        if training and self._memory is not memory:
            raise RuntimeError("forward: a training call attends to the memory of the last "
                               "training memory() call")
        q = h if self.kind == "luong" else self._project(h, "weight_q")
        if self.backend == "numpy":
            v = self._params["v"] if self.kind == "bahdanau" else None
            ctx, weights = ref.attention_forward_ref(q, memory.keys, memory.values,
                                                     memory.lengths, v)
        else:
            ctx, weights = attention_forward_cpu(q, memory.keys, memory.values,
                                                 memory.lengths, self._v())
        cat = np.concatenate([ctx, h], axis=-1)
        out = np.tanh(self._project(cat, "weight_c", self._params["bias_c"]))
        self._saved = (h, q, cat, weights, out) if training else None
        return out, weights

    __call__ = forward

    def backward(self, dout):
        """The gradient of forward's out -> (dh [B,T,H], dvalues [B,S,K], the
        keys' path included); adds every parameter's gradient into `grads`."""
        if self._saved is None:
            raise RuntimeError("backward: run memory() and forward() with training=True "
                               "first (each supports one backward)")
        h, q, cat, weights, out = self._saved
        memory, K = self._memory, self.key_size
        dout = as_floats(dout, "dout", self.dtype)
        if dout.shape != out.shape:
            raise ValueError(f"dout: expected the output's shape {out.shape}, got {dout.shape}")
        self._saved = self._memory = None
        dpre = dout * (1 - out * out)
        self.grads["bias_c"] += dpre.reshape(-1, dpre.shape[-1]).sum(axis=0)
        dcat = self._project_back(dpre, cat, "weight_c")
        dctx, dh = np.ascontiguousarray(dcat[..., :K]), dcat[..., K:].copy()
        if self.backend == "numpy":
            v = self._params["v"] if self.kind == "bahdanau" else None
            dq, dkeys, dvalues, dv = ref.attention_backward_ref(
                dctx, q, memory.keys, memory.values, weights, memory.lengths, v)
        else:
            dq, dkeys, dvalues, dv = attention_backward_cpu(
                dctx, q, memory.keys, memory.values, weights, memory.lengths, self._v())
        if self.kind == "luong":
            dh += dq
            dvalues += self._project_back(dkeys, memory.values, "weight_a")
        else:
            self.grads["v"] += dv
            dh += self._project_back(dq, h, "weight_q")
            dvalues += self._project_back(dkeys, memory.values, "weight_k")
        return dh, dvalues

    def output_shape(self, shape):
        return tuple(shape[:-1]) + (self.query_size,)
