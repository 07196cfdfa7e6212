"""Reduced-precision inference: QuantizedLSTM and QuantizedGRU, which
numlstm.quantize_dynamic makes.

    q = numlstm.quantize_dynamic(lstm_gru_or_model, dtype="int8")   # or "bfloat16"

int8 follows torch.ao.quantization.quantize_dynamic for nn.LSTM and nn.GRU (activations
quantized when they are used, int32 sums, scales and the gate math in float32),
with symmetric weights per output channel (one scale per gate row; torch's
default has one scale a matrix): the input and the state are quantized per row
(x per step and sequence, h per step). bfloat16 rounds the weights, and x and
h when they are used, to bfloat16 and sums their products in float32 (as
vdpbf16ps does, which runs them where the CPU has AVX512-BF16; elsewhere the
same sums run widened to float32). The equations and the kernels:
kernels/cpu/quantized.py.

The layer keeps its float32 weights and quantizes them when it first runs after
they change (`load_params`, `updating`): a checkpoint holds the float weights and
the `quantize` setting, and loading it quantizes them again to the same values.
It is inference-only (training=True, backward and fit raise) and runs on the
CPU. Everything else is the float layer's: stacked, bidirectional, batch_first,
lengths and masks, initial states, stateful, step(), return_sequences and
merge modes in a Sequential model, summary(), predict().

Not quantized: the options that change the cell (the LSTM's proj_size, peephole,
layer_norm, cell_clip, gate_clip, input_forget; the GRU's reset_after=False and
layer_norm; other activations; zoneout), which raise; RNN layers, and Dense and
Embedding layers, which stay in float32 inside a model (torch's quantize_dynamic
also quantizes nn.Linear).
"""
import copy
import warnings

import numpy as np

from .. import dispatch
from ..kernels import cpu as _cpu
from ..kernels.cpu.quantized import (bf16_variant, int8_variant, pack_gru_quantized,
                                     pack_lstm_quantized)
from ..packing import from_canonical
from .cells import GRU, LSTM

DTYPES = ("int8", "bfloat16")
# The options a quantized layer cannot run, and the value each must have.
_PLAIN = {"lstm": {"proj_size": 0, "peephole": False, "layer_norm": False, "cell_clip": None,
                   "gate_clip": None, "input_forget": False, "activation": "tanh",
                   "recurrent_activation": "sigmoid", "zoneout": 0.0},
          "gru": {"reset_after": True, "layer_norm": False, "activation": "tanh",
                  "recurrent_activation": "sigmoid", "zoneout": 0.0}}
_WARNED = set()


def check_quantize_dtype(dtype):
    """dtype, checked: "int8" or "bfloat16" (warning once where int8 runs on the
    portable loop, and once where bfloat16 runs without AVX512-BF16)."""
    if not isinstance(dtype, str):
        raise TypeError(f"dtype: expected 'int8' or 'bfloat16', got {type(dtype).__name__}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected 'int8' or 'bfloat16', got {dtype!r}")
    if dtype in _WARNED:
        return dtype
    if dtype == "int8" and int8_variant() == "generic":
        _WARNED.add(dtype)
        warnings.warn("this CPU has neither VNNI nor AVX2: int8 products run on a "
                      "slower, portable loop (the results are the same)", RuntimeWarning,
                      stacklevel=3)
    if dtype == "bfloat16" and bf16_variant() == "widen":
        _WARNED.add(dtype)
        warnings.warn("this CPU has no AVX512-BF16: bfloat16 products run widened to "
                      "float32, at about half their speed with it (the results are the "
                      "same)", RuntimeWarning, stacklevel=3)
    return dtype


class _QuantizedBackend(dispatch.Backend):
    """The CPU backend of one precision and cell (LSTM or GRU): packs with
    pack_lstm_quantized or pack_gru_quantized and runs their forward (small calls:
    forward_into); no backward. A step is the base class's one-step forward."""
    ops = dispatch.HostOps()

    def __init__(self, dtype, cell):
        self.dtype, self.cell = dtype, cell
        self.name = f"cpu-{dtype}"
        self._pack = pack_gru_quantized if cell == "gru" else pack_lstm_quantized
        self.forward_into = (_cpu.gru_forward_quantized_into if cell == "gru"
                             else _cpu.lstm_forward_quantized_into)

    def table(self, spec):
        """What Recurrent._host_forward reads of a kernel table's row (forward_into):
        this backend has the one cell."""
        return self

    def pack(self, params, spec):
        return [self._pack(*c[:4], self.dtype)
                for c in from_canonical(params, self.layout, spec)]

    def forward(self, spec, cell, x, state, lengths, reverse, training, h_mask=None,
                zone=None):
        if self.cell == "gru":
            y, h = _cpu.gru_forward_quantized_cpu(x, cell, *state, lengths, reverse)
            return y, (h,), None
        y, h, c = _cpu.lstm_forward_quantized_cpu(x, cell, *state, lengths, reverse)
        return y, (h, c), None


class _Quantized:
    """What QuantizedLSTM and QuantizedGRU add to their float layer (the module
    docstring); FLOAT is that layer's class."""
    FLOAT = None

    def __init__(self, *args, quantize="int8", **kwargs):
        kwargs["dtype"] = np.float32
        kwargs.setdefault("backend", "cpu")
        super().__init__(*args, **kwargs)
        self.quantize = check_quantize_dtype(quantize)
        if self.backend not in ("auto", "cpu"):
            raise ValueError(f"backend: a quantized layer runs on the CPU, got "
                             f"{self.backend!r}")
        config = super().get_config()
        changed = [f"{k}={config.get(k, v)!r}" for k, v in _PLAIN[self.cell].items()
                   if config.get(k, v) != v]
        if changed:
            raise ValueError(f"quantize: the quantized {self.FLOAT.__name__} is the plain "
                             f"cell; it does not run {', '.join(changed)}")
        self._qbackend = _QuantizedBackend(self.quantize, self.cell)

    @classmethod
    def from_layer(cls, layer, dtype="int8"):
        """A quantized copy of a float layer (its weights and settings; float64
        weights are rounded to float32 first). The layer is not changed."""
        if not isinstance(layer, cls.FLOAT):
            raise TypeError(f"expected a numlstm.{cls.FLOAT.__name__}, got "
                            f"{type(layer).__name__}")
        config = layer.get_config()
        for key in ("dtype", "quantize"):
            config.pop(key, None)
        q = cls(**config, quantize=check_quantize_dtype(dtype))
        q.load_params({k: v.astype(np.float32) for k, v in layer.params.items()})
        q.name = layer.name
        q._carried = copy.deepcopy(layer._carried) if layer.stateful else None
        return q

    def get_config(self):
        return dict(super().get_config(), quantize=self.quantize)

    # -- the call path: the float layer's, on the quantized backend, inference only ---
    def _kernels(self, backend):
        return self._qbackend

    def _run(self, backend, x_tm, state0, lens, training, batched=True, private_y=True):
        if training:
            raise ValueError(f"{type(self).__name__} is inference-only: training=True "
                             "needs the float layer (quantize after training)")
        return super()._run(backend, x_tm, state0, lens, False, batched, private_y)

    def _check_memory(self, backend, T, B):
        pass  # (a training call raises in _run)

    def backward(self, dy, dstate=None):
        raise ValueError(f"{type(self).__name__} is inference-only: it has no backward")

    def backward_output(self, dout):
        raise ValueError(f"{type(self).__name__} is inference-only: it has no backward")


class QuantizedLSTM(_Quantized, LSTM):
    """An LSTM whose weights run in int8 or bfloat16 (the module docstring): make
    one with quantize_dynamic, or as an LSTM with `quantize="int8"` (or
    "bfloat16") and the LSTM's arguments. Outputs and states are float32."""
    FLOAT = LSTM


class QuantizedGRU(_Quantized, GRU):
    """A GRU whose weights run in int8 or bfloat16 (the module docstring; the
    kernels run it as a four-slot cell, kernels/cpu/quantized.py): make one with
    quantize_dynamic, or as a GRU with `quantize="int8"` (or "bfloat16") and the
    GRU's arguments. Outputs and the state are float32."""
    FLOAT = GRU
