"""numlstm.quantize_dynamic: inference-only copies of LSTMs, GRUs and models with int8
or bfloat16 weights (the layers: numlstm.layers.quantized.QuantizedLSTM and
QuantizedGRU)."""
import copy

from .layers import GRU, LSTM
from .layers.quantized import QuantizedGRU, QuantizedLSTM, check_quantize_dtype
from .model import Sequential

_QUANTIZED = ((LSTM, QuantizedLSTM), (GRU, QuantizedGRU))


def _quantized(layer, dtype):
    """The quantized copy of an LSTM or GRU layer, else None."""
    for float_cls, cls in _QUANTIZED:
        if isinstance(layer, float_cls):
            return cls.from_layer(layer, dtype)
    return None


def quantize_dynamic(obj, dtype="int8"):
    """An inference-only copy of an LSTM or GRU, or of a Sequential model with its
    LSTM and GRU layers quantized (the rest as they were), with int8 or bfloat16
    weights, as torch.ao.quantization.quantize_dynamic does for nn.LSTM and nn.GRU.

    dtype: "int8" (dynamic quantization as torch's quantize_dynamic, with per-channel
    weights: activations quantized per row as they are used, int32 sums; on VNNI or
    AVX2 by the CPU)
    or "bfloat16" (weights, x and h rounded to bfloat16, their products summed in
    float32; on AVX512-BF16's vdpbf16ps where the CPU has it). The original is
    not changed. See numlstm.layers.quantized for what is and is not quantized.
    """
    dtype = check_quantize_dtype(dtype)
    single = _quantized(obj, dtype)
    if single is not None:
        return single
    if not isinstance(obj, Sequential):
        raise TypeError(f"quantize_dynamic: expected a numlstm.LSTM, GRU or Sequential, got "
                        f"{type(obj).__name__}")
    if not any(isinstance(layer, (LSTM, GRU)) for layer in obj.layers):
        raise ValueError("quantize_dynamic: the model has no LSTM or GRU layer to quantize")
    layers = [_quantized(layer, dtype) or copy.deepcopy(layer) for layer in obj.layers]
    model = Sequential(layers, name=obj.name, seed=obj.seed)
    model.loss = obj.loss  # (evaluate() works; no optimizer: nothing trains)
    return model
