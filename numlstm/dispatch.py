"""The backend table: names -> Backend objects, and the choice behind "auto".

A Backend declares the kernel layout it wants (a packing.Layout with the
"cells" container, or a pack function that lives beside its kernels) and runs
one layer in one direction. Layers know nothing of
Numba; they ask `select` for a backend and call its methods.

Backend methods, for one cell (layer l, direction d) in the backend's layout:
    pack(params, spec)                          -> [cell, ...] in spec.cells() order
    lstm_forward(cell, x, h0, c0, lengths, reverse, training)
                                                -> y [T,B,H], h_n, c_n [B,H], cache
    lstm_backward(cell, cache, dy, dh_n, dc_n)  -> dx [T,B,I], dh0, dc0 [B,H],
                                                   {"w_ih","w_hh","b_ih","b_hh"}
"""
from .kernels import reference
from .kernels.cpu import lstm_backward_cpu, lstm_forward_cpu, pack_lstm_cpu
from .packing import Layout, from_canonical


class Backend:
    name = None
    layout = None

    def pack(self, params, spec):
        return from_canonical(params, self.layout, spec)


class NumpyBackend(Backend):
    """The NumPy reference: slow, simple, the oracle. Cell: (w_ih, w_hh, b_ih, b_hh)."""
    name = "numpy"
    layout = Layout("numpy-kernel", "ifgo", "out_in", "two", "cells")

    def lstm_forward(self, cell, x, h0, c0, lengths, reverse, training):
        y, h, c, cache = reference.lstm_forward_ref(x, *cell, h0, c0, lengths, reverse)
        return y, h, c, (cache if training else None)

    def lstm_backward(self, cell, cache, dy, dh_n, dc_n):
        return reference.lstm_backward_ref(dy, dh_n, dc_n, cache)


class CpuBackend(Backend):
    """Numba kernels on the CPU. Cell: the dict kernels.cpu.pack_lstm_cpu builds.

    The framework layouts are descriptors (packing.Layout); this kernel's blocked,
    padded layout is declared by a function beside the code that reads it, so the
    two cannot drift apart.
    """
    name = "cpu"
    layout = NumpyBackend.layout

    def pack(self, params, spec):
        return [pack_lstm_cpu(*cell) for cell in from_canonical(params, self.layout, spec)]

    def lstm_forward(self, cell, x, h0, c0, lengths, reverse, training):
        return lstm_forward_cpu(x, cell, h0, c0, lengths, reverse, training)

    def lstm_backward(self, cell, cache, dy, dh_n, dc_n):
        return lstm_backward_cpu(dy, dh_n, dc_n, cache, cell)


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
