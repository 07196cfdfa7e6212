"""Worst errors of numlstm's projected LSTM (proj_size) against torch.nn.LSTM.

    python tools/proj_report.py

Not a test (tests/test_proj_size.py asserts the tolerances); this prints the figures
the recurrent-options issue's note asks for: per backend and dtype, the largest
|numlstm - torch| over the test's cases (stacked, bidirectional, lengths, initial
states, T=1 and B=1), for the outputs (y, h_n, c_n) and for the gradients (dx,
dh0, dc0 and every weight, weight_hr included). torch runs in float64. The cuda
backend runs on a GPU where there is one, else in Numba's simulator, on cases
small enough for it (CUDA_CASES).
"""
import os
import sys
import warnings

if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/proc/driver/nvidia")):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")  # (before numba is imported)

import numpy as np  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))  # the test's cases and its comparison
from test_proj_size import TORCH_CASES, against_torch  # noqa: E402

CUDA_CASES = [(3, 5, 2, 2, True, 3, 2), (4, 6, 3, 1, False, 1, 1)]


def errors(backend, dtype, cases=TORCH_CASES, seed=0):
    """(worst output error, worst gradient error) over cases."""
    rng = np.random.default_rng(seed)
    worst = [0.0, 0.0]
    for case in cases:
        got, want = against_torch(rng, case, backend, dtype)
        for k, v in want.items():
            e = float(np.abs(np.asarray(got[k], np.float64) - v).max())
            slot = 0 if k in ("y", "h", "c") else 1
            worst[slot] = max(worst[slot], e)
    return worst


def main():
    warnings.filterwarnings("ignore", message="LSTM with projections")
    print("cases (I, H, P, layers, bidirectional, T, B):", TORCH_CASES)
    print("| backend | dtype | outputs (y, h_n, c_n) | gradients (dx, dh0, dc0, weights) |")
    print("|---|---|---|---|")
    for backend in ("numpy", "cpu"):
        for dtype in (np.float64, np.float32):
            out, grad = errors(backend, dtype)
            print(f"| {backend} | {np.dtype(dtype).name} | {out:.2e} | {grad:.2e} |")
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    print(f"cuda{' (Numba simulator)' if simulated else ''}, cases:", CUDA_CASES)
    for dtype in (np.float64, np.float32):
        out, grad = errors("cuda", dtype, CUDA_CASES)
        print(f"| cuda | {np.dtype(dtype).name} | {out:.2e} | {grad:.2e} |")


if __name__ == "__main__":
    main()
