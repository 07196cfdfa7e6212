"""numlstm: LSTM layers whose arithmetic is Numba kernels.

    >>> import numpy as np, numlstm
    >>> lstm = numlstm.LSTM(input_size=8, hidden_size=16, seed=0)
    >>> y, (h_n, c_n) = lstm(np.zeros((10, 4, 8), np.float32))
    >>> y.shape
    (10, 4, 16)
"""
import os as _os

# An installed numlstm holds its kernels as numlstm/kernels. In a source checkout
# they sit beside this package (../kernels), and `python -m pytest` or a script
# run from the repository root imports this folder rather than the installed
# copy; let the package find its kernels there too.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "kernels")) and \
        _os.path.isfile(_os.path.join(_root, "kernels", "__init__.py")):
    __path__.append(_root)

from .version import __version__  # noqa: E402

from . import _malloc  # noqa: E402

_malloc.tune()  # glibc: each training step reuses the last one's memory (see _malloc)

from .checkpoint import load, load_checkpoint, save_checkpoint  # noqa: E402
from .dispatch import available as available_backends  # noqa: E402
from .layers import (GRU, LSTM, RNN, Attention, ConvLSTM1D, ConvLSTM2D, Dense,  # noqa: E402
                     Dropout, Embedding)
from .losses import CrossEntropyLoss, MSELoss  # noqa: E402
from .model import Sequential  # noqa: E402
from .optim import SGD, Adam, AdamW, NonFiniteError, clip_grad_norm  # noqa: E402
from .packing import LAYOUTS, convert  # noqa: E402
from .quantize import quantize_dynamic  # noqa: E402
from .seq2seq import Seq2Seq  # noqa: E402



def _onnx_io():
    # ONNX needs the onnx package (the interop extra), which a plain install lacks:
    # it is imported on first use, not with numlstm.
    try:
        from . import onnx_io
    except ImportError as err:
        raise ImportError(f"ONNX export and import need the onnx package ({err}); "
                          "install it with: pip install 'numlstm[interop]'") from err
    return onnx_io


def export_onnx(obj, path, lengths=False, initial_state=False, dtype=None):
    """Write an LSTM, GRU or RNN layer, or a Sequential model, to `path` as ONNX that
    onnxruntime runs; see numlstm.onnx_io.export_onnx. Needs the onnx package."""
    return _onnx_io().export_onnx(obj, path, lengths=lengths, initial_state=initial_state,
                                  dtype=dtype)


def import_onnx(path):
    """Read a file that export_onnx wrote back into a layer or Sequential model; see
    numlstm.onnx_io.import_onnx. Needs the onnx package."""
    return _onnx_io().import_onnx(path)


__all__ = ["LSTM", "GRU", "RNN", "ConvLSTM1D", "ConvLSTM2D", "Dense", "Dropout", "Embedding",
           "Attention", "Sequential", "Seq2Seq", "MSELoss",
           "CrossEntropyLoss", "SGD", "Adam", "AdamW", "NonFiniteError", "clip_grad_norm", "load",
           "load_checkpoint", "save_checkpoint", "LAYOUTS", "convert",
           "available_backends", "export_onnx", "import_onnx", "quantize_dynamic",
           "__version__"]
