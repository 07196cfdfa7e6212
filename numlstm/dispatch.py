"""The backend table: names -> Backend objects, and the choice behind "auto".

A Backend declares the kernel layout it wants and runs one layer in one
direction of any cell (spec.cell: "lstm", "gru" or "rnn"). Layers know nothing
of Numba; they ask `select` for a backend and call its methods. States are
tuples: (h, c) for the LSTM, (h,) for the GRU and the RNN.

Backend methods, for one cell (layer l, direction d) in the backend's layout:
    pack(params, spec)                      -> [cell, ...] in spec.cells() order
    forward(spec, cell, x, state0, lengths, reverse, training)
                                            -> y [T,B,H], state_n, cache (None
                                               unless training)
    backward(spec, cell, cache, dy, dstate_n)
                                            -> dx [T,B,I], dstate0,
                                               {"w_ih","w_hh","b_ih","b_hh"}
    step(spec, cell, x, state)              -> state after one inference step of
                                               x [B,I] (its h is the output)
"""
from .kernels import cpu, reference
from .packing import CANONICAL_ORDER, Layout, from_canonical


class Backend:
    name = None
    # Every kernel reads torch's gate order and orientation, one cell at a time.
    layout = Layout("kernel", dict(CANONICAL_ORDER), "out_in",
                    {c: "two" for c in CANONICAL_ORDER}, "cells")

    def pack(self, params, spec):
        return from_canonical(params, self.layout, spec)

    def step(self, spec, cell, x, state):
        return self.forward(spec, cell, x[None], state, None, False, False)[1]


class NumpyBackend(Backend):
    """The NumPy reference: slow, simple, the oracle. Cell: (w_ih, w_hh, b_ih, b_hh)."""
    name = "numpy"

    def forward(self, spec, cell, x, state, lengths, reverse, training):
        if spec.cell == "lstm":
            y, h, c, cache = reference.lstm_forward_ref(x, *cell, *state, lengths, reverse)
            state = (h, c)
        elif spec.cell == "gru":
            y, h, cache = reference.gru_forward_ref(x, *cell, state[0], lengths, reverse,
                                                    spec.reset_after)
            state = (h,)
        else:
            y, h, cache = reference.rnn_forward_ref(x, *cell, state[0], lengths, reverse,
                                                    spec.nonlinearity)
            state = (h,)
        return y, state, (cache if training else None)

    def backward(self, spec, cell, cache, dy, dstate):
        if spec.cell == "lstm":
            dx, dh, dc, grads = reference.lstm_backward_ref(dy, *dstate, cache)
            return dx, (dh, dc), grads
        fn = reference.gru_backward_ref if spec.cell == "gru" else reference.rnn_backward_ref
        dx, dh, grads = fn(dy, dstate[0], cache)
        return dx, (dh,), grads


class CpuBackend(Backend):
    """Numba kernels on the CPU. Cell: the dict kernels.cpu.pack_<cell>_cpu builds.

    The framework layouts are descriptors (packing.Layout); this kernel's blocked,
    padded layout is declared by functions beside the code that reads it, so the
    two cannot drift apart.
    """
    name = "cpu"

    def pack(self, params, spec):
        cells = from_canonical(params, self.layout, spec)
        if spec.cell == "lstm":
            return [cpu.pack_lstm_cpu(*c) for c in cells]
        if spec.cell == "gru":
            return [cpu.pack_gru_cpu(*c, reset_after=spec.reset_after) for c in cells]
        return [cpu.pack_rnn_cpu(*c, nonlinearity=spec.nonlinearity) for c in cells]

    def forward(self, spec, cell, x, state, lengths, reverse, training):
        if spec.cell == "lstm":
            y, h, c, cache = cpu.lstm_forward_cpu(x, cell, *state, lengths, reverse, training)
            return y, (h, c), cache
        fn = cpu.gru_forward_cpu if spec.cell == "gru" else cpu.rnn_forward_cpu
        y, h, cache = fn(x, cell, state[0], lengths, reverse, training)
        return y, (h,), cache

    def step(self, spec, cell, x, state):
        if spec.cell == "lstm":
            return cpu.lstm_step_cpu(x, cell, *state)
        fn = cpu.gru_step_cpu if spec.cell == "gru" else cpu.rnn_step_cpu
        return (fn(x, cell, state[0]),)

    def backward(self, spec, cell, cache, dy, dstate):
        if spec.cell == "lstm":
            dx, dh, dc, grads = cpu.lstm_backward_cpu(dy, *dstate, cache, cell)
            return dx, (dh, dc), grads
        fn = cpu.gru_backward_cpu if spec.cell == "gru" else cpu.rnn_backward_cpu
        dx, dh, grads = fn(dy, dstate[0], cache, cell)
        return dx, (dh,), grads


BACKENDS = {b.name: b for b in (NumpyBackend(), CpuBackend())}
PLANNED = {"cuda": "the CUDA backend is not part of this version yet"}


def check_name(name):
    """Raise ValueError unless name is "auto" or a backend of the table."""
    if not isinstance(name, str):
        raise TypeError(f"backend: expected a string, got {type(name).__name__}")
    if name == "auto" or name in BACKENDS:
        return name
    if name in PLANNED:
        raise ValueError(f"backend {name!r} is not available: {PLANNED[name]}; "
                         f"available: {available()}")
    raise ValueError(f"unknown backend {name!r}; expected one of {available()}")


def available():
    return ["auto"] + sorted(BACKENDS)


def select(name, x):
    """The Backend for a call with input x; "auto" picks by where x lives."""
    if hasattr(x, "__cuda_array_interface__"):
        raise RuntimeError("got a CUDA device array, but this version of numlstm has no "
                           "CUDA backend; pass a NumPy array (for a torch tensor: "
                           "x.cpu().numpy())")
    return BACKENDS["cpu" if name == "auto" else name]
