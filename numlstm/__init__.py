"""numlstm: LSTM layers whose arithmetic is Numba kernels.

    >>> import numpy as np, numlstm
    >>> lstm = numlstm.LSTM(input_size=8, hidden_size=16, seed=0)
    >>> y, (h_n, c_n) = lstm(np.zeros((10, 4, 8), np.float32))
    >>> y.shape
    (10, 4, 16)
"""
from .dispatch import available as available_backends
from .layers import LSTM
from .packing import LAYOUTS, convert

__version__ = "0.1.0"
__all__ = ["LSTM", "LAYOUTS", "convert", "available_backends", "__version__"]
