"""The row type of each backend's kernel table: one cell's kernels.

kernels/cpu and kernels/cuda each export KERNELS, a dict from the cell's name
("lstm", "gru", "rnn") to a CellKernels; numlstm.dispatch looks kernels up there
and nowhere else.
"""
from typing import Callable, NamedTuple, Optional

# Gate rows per hidden unit of each cell (G = GATES[cell] * H).
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


class CellKernels(NamedTuple):
    """One cell's kernels on one backend (shapes: T steps, B batch, I inputs, H units).

    pack(w_ih, w_hh, b_ih, b_hh, [extras,] **options) -> the packed cell the other
        three read (torch's layout in; the backend's own layout out).
    forward(x [T,B,I], packed, *state0, lengths, reverse, training, **options)
        -> y [T,B,H], *state_n, cache (None unless training).
    backward(dy [T,B,H], *dstate_n, cache, packed) -> dx, *dstate0, gradients
        {"w_ih", "w_hh", "b_ih", "b_hh", ...} in torch's layout.
    step(x [B,I], packed, *state) -> the state after one inference step (the LSTM:
        (h, c); the GRU and the RNN: h), or None where a one-step forward serves.
    forward_into(x [T,B,I], packed, *state, y [T,B,H], *state_out) -> True after
        writing an inference forward's y and last state into the caller's
        C-contiguous arrays (the state is only read; no lengths) as one compiled
        call, with no allocation from Python (on one thread; the CPU LSTM's large
        streamed steps in one parallel region); False, writing nothing, where
        the forward would take the general path's threads or another loop (then
        forward or step serves). None: no such path. The same arithmetic as
        forward, bit for bit: it serves step() and small inference calls, whose
        Python around the kernel was most of their time.
    """
    pack: Callable
    forward: Callable
    backward: Callable
    step: Optional[Callable]
    forward_into: Optional[Callable] = None
