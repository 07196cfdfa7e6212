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
    step_into(x [B,I], packed, *state, *state_out) -> True after writing the state
        after one inference step into state_out (C-contiguous arrays shaped like
        the state, which is only read) as one compiled call on one thread, with no
        allocation from Python; False, writing nothing, where the packed cell's
        step takes another path (step then serves). None: no such path. The same
        arithmetic as step, bit for bit: it serves step()'s common call, whose
        Python around the kernel was most of its time.
    """
    pack: Callable
    forward: Callable
    backward: Callable
    step: Optional[Callable]
    step_into: Optional[Callable] = None
