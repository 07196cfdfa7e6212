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

from .dispatch import available as available_backends  # noqa: E402
from .layers import LSTM  # noqa: E402
from .packing import LAYOUTS, convert  # noqa: E402

__version__ = "0.1.0"
__all__ = ["LSTM", "LAYOUTS", "convert", "available_backends", "__version__"]
