"""Dense, Embedding and Dropout: the layers around the recurrent ones in a model."""
import numpy as np

from ..kernels.cpu import (dense_backward_cpu, dense_blocks, dense_forward_cpu,
                           embedding_backward_cpu)
from ..validation import (as_floats, as_numeric, check_dtype, check_int, check_probability,
                          check_seed, shape_str)
from .base import Layer, dropout_mask

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
        self.dtype = check_dtype(dtype)
        rng = np.random.default_rng(check_seed(seed))
        k = 1.0 / np.sqrt(self.in_features)
        self._init_params({
            "weight": rng.uniform(-k, k, (self.out_features, self.in_features)).astype(dtype),
            "bias": rng.uniform(-k, k, self.out_features).astype(dtype)})
        self._saved = None

    _blocks = None  # the weights as the product reads them, kept until they change

    def _params_changed(self):
        self._blocks = None

    def __repr__(self):
        return (f"Dense({self.in_features}, {self.out_features}, "
                f"activation={self.activation!r}, dtype={self.dtype.name})")

    def get_config(self):
        return dict(in_features=self.in_features, out_features=self.out_features,
                    activation=self.activation, dtype=self.dtype.name)

    def output_shape(self, shape):
        if len(shape) < 2 or shape[-1] not in (None, self.in_features):
            raise ValueError(f"expected input [..., {self.in_features}], got "
                             f"{shape_str(shape)}")
        return tuple(shape[:-1]) + (self.out_features,)

    def forward(self, x, training=False, lengths=None):
        """x [..., in] -> y [..., out]."""
        x = as_floats(x, "x", self.dtype, self.in_features)
        if x.size == 0:  # no rows: nothing for a kernel to do
            self._saved = (x, None) if training else None
            return np.zeros(x.shape[:-1] + (self.out_features,), self.dtype)
        w, b = self._params["weight"], self._params["bias"]
        if self._blocks is None:
            self._blocks = dense_blocks(w, b)
        y = dense_forward_cpu(x.reshape(-1, self.in_features), w, b,
                              self._blocks).reshape(x.shape[:-1] + (-1,))
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
        dout = as_floats(dout, "dout", self.dtype)
        if dout.shape != x.shape[:-1] + (self.out_features,):
            raise ValueError(f"dout: expected the output's shape "
                             f"{x.shape[:-1] + (self.out_features,)}, got {dout.shape}")
        self._saved = None
        if x.size == 0:
            return np.zeros_like(x)
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
        self.dtype = check_dtype(dtype)
        rng = np.random.default_rng(check_seed(seed))
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

    def check_ids(self, ids):
        """ids as an integer array with values in [0, V); TypeError/ValueError else."""
        ids = as_numeric(ids, "ids")
        if ids.dtype.kind not in "iu" and not (ids.size == 0 and ids.dtype.kind == "f"):
            raise TypeError(f"ids: expected integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise ValueError(f"ids: expected values in [0, {self.num_embeddings}), got min "
                             f"{ids.min()} max {ids.max()}")
        return ids.astype(np.intp, copy=False)

    def forward(self, ids, training=False, lengths=None):
        ids = self.check_ids(ids)
        # (a copy: the caller may reuse its array before backward sends the gradients)
        self._ids = ids.copy() if training else None
        return self._params["weight"][ids]

    def backward_output(self, dout):
        """Adds dout's rows into grads["weight"] at their ids; returns None."""
        if self._ids is None:
            raise RuntimeError("backward: run forward with training=True first (each "
                               "training forward supports one backward)")
        ids, self._ids = self._ids, None
        dout = as_floats(dout, "dout", self.dtype)
        if dout.shape != ids.shape + (self.embedding_dim,):
            raise ValueError(f"dout: expected {ids.shape + (self.embedding_dim,)}, got "
                             f"{dout.shape}")
        embedding_backward_cpu(self.grads["weight"], ids.ravel(),
                               dout.reshape(-1, self.embedding_dim))
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
        self.p = check_probability(p, "p")
        self._drop_rng = np.random.default_rng(check_seed(seed))
        self._init_params({})
        self._mask = None

    def __repr__(self):
        return f"Dropout(p={self.p})"

    def get_config(self):
        return dict(p=self.p)

    def output_shape(self, shape):
        return tuple(shape)

    def forward(self, x, training=False, lengths=None):
        x = as_numeric(x, "x")
        if x.dtype.kind != "f":
            raise TypeError(f"x: expected floats, got dtype {x.dtype}")
        if not training or self.p == 0:
            self._mask = np.ones((), x.dtype) if training else None
            self._shape = x.shape
            return x
        self._mask = dropout_mask(self._drop_rng, x.shape, self.p, x.dtype, self.batch_rows)
        self._shape = x.shape
        return x * self._mask

    def backward_output(self, dout):
        if self._mask is None:
            raise RuntimeError("backward: run forward with training=True first")
        dout = as_numeric(dout, "dout")
        if dout.dtype.kind != "f" or dout.shape != self._shape:
            raise ValueError(f"dout: expected floats of the output's shape {self._shape}, "
                             f"got {dout.dtype} of shape {dout.shape}")
        mask, self._mask = self._mask, None
        return dout * mask
