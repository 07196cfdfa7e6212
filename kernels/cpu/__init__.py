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

Threads: the OpenMP and TBB layers take parallel calls from several Python
threads at once; Numba's workqueue layer, the fallback where neither is
installed, aborts the process when two threads enter it together (measured:
SIGABRT with 8 threads calling layers). So every kernel below runs under a lock
until the first parallel call shows which layer Numba chose, and stays under it
when that is workqueue.
"""
import functools
import os
import threading

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
if "NUMBA_CPU_FEATURES" not in os.environ and numba.config.CPU_FEATURES is None:
    import llvmlite.binding as _llvm

    _features = _llvm.get_host_cpu_features().flatten()
    if "+avx512f" in _features.split(","):
        numba.config.CPU_FEATURES = _features + ",-prefer-256-bit"

from . import dense, gru, lstm, rnn  # noqa: E402
from .gru import pack_gru_cpu  # noqa: E402
from .lstm import pack_lstm_cpu  # noqa: E402
from .rnn import pack_rnn_cpu  # noqa: E402

_LOCK = threading.Lock()
_threadsafe = False  # set once Numba's threading layer is known to be omp or tbb


def _serialised(fn):
    """fn, run under _LOCK unless Numba's threading layer takes concurrent calls."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        global _threadsafe
        if _threadsafe:
            return fn(*args, **kwargs)
        with _LOCK:
            out = fn(*args, **kwargs)
            try:
                _threadsafe = numba.threading_layer() in ("omp", "tbb")
            except ValueError:  # no parallel region has run yet
                pass
        return out
    return call


dense_forward_cpu = _serialised(dense.dense_forward_cpu)
dense_backward_cpu = _serialised(dense.dense_backward_cpu)
embedding_backward_cpu = dense.embedding_backward_cpu  # (serial: no parallel region)
lstm_forward_cpu = _serialised(lstm.lstm_forward_cpu)
lstm_backward_cpu = _serialised(lstm.lstm_backward_cpu)
lstm_step_cpu = _serialised(lstm.lstm_step_cpu)
gru_forward_cpu = _serialised(gru.gru_forward_cpu)
gru_backward_cpu = _serialised(gru.gru_backward_cpu)
gru_step_cpu = _serialised(gru.gru_step_cpu)
rnn_forward_cpu = _serialised(rnn.rnn_forward_cpu)
rnn_backward_cpu = _serialised(rnn.rnn_backward_cpu)
rnn_step_cpu = _serialised(rnn.rnn_step_cpu)

__all__ = ["lstm_forward_cpu", "lstm_backward_cpu", "lstm_step_cpu", "pack_lstm_cpu",
           "gru_forward_cpu", "gru_backward_cpu", "gru_step_cpu", "pack_gru_cpu",
           "rnn_forward_cpu", "rnn_backward_cpu", "rnn_step_cpu", "pack_rnn_cpu",
           "dense_forward_cpu", "dense_backward_cpu", "embedding_backward_cpu"]
