"""Worst errors of numlstm's projected LSTM (proj_size) against torch.nn.LSTM.

    python tests/proj_report.py

Not a test (tests/test_proj_size.py asserts the tolerances); this prints the figures
the recurrent-options issue's note asks for: per backend and dtype, the largest
|numlstm - torch| over the test's cases (stacked, bidirectional, lengths, initial
states, T=1 and B=1), for the outputs (y, h_n, c_n) and for the gradients (dx,
dh0, dc0 and every weight, weight_hr included). torch runs in float64.
"""
import warnings

import numpy as np
import torch

import numlstm
from test_proj_size import TORCH_CASES, _torch_run


def errors(backend, dtype, seed=0):
    """(worst output error, worst gradient error) over TORCH_CASES."""
    rng = np.random.default_rng(seed)
    worst = [0.0, 0.0]
    for I, H, P, L, bi, T, B in TORCH_CASES:
        torch.manual_seed(int(rng.integers(1 << 30)))
        module = torch.nn.LSTM(I, H, num_layers=L, bidirectional=bi, proj_size=P).double()
        layer = numlstm.LSTM.from_torch(module, backend=backend, dtype=dtype)
        D = 2 if bi else 1
        x = rng.standard_normal((T, B, I))
        h0, c0 = rng.standard_normal((L * D, B, P)), rng.standard_normal((L * D, B, H))
        lengths = rng.integers(1, T + 1, B)
        lengths[0] = T
        dy = rng.standard_normal((T, B, D * P))
        dh, dc = rng.standard_normal(h0.shape), rng.standard_normal(c0.shape)
        want = _torch_run(module, x, h0, c0, lengths, dy, dh, dc)
        y, (h, c) = layer(x, (h0, c0), training=True, lengths=lengths)
        dx, (dh0, dc0) = layer.backward(dy, (dh, dc))
        got = dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, **layer.grads)
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


if __name__ == "__main__":
    main()
