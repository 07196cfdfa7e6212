"""Where one float32 LSTM inference call's time goes at a small shape.

    python tools/small_shape_profile.py                 # T=100, B=1, I=64, H=64
    python tools/small_shape_profile.py 100,4,64,64     # T,B,I,H of your own

A small call (plan.runs_alone: a small step, no batch split) is the layer's
Python (checks, the packed weights' lookup, the output arrays), then one
compiled call (lstm.lstm_forward_into). On one thread (lstm_tiled.steps_state)
that is the input projection of the steps (x @ W_ih^T + b, one product), then
per step the recurrent product (h @ W_hh^T) and the gate math. This times each
part on its own, the mean of many calls, and prints them beside the call: the
parts should add up to about the call (the rest is the loop's copies of h into y
and the memory it touches). At B=1 a step's product reads all of W_hh once per
step for one multiply-add per value read, so its time is W_hh's size over the
rate at which the core reads it (printed). Where the call may run as a duet on two
threads (plan.duet_runs: duet.steps_duet, each thread half of every
step's units), it prints the duet's call too, and which of the two layer(x) took
after timing both (plan.Trial); the one-thread call's parts say what the duet
shares.

Prints a table; nothing is written. Exits nonzero if the shape would take the
plan's threads in the general path (a larger step or a batch split), where this
does not apply.
"""
import sys

import numpy as np
from numba import njit

import numlstm
from numlstm import dispatch
from numlstm.bench_isolated import _time
from numlstm.kernels.cpu.lstm import lstm_forward_into
from numlstm.kernels.cpu.duet import steps_duet
from numlstm.kernels.cpu.lstm_tiled import fwd_pointwise, steps_state
from numlstm.kernels.cpu.peak import fma_peak
from numlstm.kernels.cpu.plan import (DUET, duet_runs, inference_chunk, into_route,
                                      numba_threads, runs_alone)
from numlstm.kernels.cpu.threads import POLICY
from numlstm.kernels.cpu.products import matmul_rows
from numlstm.kernels.cpu.sequence import aligned_empty


@njit(cache=True)
def _products(n, h, W, rec, nblk):
    for _ in range(n):
        matmul_rows(h, W, rec, rec, True, 0, h.shape[0], 0, nblk)


@njit(cache=True)
def _gate_math(n, rec, hbuf, c, y, lengths, nblk, clip, coupled, gclip, acts):
    for _ in range(n):
        fwd_pointwise(rec, rec, hbuf[0], hbuf[1], c, y, c, lengths, 0, False, 0, nblk, clip,
                       coupled, gclip, acts, None)


def _which(T, B, I, p):
    """Which route layer(x) takes now, for a shape plan.duet_runs takes (after the
    layer's calls here, a plan.Trial of the duet and one thread has settled)."""
    if into_route(T, B, I, p.Hp, 4, blocks=p.w_fwd.shape[0]) == DUET:
        return "as a duet on two threads"
    return "on one thread, which plan.Trial timed faster than the duet"


def profile(T, B, I, H, out=print):
    """Time the parts of an inference call of numlstm.LSTM(I, H) on x [T,B,I]; print
    a table through `out` and return {part: seconds}."""
    layer = numlstm.LSTM(I, H)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    layer(x)
    p = layer._packs.get(dispatch.BACKENDS["cpu"], layer._params, layer.spec)[0]
    duet = duet_runs(T, B, p.Hp, 4, p.w_fwd.shape[0], numba_threads())
    if not (duet or runs_alone(T, B, p.Hp, 4)):
        raise SystemExit(f"T,B,I,H = {T},{B},{I},{H} runs on the plan's threads in the "
                         f"general path: this profile does not apply")
    nblk, Hp = p.w_fwd.shape[0], p.Hp
    h, c = np.zeros((B, H), np.float32), np.zeros((B, H), np.float32)
    y, h_n, c_n = np.empty((T, B, H), np.float32), np.empty_like(h), np.empty_like(c)
    # (the buffers on cache lines, as the kernel's are)
    xw, rec = aligned_empty((T * B, 4 * Hp)), aligned_empty((B, 4 * Hp))
    rec[:] = 0.1
    hp, cp, scratch = aligned_empty((2, B, Hp)), aligned_empty((B, Hp)), aligned_empty((B, Hp))
    hp[:] = 0
    cp[:] = 0
    lengths = np.ones(B, np.int64)
    inner = 50  # steps a timed call
    _products(1, hp[0], p.w_fwd, rec, nblk)
    _gate_math(1, rec, hp, cp, scratch, lengths, nblk, p.clip, p.coupled, p.gclip, p.acts)

    def per_call(call):  # seconds a call: 200 calls or more, over 0.5 s, after a first
        call()  # (which may compile)
        return _time(call, 200, 0.5)[0]

    args = (x, p.w_in, p.bias, p.w_fwd, h, c, y, h_n, c_n, Hp)
    options = (p.clip, p.coupled, p.gclip, p.acts)
    chunk = inference_chunk(T, B, Hp, 4)
    parts = {
        "layer(x)": per_call(lambda: layer(x)),
        "compiled call": per_call(lambda: lstm_forward_into(x, p, h, c, y, h_n, c_n)),
        "one thread": per_call(lambda: steps_state(*args, chunk, *options)),
        "input projection": per_call(lambda: matmul_rows(x.reshape(T * B, I), p.w_in, xw,
                                                       p.bias, False, 0, T * B, 0, nblk)),
        "a step's product": per_call(lambda: _products(inner, hp[0], p.w_fwd, rec, nblk)) / inner,
        "a step's gate math": per_call(lambda: _gate_math(
            inner, rec, hp, cp, scratch, lengths, nblk, p.clip, p.coupled, p.gclip,
            p.acts)) / inner,
    }
    if duet:
        gate = POLICY.gate()
        parts["duet"] = per_call(lambda: steps_duet(*args, numba_threads(), *options, gate))
    roof = fma_peak(threads=1)
    product, gate_math = parts["a step's product"], parts["a step's gate math"]
    # (from the zero state, as layer(x) starts, the first step has no product: steps_state)
    rest = parts["one thread"] - parts["input projection"] - (T - 1) * product - T * gate_math
    w_bytes = p.w_fwd.nbytes
    proj_flops = 2 * T * B * I * 4 * H
    out(f"T={T}, B={B}, I={I}, H={H}, float32 inference "
        f"{_which(T, B, I, p) if duet else 'on one thread'}; float32 FMA roof "
        f"{roof:.0f} GFLOP/s on one thread")
    rows = [
        ("layer(x)", parts["layer(x)"], "the whole call from Python"),
        ("  Python around the kernel", parts["layer(x)"] - parts["compiled call"],
         "checks, packed weights' lookup, output arrays"),
        ("  compiled call", parts["compiled call"], "lstm_forward_into, arrays given"),
    ]
    if duet:
        rows.append(("    the duet", parts["duet"], "duet.steps_duet, two threads"))
    rows += [
        ("  one thread", parts["one thread"], "lstm_tiled.steps_state"),
        ("    input projection", parts["input projection"],
         f"{proj_flops / parts['input projection'] / 1e9:.0f} GFLOP/s"),
        (f"    {T - 1} x a step's product", (T - 1) * product,
         f"{product * 1e9:.0f} ns a step: W_hh's {w_bytes / 1024:.0f} KiB at "
         f"{w_bytes / product / 1e9:.0f} GB/s"),
        (f"    {T} x a step's gate math", T * gate_math, f"{gate_math * 1e9:.0f} ns a step"),
        ("    the rest of the loop", rest, "h into y, the state, the buffers"),
    ]
    for name, seconds, note in rows:
        out(f"{name:32s} {seconds * 1e6:9.1f} us   {note}")
    return parts


def main(argv):
    shape = tuple(int(v) for v in argv[0].split(",")) if argv else (100, 1, 64, 64)
    if len(shape) != 4 or min(shape) < 1:
        raise SystemExit(f"expected T,B,I,H (four positive integers), got {argv[0]!r}")
    profile(*shape)


if __name__ == "__main__":
    main(sys.argv[1:])
