"""CPU kernels (Numba @njit). KERNELS below is the table dispatch reads: cell ->
kernels.table.CellKernels(pack, forward, backward, step).

Files, by responsibility (each cell's entry module calls the others; the shared
modules import no cell's):
    lstm.py, gru.py, rnn.py   each cell's packing and Python entries (forward,
                              backward, step); rnn.py also holds its small loops
    lstm_tiled.py, gru_tiled.py   the float32 time loops, forward and backward
    lstm_blas.py, gru_blas.py     the per-step BLAS loops: float64, layer_norm
                                  (and the GRU's reset_after=False)
    plan.py        Plan: which variant of the loops runs (threads, split, fused
                   input, chunk), made from the shapes and the machine
    products.py    the products around the loops and the layout passes
    gradients.py   the weight and input gradients after a backward loop
    sequence.py    lengths, masks, zoneout weights, state buffers, padding
    norm.py        layer normalisation of the BLAS loops
    microkernel.py the register tile (LLVM IR) every float32 product runs
    quantized.py   the LSTM's and GRU's int8 and bfloat16 inference (quantize_dynamic), on
                   qtile.py's tiles (VNNI's int8 products, vdpbf16ps's bfloat16)
    threads.py     the thread policy: a busy machine's descheduled threads
    peak.py        the machine's float32 FMA peak (the benchmarks' roof)
    jit.py         the compile options every kernel takes
    dense.py, losses.py, optim.py   a dense layer, the losses, the optimizers
    attention.py   attention's scores, softmax and context (numlstm.Seq2Seq)

Importing this package configures Numba for the kernels, unless the user's
environment already decided (NUMBA_THREADING_LAYER, NUMBA_CPU_FEATURES):

* OpenMP first among threading layers: a parallel region costs about 2 us
  there against 24-130 us on workqueue (measured on 2 cores), and the time loop
  enters one region per step.
* OpenMP's idle threads spin for a bounded time (GOMP_SPINCOUNT=1000, some tens
  of microseconds) before they sleep, unless GOMP_SPINCOUNT or OMP_WAIT_POLICY
  is set: libgomp's default spins up to some milliseconds after every region,
  and a spinning thread takes the core that another process's threads (or a
  second copy of this one) need. Measured on 2 cores with two copies of the same
  call at once, training T=100, B=32, I=128, H=256: 188 ms a call each with the
  default spin, 122 ms with 1000 (one copy alone: 61 ms either way); idle
  calls no slower within the machine's noise. The variable is set only while
  Numba's OpenMP layer loads libgomp (which reads it then), so another
  library's OpenMP (torch ships its own libgomp) keeps its own setting.
* The 512-bit vectors on AVX-512 hosts are set up by kernels/__init__.py, before
  any kernel module decorates a function.

Threads per call: every kernel below runs through threads.run, which sets
Numba's thread count for the call: one thread while the thread policy holds
after a lagged region, else the CPUs this process may use (threads.py). Work
that fits one thread enters no parallel region whatever the count: each time
loop, product and layout pass decides that from its own size.

Threads: the OpenMP and TBB layers take parallel calls from several Python
threads at once; Numba's workqueue layer, the fallback where neither is
installed, aborts the process when two threads enter it together (measured:
SIGABRT with 8 threads calling layers). So every kernel below runs under a lock
until the first parallel call shows which layer Numba chose, and stays under it
when that is workqueue.
"""
import functools
import os

import numba

from ..table import GATES, CellKernels

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
GOMP_SPINCOUNT = "1000"


def _load_openmp_with_bounded_spin():
    """Load Numba's OpenMP layer (and with it libgomp, which reads its environment
    once, as it loads) with GOMP_SPINCOUNT set, then restore the environment."""
    if {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(os.environ):
        return  # the user's choice
    if str(numba.config.THREADING_LAYER).lower() not in ("default", "omp"):
        return
    os.environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT
    try:
        from numba.np.ufunc import omppool  # noqa: F401
    except ImportError:  # no OpenMP layer here: Numba falls back to another
        pass
    finally:
        del os.environ["GOMP_SPINCOUNT"]


_load_openmp_with_bounded_spin()
from . import (attention, dense, gru, gru_tiled, lstm, lstm_tiled, microkernel, plan,  # noqa: E402
               quantized, rnn, threads)
from .gru import pack_gru_cpu  # noqa: E402
from .lstm import pack_lstm_cpu  # noqa: E402
from .rnn import pack_rnn_cpu  # noqa: E402


def _serialised(fn, policy=True):
    """fn through threads.run (policy=False: as it is, for the streaming steps,
    which enter no parallel region but the split one's, which applies the policy
    itself), under threads' lock unless Numba's threading layer takes concurrent
    calls (threads.serialised)."""
    run = threads.run if policy else _direct

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return threads.serialised(run, fn, *args, **kwargs)
    return call


def _direct(fn, *args, **kwargs):
    return fn(*args, **kwargs)


dense_forward_cpu = _serialised(dense.dense_forward_cpu)
dense_backward_cpu = _serialised(dense.dense_backward_cpu)
dense_blocks = dense.dense_blocks
embedding_backward_cpu = dense.embedding_backward_cpu  # (serial: no parallel region)
attention_forward_cpu = _serialised(attention.attention_forward_cpu)
attention_backward_cpu = _serialised(attention.attention_backward_cpu)
lstm_forward_cpu = _serialised(lstm.lstm_forward_cpu)
lstm_backward_cpu = _serialised(lstm.lstm_backward_cpu)
lstm_step_cpu = _serialised(lstm.lstm_step_cpu, policy=False)
gru_forward_cpu = _serialised(gru.gru_forward_cpu)
gru_backward_cpu = _serialised(gru.gru_backward_cpu)
gru_step_cpu = _serialised(gru.gru_step_cpu, policy=False)
rnn_forward_cpu = _serialised(rnn.rnn_forward_cpu)
rnn_backward_cpu = _serialised(rnn.rnn_backward_cpu)
rnn_step_cpu = _serialised(rnn.rnn_step_cpu, policy=False)
# int8 and bfloat16 inference (numlstm.quantize_dynamic; not a cell of the table)
lstm_forward_quantized_cpu = _serialised(quantized.lstm_forward_quantized)
lstm_forward_quantized_into = quantized.lstm_forward_quantized_into  # (no parallel region)
gru_forward_quantized_cpu = _serialised(quantized.gru_forward_quantized)
gru_forward_quantized_into = quantized.gru_forward_quantized_into

# The block each cell's hidden units pad to.
PAD = {"lstm": lstm_tiled.HB, "gru": gru_tiled.U, "rnn": microkernel.CB}


def plan_for(cell, T, B, I, H, training):
    """The plan (plan.Plan) a float32 call of the plain layer of this cell and shape
    runs on this machine now: what a benchmark row says ran."""
    Hp = -(-H // PAD[cell]) * PAD[cell]
    return plan.make_plan(T, B, I, Hp, GATES[cell], training, plain=cell != "rnn")


# Each cell's forward_plan(x.shape, packed, training, plain): the plan its forward
# makes when it is given none (the harness labels and forces variants with these).
PLANS = {"lstm": lstm.forward_plan, "gru": gru.forward_plan, "rnn": rnn.forward_plan}


# The table: dispatch looks the kernels up here (kernels/table.py).
# (forward_into enters no parallel region but a split step's, which takes the thread
# policy and threads' lock itself: lstm.lstm_forward_into, gru.gru_forward_into)
KERNELS = {
    "lstm": CellKernels(pack_lstm_cpu, lstm_forward_cpu, lstm_backward_cpu, lstm_step_cpu,
                        lstm.lstm_forward_into),
    "gru": CellKernels(pack_gru_cpu, gru_forward_cpu, gru_backward_cpu, gru_step_cpu,
                       gru.gru_forward_into),
    "rnn": CellKernels(pack_rnn_cpu, rnn_forward_cpu, rnn_backward_cpu, rnn_step_cpu,
                       rnn.rnn_forward_into),
}

__all__ = ["KERNELS", "lstm_forward_cpu", "lstm_backward_cpu", "lstm_step_cpu", "pack_lstm_cpu",
           "gru_forward_cpu", "gru_backward_cpu", "gru_step_cpu", "pack_gru_cpu",
           "rnn_forward_cpu", "rnn_backward_cpu", "rnn_step_cpu", "pack_rnn_cpu",
           "dense_forward_cpu", "dense_backward_cpu", "dense_blocks", "embedding_backward_cpu",
           "attention_forward_cpu", "attention_backward_cpu",
           "lstm_forward_quantized_cpu", "lstm_forward_quantized_into",
           "gru_forward_quantized_cpu", "gru_forward_quantized_into"]
