"""numlstm.quantize_dynamic: inference-only copies of LSTMs and models with int8 or
bfloat16 weights (the layer: numlstm.layers.quantized.QuantizedLSTM)."""
import copy

from .layers import LSTM
from .layers.quantized import QuantizedLSTM, check_quantize_dtype
from .model import Sequential


def quantize_dynamic(obj, dtype="int8"):
    """An inference-only copy of an LSTM, or of a Sequential model with its LSTM
    layers quantized (the rest as they were), with int8 or bfloat16 weights.

    dtype: "int8" (dynamic quantization as torch's quantize_dynamic, with per-channel
    weights: activations quantized per row as they are used, int32 sums; on VNNI or
    AVX2 by the CPU)
    or "bfloat16" (weights, x and h rounded to bfloat16, their products summed in
    float32; on AVX512-BF16's vdpbf16ps where the CPU has it). The original is
    not changed. See numlstm.layers.quantized for what is and is not quantized.
    """
    dtype = check_quantize_dtype(dtype)
    if isinstance(obj, LSTM):
        return QuantizedLSTM.from_layer(obj, dtype)
    if not isinstance(obj, Sequential):
        raise TypeError(f"quantize_dynamic: expected a numlstm.LSTM or Sequential, got "
                        f"{type(obj).__name__}")
    if not any(isinstance(layer, LSTM) for layer in obj.layers):
        raise ValueError("quantize_dynamic: the model has no LSTM layer to quantize")
    layers = [QuantizedLSTM.from_layer(layer, dtype) if isinstance(layer, LSTM)
              else copy.deepcopy(layer) for layer in obj.layers]
    model = Sequential(layers, name=obj.name, seed=obj.seed)
    model.loss = obj.loss  # (evaluate() works; no optimizer: nothing trains)
    return model
