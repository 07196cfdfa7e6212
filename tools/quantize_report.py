"""The output error of numlstm.quantize_dynamic (int8, bfloat16) and of torch's
quantize_dynamic int8 LSTM against the float32 layer, on the same weights and
inputs, over the bench grid (numlstm.bench_isolated.GRID's shapes).

    python tools/quantize_report.py

Weights: numlstm.LSTM(I, H)'s initial ones (torch's uniform init); x standard
normal. Errors: max |y - y_float32| over the whole output. Needs torch. Not a
test (tests/test_quantize.py checks the ratios at two small shapes).
"""
import warnings

import numpy as np
import torch

import numlstm
from numlstm.bench_isolated import GRID
from numlstm.kernels.cpu.qtile import bf16_variant, int8_variant


def errors(T, B, I, H):
    layer = numlstm.LSTM(I, H, seed=T + B + I + H)
    x = np.random.default_rng(T * 7 + B).standard_normal((T, B, I)).astype(np.float32)
    module = torch.nn.LSTM(I, H)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tq = torch.ao.quantization.quantize_dynamic(  # (it swaps a model's children)
            torch.nn.Sequential(module), {torch.nn.LSTM}, dtype=torch.qint8)[0]
    with torch.no_grad():
        y_float = module(torch.from_numpy(x))[0].numpy()
        torch_int8 = np.abs(tq(torch.from_numpy(x))[0].numpy() - y_float).max()
    ours = {d: np.abs(numlstm.quantize_dynamic(layer, d)(x)[0] - y_float).max()
            for d in ("int8", "bfloat16")}
    return torch_int8, ours["int8"], ours["bfloat16"]


def main():
    print(f"int8 products: {int8_variant()}; bfloat16 products: {bf16_variant()}; "
          "max |y - y_float32|; ratio: numlstm's error / torch int8's")
    print(f"{'T,B,I,H':>16} | {'torch int8':>10} | {'numlstm int8':>12} {'ratio':>6} | "
          f"{'numlstm bf16':>12} {'ratio':>6}")
    for T, B, I, H in GRID:
        t, i8, bf = errors(T, B, I, H)
        print(f"{f'{T},{B},{I},{H}':>16} | {t:>10.2e} | {i8:>12.2e} {i8 / t:>5.2f}x | "
              f"{bf:>12.2e} {bf / t:>5.2f}x")


if __name__ == "__main__":
    main()
