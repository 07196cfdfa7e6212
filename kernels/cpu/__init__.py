"""CPU kernels (Numba @njit), one file per cell."""
from .lstm import lstm_backward_cpu, lstm_forward_cpu

__all__ = ["lstm_forward_cpu", "lstm_backward_cpu"]
