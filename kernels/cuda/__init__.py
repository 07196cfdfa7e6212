"""CUDA kernels (Numba @cuda.jit). KERNELS below is the table dispatch reads: cell ->
kernels.table.CellKernels(pack, forward, backward, step).

Files (no two import each other; the arrows point to common.py):
    lstm.py, gru.py, rnn.py   each cell's packing, kernels and Python entries
    lstm_norm.py, gru_norm.py the layer-normalised LSTM and GRU, which lstm.py and
                              gru.py hand such a cell to
    lstm_cell.py   the LSTM's device functions shared by lstm.py and lstm_norm.py
    norm.py        layer normalisation shared by lstm_norm.py and gru_norm.py
    common.py      the tiled matrix product, the persistent recurrence's launch
                   plan, and the small elementwise kernels the layers use
    signatures.py  every kernel's argument types, for compiling with no GPU
    resources.py   ptxas's registers and shared memory of each kernel, and every
                   launch plan over the bench grid checked to fit on three GPUs
                   (python -m numlstm.kernels.harness --backend cuda --resources)

Importing this package imports numba.cuda. Under NUMBA_ENABLE_CUDASIM=1 the
kernels run in Numba's simulator (the CI has no GPU), one block per cooperative
grid, at tiny shapes.
"""
from .common import SIMULATED, as_device, is_device  # noqa: F401
from .gru import gru_backward_cuda, gru_forward_cuda, pack_gru_cuda  # noqa: F401
from .lstm import lstm_backward_cuda, lstm_forward_cuda, pack_lstm_cuda  # noqa: F401
from .rnn import pack_rnn_cuda, rnn_backward_cuda, rnn_forward_cuda  # noqa: F401
from ..table import CellKernels

# The table: dispatch looks the kernels up here (kernels/table.py). No streaming step of
# its own: a one-step forward is one.
KERNELS = {
    "lstm": CellKernels(pack_lstm_cuda, lstm_forward_cuda, lstm_backward_cuda, None),
    "gru": CellKernels(pack_gru_cuda, gru_forward_cuda, gru_backward_cuda, None),
    "rnn": CellKernels(pack_rnn_cuda, rnn_forward_cuda, rnn_backward_cuda, None),
}

__all__ = ["KERNELS", "lstm_forward_cuda", "lstm_backward_cuda", "pack_lstm_cuda",
           "gru_forward_cuda", "gru_backward_cuda", "pack_gru_cuda",
           "rnn_forward_cuda", "rnn_backward_cuda", "pack_rnn_cuda"]
