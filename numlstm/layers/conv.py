"""ConvLSTM2D and ConvLSTM1D: the LSTM whose gates are convolutions over a feature
map (Shi et al. 2015), in Keras's form (keras.layers.ConvLSTM2D / ConvLSTM1D).

Frames are channels-last. Dimension letters: T steps, B batch, R x C the input
grid (1-D: L = C, R = 1), I input channels, F filters, R' x C' the state's grid
(the input convolution's output). A step, with * a convolution:

    z = W_x * x_t (strides, padding, dilation) + W_h * h ("same", stride 1) + b
    i, f, g, o = sigmoid(z_i), sigmoid(z_f), tanh(z_g), sigmoid(z_o)
    c' = f c + i g,    h' = o tanh(c')

The kernels are numlstm.kernels' convlstm_* (CPU: one implicit GEMM a step on the
register tile, the gate math fused; CUDA: direct convolutions, a thread an output
element; "numpy": the reference).
"""
import numpy as np

from .. import dispatch
from ..kernels import reference as ref
from ..kernels.conv import conv_geometry
from ..kernels.cpu.convlstm import PackedConvLSTM, convlstm_backward_cpu, convlstm_forward_cpu
from ..packing import convlstm_from_keras, convlstm_to_keras
from ..validation import (as_numeric, check_bool, check_dtype, check_int, check_probability,
                          check_seed, shape_str)
from .base import Layer, dropout_mask, host

PADDINGS = ("valid", "same")


def _pair(value, name, rank, minimum=1):
    """An int or a sequence of `rank` ints, each >= minimum, as a tuple of rank."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,) * rank
    if len(items) != rank:
        raise ValueError(f"{name}: expected an int or {rank} ints, got {value!r}")
    return tuple(check_int(v, name, minimum) for v in items)


def _reference_forward(x, w_ih, w_hh, b, h0, c0, lengths, h_mask, strides, padding,
                       dilation, training):
    y, h, c, cache = ref.convlstm_forward_ref(x, w_ih, w_hh, b, h0, c0, strides, padding,
                                              dilation, lengths, h_mask)
    # (the cache's y is the backward's h: the caller gets a copy to write into)
    return (y.copy(), h, c, cache) if training else (y, h, c, None)


class ConvLSTM(Layer):
    """The call path of ConvLSTM2D and ConvLSTM1D, on 2-D frames (a 1-D layer's
    sequences are frames of one row). Subclasses set `rank` and their input shapes."""
    rank = 2

    def __init__(self, in_channels, filters, kernel_size, strides=1, padding="valid",
                 dilation_rate=1, return_sequences=False, batch_first=False,
                 recurrent_dropout=0.0, unit_forget_bias=True, dtype=np.float32,
                 backend="auto", seed=None):
        rank = self.rank
        self.in_channels = check_int(in_channels, "in_channels", 1)
        self.filters = check_int(filters, "filters", 1)
        self.kernel_size = _pair(kernel_size, "kernel_size", rank)
        self.strides = _pair(strides, "strides", rank)
        self.dilation_rate = _pair(dilation_rate, "dilation_rate", rank)
        if not isinstance(padding, str):
            raise TypeError(f"padding: expected one of {PADDINGS}, got "
                            f"{type(padding).__name__}")
        if padding not in PADDINGS:
            raise ValueError(f"padding: expected one of {PADDINGS}, got {padding!r}")
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"strides {self.strides} and dilation_rate "
                             f"{self.dilation_rate}: a stride and a dilation above 1 "
                             "together are not supported (as in Keras)")
        self.padding = padding
        self.return_sequences = check_bool(return_sequences, "return_sequences")
        self.batch_first = check_bool(batch_first, "batch_first")
        self.recurrent_dropout = check_probability(recurrent_dropout, "recurrent_dropout")
        self.unit_forget_bias = check_bool(unit_forget_bias, "unit_forget_bias")
        self.dtype = check_dtype(dtype)
        self.backend = dispatch.check_name(backend)
        self.seed = check_seed(seed)
        self._drop_rng = np.random.default_rng(self.seed)
        self._init_params(self._initial_params(np.random.default_rng(self.seed)))
        self._cache = None

    # -- parameters ----------------------------------------------------------------------
    def _initial_params(self, rng):
        """Keras's initial weights: glorot_uniform kernel, orthogonal recurrent kernel
        (as the [k*F, 4F] matrix Keras draws), zero bias with the forget gate's at 1
        when unit_forget_bias."""
        F, I, k = self.filters, self.in_channels, self.kernel_size
        area = int(np.prod(k))
        limit = np.sqrt(6.0 / (area * I + area * 4 * F))
        w_ih = rng.uniform(-limit, limit, (4 * F, I) + k)
        q, r = np.linalg.qr(rng.standard_normal((max(area * F, 4 * F), min(area * F, 4 * F))))
        q = q * np.sign(np.diag(r))
        m = q if area * F >= 4 * F else q.T  # [area*F, 4F], orthonormal columns or rows
        w_hh = m.reshape(k + (F, 4 * F)).transpose(rank_last(len(k)))
        b = np.zeros(4 * F)
        if self.unit_forget_bias:
            b[F:2 * F] = 1.0
        return {"weight_ih": w_ih.astype(self.dtype),
                "weight_hh": np.ascontiguousarray(w_hh, self.dtype),
                "bias": b.astype(self.dtype)}

    def _params_changed(self):
        self._packed = self._on_device = None

    def _weights2d(self):
        """weight_ih, weight_hh as 2-D convolutions' [4F,ch,kh,kw]."""
        w_ih, w_hh = self._params["weight_ih"], self._params["weight_hh"]
        if self.rank == 1:
            return w_ih[:, :, None, :], w_hh[:, :, None, :]
        return w_ih, w_hh

    def _device_weights(self):
        """weight_ih, weight_hh (2-D convolutions') and bias on the GPU, copied once
        per change of the parameters."""
        if getattr(self, "_on_device", None) is None:
            from ..kernels.cuda.common import as_device
            self._on_device = tuple(as_device(np.ascontiguousarray(w)) for w in
                                    self._weights2d() + (self._params["bias"],))
        return self._on_device

    def _packed_cpu(self):
        if getattr(self, "_packed", None) is None:
            self._packed = PackedConvLSTM(*self._weights2d(), self._params["bias"])
        return self._packed

    def load_weights(self, weights, layout="torch"):
        """Replace the parameters with `weights`: layout "torch" (this layer's `params`
        dict, names and shapes as listed in the class docstring) or "keras" (Keras's
        layer.get_weights(): [kernel [*k,I,4F], recurrent_kernel [*k,F,4F], bias
        [4F]], gates i, f, c, o). Names, shapes and values are checked before
        anything changes."""
        if layout == "torch":
            self.load_params(weights)
        elif layout == "keras":
            shapes = {k: v.shape for k, v in self._params.items()}
            self.load_params(convlstm_from_keras(weights, shapes, self.dtype))
        else:
            raise ValueError(f"layout: expected 'torch' or 'keras', got {layout!r}")

    def export_weights(self, layout="torch"):
        """Copies of the parameters in `layout` ("torch" or "keras", see load_weights)."""
        if layout == "torch":
            return {k: np.array(v) for k, v in self._params.items()}
        if layout == "keras":
            return convlstm_to_keras(self._params)
        raise ValueError(f"layout: expected 'torch' or 'keras', got {layout!r}")

    def __repr__(self):
        return (f"{type(self).__name__}({self.in_channels}, {self.filters}, kernel_size="
                f"{self.kernel_size}, strides={self.strides}, padding={self.padding!r}, "
                f"dtype={self.dtype.name})")

    def get_config(self):
        return dict(in_channels=self.in_channels, filters=self.filters,
                    kernel_size=list(self.kernel_size), strides=list(self.strides),
                    padding=self.padding, dilation_rate=list(self.dilation_rate),
                    return_sequences=self.return_sequences, batch_first=self.batch_first,
                    recurrent_dropout=self.recurrent_dropout,
                    unit_forget_bias=self.unit_forget_bias, dtype=self.dtype.name,
                    backend=self.backend, seed=self.seed)

    # -- shapes --------------------------------------------------------------------------
    def _grid2d(self, grid):
        return (1,) + tuple(grid) if self.rank == 1 else tuple(grid)

    def _geometry2d(self):
        one = lambda v: ((1,) + v) if self.rank == 1 else v  # noqa: E731
        return one(self.strides), one(self.dilation_rate)

    def state_grid(self, grid):
        """The state's grid (R', C') (1-D: (L',)) for an input grid; None stays None."""
        out = tuple(None if n is None else
                    conv_geometry(n, k, s, d, self.padding)[0]
                    for n, k, s, d in zip(grid, self.kernel_size, self.strides,
                                          self.dilation_rate))
        if any(n == 0 for n in out):
            raise ValueError(f"frames of {shape_str(grid)} are smaller than the kernel "
                             f"{self.kernel_size} (dilation {self.dilation_rate}) with "
                             f"padding='valid'")
        return out

    def output_shape(self, shape):
        """[B,T,*grid,I] -> [B,T,*grid',F] (return_sequences) or [B,*grid',F]."""
        want = 3 + self.rank
        if len(shape) != want or shape[-1] not in (None, self.in_channels):
            raise ValueError(f"expected input [B, T, {', '.join(['…'] * self.rank)}, "
                             f"{self.in_channels}] (rank {want}), got {shape_str(shape)}")
        grid = self.state_grid(shape[2:-1])
        head = (shape[0], shape[1]) if self.return_sequences else (shape[0],)
        return head + grid + (self.filters,)

    # -- calls ---------------------------------------------------------------------------
    def _check_x(self, x, batch_first):
        x = host(as_numeric(x, "x"))  # (a device array is copied to the host)
        want = 3 + self.rank
        if x.ndim != want or x.shape[-1] != self.in_channels:
            order = "B,T" if batch_first else "T,B"
            grid = "R,C" if self.rank == 2 else "L"
            raise ValueError(f"x: expected [{order},{grid},{self.in_channels}] (rank {want}, "
                             f"{self.in_channels} channels last), got shape {x.shape}")
        if x.dtype.kind not in "fiu":
            raise TypeError(f"x: expected real numbers, got dtype {x.dtype}")
        if min(x.shape) < 1:
            raise ValueError(f"x: expected at least one step, sequence and pixel, got "
                             f"shape {x.shape}")
        self.state_grid(x.shape[2:-1])
        x = np.ascontiguousarray(x, self.dtype)
        x = x.swapaxes(0, 1) if batch_first else x
        x = np.ascontiguousarray(x)
        return x if self.rank == 2 else x[:, :, None]

    def _check_lengths(self, lengths, T, B):
        if lengths is None:
            return None
        arr = host(as_numeric(lengths, "lengths"))
        if arr.dtype.kind not in "iu":
            raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
        if arr.shape != (B,):
            raise ValueError(f"lengths: expected shape ({B},), got {arr.shape}")
        if arr.min() < 1 or arr.max() > T:
            raise ValueError(f"lengths: expected values in [1, {T}], got min {arr.min()} "
                             f"max {arr.max()}")
        return arr.astype(np.int64)

    def _check_state(self, state, shape):
        """(h0, c0) of the state's shape [B,*grid',F] (2-D internally), or zeros."""
        if state is None:
            z = np.zeros(shape, self.dtype)
            return z, z
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"state: expected a pair (h0, c0), got {type(state).__name__}")
        user = shape if self.rank == 2 else shape[:1] + shape[2:]
        out = []
        for name, s in zip(("h0", "c0"), state):
            s = as_numeric(s, name)
            if tuple(s.shape) != user:
                raise ValueError(f"{name}: expected shape {user}, got {tuple(s.shape)}")
            out.append(np.ascontiguousarray(s, self.dtype).reshape(shape))
        return tuple(out)

    def _run(self, x_tm, state, lengths, training, batch_first_y=False):
        """x_tm [T,B,R,C,I] (2-D) -> y [T,B,R',C',F] ([B,T,...] with batch_first_y),
        h_n, c_n (2-D); keeps the cache for backward when training."""
        backend = dispatch.select(self.backend, x_tm)
        T, B = x_tm.shape[:2]
        grid = self._grid2d(self.state_grid(x_tm.shape[2:4] if self.rank == 2
                                            else x_tm.shape[3:4]))
        shape = (B,) + grid + (self.filters,)
        h0, c0 = self._check_state(state, shape)
        lengths = self._check_lengths(lengths, T, B)
        mask = None
        if training and self.recurrent_dropout > 0:
            mask = dropout_mask(self._drop_rng, shape, self.recurrent_dropout, self.dtype,
                                self.batch_rows)
        strides, dilation = self._geometry2d()
        if backend.name == "numpy":
            w_ih, w_hh = self._weights2d()
            y, h, c, cache = _reference_forward(x_tm, w_ih, w_hh, self._params["bias"], h0,
                                                c0, lengths, mask, strides, self.padding,
                                                dilation, training)
            cache = ("numpy", cache) if training else None
        elif backend.name == "cuda":
            from ..kernels.cuda.convlstm import convlstm_forward_cuda
            y, h, c, cache = convlstm_forward_cuda(x_tm, *self._device_weights(), h0, c0,
                                                   lengths, mask, strides, self.padding,
                                                   dilation, training)
            cache = ("cuda", cache) if training else None
        else:
            y, h, c, cache = convlstm_forward_cpu(x_tm, self._packed_cpu(), h0, c0, lengths,
                                                  mask, strides, self.padding, dilation,
                                                  training, batch_first_y)
            cache = ("cpu", cache) if training else None
            batch_first_y = False  # (done)
        self._cache = cache
        self._call_shapes = ((T,) + h.shape, h.shape)  # (y time-major, the state)
        return (np.ascontiguousarray(y.swapaxes(0, 1)) if batch_first_y else y), h, c

    def _gradients(self, dy, dh_n, dc_n):
        """Backward of the last training call (2-D shapes) -> dx [T,B,R,C,I], dh0, dc0;
        adds the weights' gradients to grads."""
        if self._cache is None:
            raise RuntimeError("backward: run forward with training=True first (each "
                               "training forward supports one backward)")
        (which, cache), self._cache = self._cache, None
        if which == "numpy":
            g = ref.convlstm_backward_ref(dy, dh_n, dc_n, cache)
        elif which == "cuda":
            from ..kernels.cuda.convlstm import convlstm_backward_cuda
            g = convlstm_backward_cuda(dy, dh_n, dc_n, cache)
        else:
            g = convlstm_backward_cpu(dy, dh_n, dc_n, cache)
        squeeze = (lambda w: w[:, :, 0]) if self.rank == 1 else (lambda w: w)
        self.grads["weight_ih"] += squeeze(g["dw_ih"])
        self.grads["weight_hh"] += squeeze(g["dw_hh"])
        self.grads["bias"] += g["db"]
        return g["dx"], g["dh0"], g["dc0"]

    def _user(self, a, time_axis, batch_first=None):
        """A 2-D result back to the caller's layout (1-D: the row axis dropped; time
        axis second when batch_first, None: the layer's setting)."""
        if self.rank == 1:
            a = a[..., 0, :, :]
        first = self.batch_first if batch_first is None else batch_first
        return a.swapaxes(0, 1) if time_axis and first else a

    def __call__(self, x, state=None, training=False, lengths=None):
        """x [T,B,R,C,I] ([B,T,...] with batch_first; 1-D: [T,B,L,I]) -> (y, (h_n, c_n)):
        y [T,B,R',C',F] every step's h (zero past a sequence's length), h_n and c_n
        [B,R',C',F] the final state (each sequence's at its last step). state: (h0, c0)
        of h_n's shape, zeros if None. backward(dy, dh_n=None, dc_n=None) after a
        training call returns (dx, (dh0, dc0))."""
        x_tm = self._check_x(x, self.batch_first)
        y, h, c = self._run(x_tm, state, lengths, check_bool(training, "training"))
        return self._user(y, True), (self._user(h, False), self._user(c, False))

    def backward(self, dy, dh_n=None, dc_n=None):
        if self._cache is None:
            raise RuntimeError("backward: run forward with training=True first")
        y_shape, s_shape = self._call_shapes
        dy = self._grad_in(dy, "dy", y_shape, True)
        dh = self._grad_in(dh_n, "dh_n", s_shape, False)
        dc = self._grad_in(dc_n, "dc_n", s_shape, False)
        dx, dh0, dc0 = self._gradients(dy, dh, dc)
        return self._user(dx, True), (self._user(dh0, False), self._user(dc0, False))

    def _grad_in(self, g, name, shape, time_axis, batch_first=None, what="shape"):
        """A gradient given in the caller's layout (as _user gives) -> `shape` (2-D,
        time-major), zeros for None; ValueError naming `what` it should have been."""
        if g is None:
            return np.zeros(shape, self.dtype)
        g = as_numeric(g, name)
        user = self._user(np.broadcast_to(np.bool_(0), shape), time_axis, batch_first).shape
        if tuple(g.shape) != user:
            raise ValueError(f"{name}: expected {what} {user}, got {tuple(g.shape)}")
        first = self.batch_first if batch_first is None else batch_first
        g = g.swapaxes(0, 1) if time_axis and first else g
        return np.ascontiguousarray(g, self.dtype).reshape(shape)

    # -- the Sequential protocol (batch-first) --------------------------------------------
    def forward(self, x, training=False, lengths=None):
        """x [B,T,*grid,I] -> [B,T,*grid',F] (return_sequences) or [B,*grid',F], the
        last step's h of each sequence."""
        x_tm = self._check_x(x, True)
        y, h, c = self._run(x_tm, None, lengths, training, batch_first_y=True)
        # (y is batch-first already: no time axis to move)
        return self._user(y if self.return_sequences else h, False)

    def backward_output(self, dout):
        if self._cache is None:
            raise RuntimeError("backward: run forward with training=True first (each "
                               "training forward supports one backward)")
        y_shape, s_shape = self._call_shapes
        seq = self.return_sequences
        grad = self._grad_in(dout, "dout", y_shape if seq else s_shape, seq,
                             batch_first=True, what="the output's shape")
        zero = np.zeros(s_shape, self.dtype)
        dx, _, _ = self._gradients(grad if seq else np.zeros(y_shape, self.dtype),
                                   zero if seq else grad, zero)
        return np.ascontiguousarray(self._user(dx, True, batch_first=True))


def rank_last(n):
    """The axes moving [*kernel, F, 4F] to [4F, F, *kernel]."""
    return (n + 1, n) + tuple(range(n))


class ConvLSTM2D(ConvLSTM):
    """A ConvLSTM over 2-D frames, Keras's ConvLSTM2D (data_format="channels_last").

    Args:
        in_channels (I), filters (F): input channels and the state's channels.
        kernel_size, strides, dilation_rate: an int or a pair (rows, columns). The
            input convolution uses them; the recurrent one has the same kernel size,
            stride 1, no dilation and "same" padding, as Keras's.
        padding: "valid" or "same" (Keras's: ceil(size / stride) outputs, the odd
            padding pixel after).
        return_sequences: in a Sequential model, output every step [B,T,R',C',F]
            (True) or the last step's h [B,R',C',F] (False, default).
        batch_first: the torch-style call layer(x) takes [B,T,...] instead of
            [T,B,...] (a Sequential model always passes batch-first).
        recurrent_dropout: the probability of dropping each entry of h where it
            enters the recurrent convolution when training (one mask a call).
        unit_forget_bias: start the forget gate's bias at 1 (Keras's default).
        dtype: np.float32 (default) or np.float64.
        backend: "auto" (the CPU for NumPy arrays), "cpu", "numpy" (the reference)
            or "cuda" (kernels/cuda/convlstm.py's direct convolutions; this layer
            takes and returns NumPy arrays on every backend, the weights stay on
            the GPU between calls).
        seed: seeds the initial weights (Keras's initialisers) and dropout masks.

    Parameters (torch's Conv2d orientation, gate blocks i, f, g, o as the LSTM's):
        weight_ih [4F,I,kh,kw], weight_hh [4F,F,kh,kw], bias [4F].
    load_weights/export_weights (numlstm.packing) convert Keras's kernel
    [kh,kw,I,4F], recurrent_kernel [kh,kw,F,4F] and bias [4F].

    Example::

        layer = numlstm.ConvLSTM2D(1, 8, 3, padding="same", seed=0)
        y, (h, c) = layer(np.zeros((5, 2, 16, 16, 1), np.float32))   # y [5,2,16,16,8]
    """
    rank = 2


class ConvLSTM1D(ConvLSTM):
    """A ConvLSTM over 1-D sequences of feature vectors, Keras's ConvLSTM1D: as
    ConvLSTM2D with frames [L, I] (inputs [T,B,L,I]), kernel_size, strides and
    dilation_rate an int, and weights weight_ih [4F,I,k], weight_hh [4F,F,k],
    bias [4F] (Keras: kernel [k,I,4F], recurrent_kernel [k,F,4F])."""
    rank = 1
