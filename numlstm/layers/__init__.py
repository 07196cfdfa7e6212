"""The layers: the recurrent ones (LSTM, GRU, RNN) and those around them (Dense,
Embedding, Dropout).

Modules, each depending only on the ones above it:
    base.py       the Layer protocol, dropout's masks
    state.py      CallState: the state a call starts from and hands back, and the
                  side (host or GPU) of its arrays
    recurrent.py  Recurrent, the call path of every recurrent layer (torch's API and
                  the Sequential protocol's, both adapters over _run and _run_backward)
    cells.py      LSTM, GRU and RNN: their equations, options and parameters
    basic.py      Dense, Embedding, Dropout
    quantized.py  QuantizedLSTM, QuantizedGRU: int8 or bfloat16 weights, inference only
    conv.py       ConvLSTM2D and ConvLSTM1D: the LSTM with convolutions for gates
    attention.py  Attention: a decoder's attention over an encoder's outputs
                  (numlstm.Seq2Seq's; not a Sequential layer)
Argument checks live in numlstm/validation.py.
"""
from .attention import Attention
from .base import Layer, dropout_mask, keep_mask
from .basic import Dense, Dropout, Embedding
from .cells import CELLS, GRU, LSTM, RNN
from .conv import ConvLSTM, ConvLSTM1D, ConvLSTM2D
from .quantized import QuantizedGRU, QuantizedLSTM
from .recurrent import MERGE_MODES, Recurrent

LAYER_TYPES = {cls.__name__: cls
               for cls in (LSTM, GRU, RNN, Dense, Embedding, Dropout, QuantizedLSTM, QuantizedGRU,
                            ConvLSTM2D, ConvLSTM1D)}

__all__ = ["Layer", "Recurrent", "Attention", "LSTM", "GRU", "RNN", "QuantizedLSTM",
           "QuantizedGRU", "ConvLSTM",
           "ConvLSTM2D", "ConvLSTM1D", "Dense", "Embedding",
           "Dropout", "CELLS", "LAYER_TYPES", "MERGE_MODES", "keep_mask", "dropout_mask"]
