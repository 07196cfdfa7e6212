"""CPU kernels (Numba @njit), one file per cell (lstm.py, gru.py, rnn.py) or layer
(dense.py).

Importing this package configures Numba for the kernels, unless the user's
environment already decided (NUMBA_THREADING_LAYER, NUMBA_CPU_FEATURES):

* OpenMP first among threading layers: a parallel region costs about 2 us
  there against 24-130 us on workqueue (measured on 2 cores), and the time loop
  enters one region per step.
* On AVX-512 hosts, CPU features gain "-prefer-256-bit", so LLVM emits 512-bit
  vectors: the register-tiled products run about 3x faster (LLVM otherwise
  keeps 256-bit vectors, and the 4x64 tile spills). Numba reads this when it
  first compiles; if other Numba code compiled before numlstm was imported, the
  kernels stay correct but run at the slower width.
"""
import os

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
if "NUMBA_CPU_FEATURES" not in os.environ and numba.config.CPU_FEATURES is None:
    import llvmlite.binding as _llvm

    _features = _llvm.get_host_cpu_features().flatten()
    if "+avx512f" in _features.split(","):
        numba.config.CPU_FEATURES = _features + ",-prefer-256-bit"

from .dense import dense_backward_cpu, dense_forward_cpu  # noqa: E402
from .gru import gru_backward_cpu, gru_forward_cpu, gru_step_cpu, pack_gru_cpu  # noqa: E402
from .lstm import lstm_backward_cpu, lstm_forward_cpu, lstm_step_cpu, pack_lstm_cpu  # noqa: E402
from .rnn import pack_rnn_cpu, rnn_backward_cpu, rnn_forward_cpu, rnn_step_cpu  # noqa: E402

__all__ = ["lstm_forward_cpu", "lstm_backward_cpu", "lstm_step_cpu", "pack_lstm_cpu",
           "gru_forward_cpu", "gru_backward_cpu", "gru_step_cpu", "pack_gru_cpu",
           "rnn_forward_cpu", "rnn_backward_cpu", "rnn_step_cpu", "pack_rnn_cpu",
           "dense_forward_cpu", "dense_backward_cpu"]
