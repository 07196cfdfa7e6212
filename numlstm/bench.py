"""Side-by-side speed (and agreement) of numlstm's layers and torch's, in one process:
on the CPU (torch's oneDNN path) or, with backend="cuda", on the GPU (torch's
cuDNN path; numlstm's CUDA kernels on device arrays, both synchronised after
every call, so no host copies are timed).

Dimensions: T steps, B batch, I input features (= H here), H hidden units,
G = 4H (LSTM), 3H (GRU) or H (RNN).

For each shape the two libraries' calls alternate (numlstm, torch, numlstm, ...)
so that both see the same machine state, and each figure is the median of
several repetitions. FLOPs of one layer and direction: forward
2*T*B*G*(I+H); a training step (forward keeping activations, then backward
with dx and every weight gradient) counts three times that. On the CPU the roof
is the machine's float32 FMA peak (kernels/cpu/peak.py: a register-only loop on
every thread), with the best matrix product beside it (NumPy's, whose OpenBLAS
may be pinned to an older kernel, and numlstm's own); each GFLOP/s figure is
also given as a share of the peak. On the GPU the roof is torch's float32
matrix product (cuBLAS, TF32 off) at a large size.
"""
import time

import numpy as np

from .layers import CELLS
from .packing import GATES

QUICK_GRID = [(16, 1, 64), (16, 16, 64), (16, 16, 256)]
DEFAULT_GRID = [(128, B, H) for H in (64, 256, 1024) for B in (1, 16, 128)]
FULL_GRID = [(T, B, H) for T in (16, 128, 1024) for H in (64, 256, 1024)
             for B in (1, 16, 128)]


def lstm_flops(T, B, I, H, training, cell="lstm"):
    return 2 * T * B * GATES[cell] * H * (I + H) * (3 if training else 1)


def _classes(cell):
    """(numlstm class, torch.nn class name) of a cell: LSTM, GRU or RNN in both."""
    return CELLS[cell], CELLS[cell].__name__


def matmul_rate(n=2048, repeats=5, backend="cpu"):
    """The float32 matrix-product rate in GFLOP/s (the fastest of repeats: it is
    the machine's limit, and noise only slows a run down; on a shared 2-core
    machine a median of 5 once came out at 106 GFLOP/s where the products ran at
    200): NumPy's, or on the GPU torch's (TF32 off)."""
    if backend == "cuda":
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False
        n = 8192
        a = torch.randn(n, n, device="cuda")
        times = []
        for _ in range(repeats + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            a @ a
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return 2 * n ** 3 / min(times[1:]) / 1e9
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times) / 1e9


def numlstm_matmul_rate(n=2048, repeats=5):
    """numlstm's own float32 product (the register tile the kernels use, through
    a Dense layer's kernel) at n x n x n, GFLOP/s, the fastest of repeats."""
    from .kernels.cpu import dense
    a = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    w = a.T.copy()
    b = np.zeros(n, np.float32)
    dense.dense_forward_cpu(a, w, b)
    times = [_timed(lambda: dense.dense_forward_cpu(a, w, b)) for _ in range(repeats)]
    return 2 * n ** 3 / min(times) / 1e9


def roofs():
    """The CPU's roof and what reaches toward it, GFLOP/s float32: fma_peak, the
    register-only FMA loop on all of Numba's threads (the physical limit, the roof
    of every %roof figure), at least the threads times the one-thread rate
    (fma_peak_1thread: on a shared virtual machine the all-threads run can meet
    a busy moment of the host, the one-thread run rarely does); numpy_matmul and
    numlstm_matmul, the two products at 2048^3; best_matmul, the faster of them."""
    import numba

    from .kernels.cpu import peak
    one = peak.fma_peak(threads=1)
    r = dict(fma_peak=max(peak.fma_peak(), numba.get_num_threads() * one),
             fma_peak_1thread=one, numpy_matmul=matmul_rate(),
             numlstm_matmul=numlstm_matmul_rate())
    r["best_matmul"] = max(r["numpy_matmul"], r["numlstm_matmul"])
    return r


# What the table's columns mean, printed above it.
COLUMNS = ("GFLOP/s: the call's multiply-adds (2*T*B*gates*H*(I+H); a training step 3x) "
           "per second; %roof: that as a share of the roof above; tok/s: T*B per second; "
           "ratio: the peer's time / numlstm's (> 1: numlstm is faster)")


def roof_line(r):
    return (f"roof: float32 FMA peak {r['fma_peak']:.0f} GFLOP/s on all threads "
            f"({r['fma_peak_1thread']:.0f} on one); best matmul 2048^3 "
            f"{r['best_matmul']:.0f} ({100 * r['best_matmul'] / r['fma_peak']:.0f}% of the "
            f"peak; NumPy {r['numpy_matmul']:.0f}, numlstm {r['numlstm_matmul']:.0f})")


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _numlstm_calls(T, B, H, seed, cell="lstm", backend="cpu"):
    rng = np.random.default_rng(seed)
    lstm = _classes(cell)[0](H, H, backend=backend, seed=seed)
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    sync = _no_sync
    if backend == "cuda":
        from numba import cuda
        x, dy, sync = cuda.to_device(x), cuda.to_device(dy), cuda.synchronize

    def infer():
        lstm(x)
        sync()

    def train():
        lstm(x, training=True)
        lstm.backward(dy)
        sync()
    return lstm, infer, train


def _no_sync():
    pass


def _torch_calls(T, B, H, lstm, seed, cell="lstm", backend="cpu"):
    import torch
    device = "cuda" if backend == "cuda" else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else _no_sync
    module = getattr(torch.nn, _classes(cell)[1])(H, H).to(device)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in lstm.state_dict().items()})
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((T, B, H)).astype(np.float32)).to(device)
    dy = torch.from_numpy(rng.standard_normal((T, B, H)).astype(np.float32)).to(device)

    def infer():
        with torch.no_grad():
            module(x)
        sync()

    def train():
        xg = x.detach().requires_grad_()  # numlstm computes dx too
        y, _ = module(xg)
        y.backward(dy)
        sync()
    return infer, train


def compare(grid, repeats=5, with_torch=True, out=print, cell="lstm", backend="cpu"):
    """Run the grid for one cell ("lstm", "gru", "rnn") on backend "cpu" or
    "cuda"; return a list of row dicts and print a table as it goes."""
    try:
        import torch
        torch_ok = with_torch
    except ImportError:
        torch_ok = False
    if backend == "cuda":
        import torch  # the GPU's roof and peer both come from torch
        roof = matmul_rate(backend="cuda")
        out(f"GPU: {torch.cuda.get_device_name()}; float32 matmul rate (torch, "
            f"8192^3, TF32 off): {roof:.0f} GFLOP/s")
        if torch_ok:
            out(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    else:
        r = roofs()
        roof = r["fma_peak"]
        out(roof_line(r))
        if torch_ok:
            out(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    out(f"cell: {cell}, backend: {backend}, one layer, one direction, I = H, float32")
    head = (f"{'mode':<9} {'T':>5} {'B':>4} {'H':>5} | {'numlstm ms':>10} {'GFLOP/s':>8} "
            f"{'%roof':>6} {'tok/s':>10} | {'torch ms':>9} {'GFLOP/s':>8} {'%roof':>6} | "
            f"{'ratio':>6}" + ("  plan" if backend == "cpu" else ""))
    out(COLUMNS)
    out(head)
    out("-" * len(head))
    rows = []
    for T, B, H in grid:
        lstm, n_infer, n_train = _numlstm_calls(T, B, H, seed=T * 7 + B * 3 + H, cell=cell,
                                                backend=backend)
        calls = {"numlstm": (n_infer, n_train)}
        if torch_ok:
            calls["torch"] = _torch_calls(T, B, H, lstm, seed=T + B + H, cell=cell,
                                          backend=backend)
        for mode, k in (("inference", 0), ("training", 1)):
            for fns in calls.values():  # warm up: compile, allocate
                fns[k]()
            times = {name: [] for name in calls}
            for _ in range(repeats):
                for name, fns in calls.items():
                    times[name].append(_timed(fns[k]))
            flops = lstm_flops(T, B, H, H, mode == "training", cell)
            row = dict(cell=cell, backend=backend, mode=mode, T=T, B=B, H=H,
                       roof_gflops=roof)
            if backend == "cpu":  # which variant of the time loop ran
                from .kernels.cpu import plan_for
                row["plan"] = str(plan_for(cell, T, B, H, H, mode == "training"))
            for name, ts in times.items():
                med = float(np.median(ts))
                row[name + "_ms"] = 1e3 * med
                row[name + "_gflops"] = flops / med / 1e9
                row[name + "_tokens_per_s"] = T * B / med
            line = (f"{mode:<9} {T:>5} {B:>4} {H:>5} | {row['numlstm_ms']:>10.3f} "
                    f"{row['numlstm_gflops']:>8.1f} {100 * row['numlstm_gflops'] / roof:>5.0f}% "
                    f"{row['numlstm_tokens_per_s']:>10,.0f} | ")
            if "torch" in times:
                row["ratio"] = row["torch_ms"] / row["numlstm_ms"]
                line += (f"{row['torch_ms']:>9.3f} {row['torch_gflops']:>8.1f} "
                         f"{100 * row['torch_gflops'] / roof:>5.0f}% | {row['ratio']:>5.2f}x")
            else:
                line += f"{'-':>9} {'-':>8} {'-':>6} | {'-':>6}"
            if "plan" in row:
                line += f"  {row['plan']}"
            out(line)
            rows.append(row)
    if torch_ok:
        out("ratio = torch time / numlstm time (> 1: numlstm is faster), medians of "
            f"{repeats} alternating runs")
    return rows


def training_memory(T=1024, B=64, H=256, backend="cpu"):
    """Memory of a training forward of one LSTM layer (I = H), measured with
    tracemalloc (NumPy reports its buffers there).

    Returns a dict: `expected`, the bytes the cache must hold (activated gates
    [T,B,4H], c [T,B,H] and h [T,B,H] of each step); `retained`, what the layer
    still holds once the forward returned and its outputs were dropped; `peak`,
    the most allocated at once during the forward, outputs included.
    """
    import gc
    import tracemalloc

    import numlstm
    lstm = numlstm.LSTM(H, H, backend=backend, seed=0)
    x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
    lstm(x, training=True)  # compile and pack outside the measurement (at this shape:
    #                         a short sequence can take other loops than a long one)
    lstm._cache = None
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    out = lstm(x, training=True)
    peak = tracemalloc.get_traced_memory()[1] - base
    del out
    gc.collect()
    retained = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    itemsize = np.dtype(np.float32).itemsize
    return dict(T=T, B=B, H=H, expected=T * B * 6 * H * itemsize, retained=retained,
                peak=peak)


def compare_char(text, steps=200, embed=32, hidden=128, layers=1, batch=32, seq_len=64,
                 lr=2e-3, clip_norm=1.0, seed=0, out=print):
    """Train numlstm's character model and the same model in torch (nn.Embedding,
    nn.LSTM, nn.Linear; Adam; cross-entropy; gradient clipping) side by side: same
    initial weights, same batches, steps alternating between the two. Returns
    {"numlstm": {...}, "torch": {...}} with tokens/s (median over blocks of 10 steps),
    train_seconds and val_bpc on the text's last 10%."""
    import math

    import torch

    from .train import bits_per_char, char_model, encode_text, sample_batch

    vocab = "".join(sorted(set(text)))
    train_ids, val_ids = encode_text(text, vocab, seq_len)

    model = char_model(len(vocab), embed, hidden, layers, 0.0, seed)
    model.compile("adam", "cross_entropy", lr=lr, clip_norm=clip_norm)
    w = model.get_weights()

    class TorchChar(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(len(vocab), embed)
            self.lstm = torch.nn.LSTM(embed, hidden, layers, batch_first=True)
            self.dense = torch.nn.Linear(hidden, len(vocab))

        def forward(self, x):
            return self.dense(self.lstm(self.embedding(x))[0])

    tmodel = TorchChar()
    with torch.no_grad():  # start from numlstm's initial weights
        tmodel.embedding.weight.copy_(torch.from_numpy(w["embedding/weight"]))
        for name, p in tmodel.lstm.named_parameters():
            p.copy_(torch.from_numpy(w[f"lstm/{name}"]))
        tmodel.dense.weight.copy_(torch.from_numpy(w["dense/weight"]))
        tmodel.dense.bias.copy_(torch.from_numpy(w["dense/bias"]))
    topt = torch.optim.Adam(tmodel.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()

    def torch_step(x, y):
        topt.zero_grad()
        logits = tmodel(torch.from_numpy(x))
        loss = loss_fn(logits.reshape(-1, len(vocab)), torch.from_numpy(y).reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), clip_norm)
        topt.step()
        return loss.item()

    rng = np.random.default_rng(seed)
    x, y = sample_batch(train_ids, rng, batch, seq_len)
    model.train_step(x, y)  # warm-up (compilation) outside the timing; not counted
    model.compile("adam", "cross_entropy", lr=lr, clip_norm=clip_norm)
    model.set_weights(w)
    times = {"numlstm": [], "torch": []}
    block = {"numlstm": 0.0, "torch": 0.0}
    for step in range(1, steps + 1):
        x, y = sample_batch(train_ids, rng, batch, seq_len)
        for name, fn in (("numlstm", model.train_step), ("torch", torch_step)):
            t0 = time.perf_counter()
            fn(x, y)
            block[name] += time.perf_counter() - t0
        if step % 10 == 0:
            for name in block:
                times[name].append(block[name])
                block[name] = 0.0
    with torch.no_grad():
        n = (len(val_ids) - 1) // seq_len
        xv = torch.from_numpy(val_ids[:n * seq_len].reshape(n, seq_len))
        yv = torch.from_numpy(val_ids[1:n * seq_len + 1].reshape(n, seq_len))
        torch_bpc = loss_fn(tmodel(xv).reshape(-1, len(vocab)),
                            yv.reshape(-1)).item() / math.log(2)
    result = {}
    for name, bpc in (("numlstm", bits_per_char(model, val_ids, seq_len)),
                      ("torch", torch_bpc)):
        ts = times[name]
        result[name] = {"tokens_per_second": 10 * batch * seq_len / float(np.median(ts)),
                        "train_seconds": float(np.sum(ts)), "val_bpc": bpc}
    ratio = result["numlstm"]["tokens_per_second"] / result["torch"]["tokens_per_second"]
    out(f"character model: vocab {len(vocab)}, embed {embed}, hidden {hidden}, layers "
        f"{layers}, batch {batch}, {seq_len} characters, Adam lr {lr}, clip {clip_norm}; "
        f"{steps} steps each on the same batches, alternating")
    for name, r in result.items():
        out(f"  {name:<8} {r['tokens_per_second']:>10,.0f} tokens/s  "
            f"({r['train_seconds']:.1f} s)  val_bpc {r['val_bpc']:.4f}")
    out(f"  ratio (numlstm tokens/s / torch tokens/s): {ratio:.2f}x  [torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads]")
    result["ratio"] = ratio
    return result


def step_cost(cell="lstm", B=1, H=64, steps=1000, blocks=7, with_torch=True):
    """Microseconds per `layer.step(x_t, state)` from Python (I = H), median of
    blocks of `steps` calls; also torch's per-step call, module(x_t[None], state),
    alternating blocks, when torch is installed."""
    layer = _classes(cell)[0](H, H, backend="cpu", seed=0)
    x = np.random.default_rng(0).standard_normal((steps, B, H)).astype(np.float32)
    calls = {}

    def ours():
        state = None
        for t in range(steps):
            _, state = layer.step(x[t], state)
    calls["numlstm"] = ours
    if with_torch:
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None:
            module = getattr(torch.nn, _classes(cell)[1])(H, H)
            xt = torch.from_numpy(x)

            def theirs():
                state = None
                with torch.no_grad():
                    for t in range(steps):
                        _, state = module(xt[t:t + 1], state)
            calls["torch"] = theirs
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(blocks):
        for name, fn in calls.items():
            times[name].append(_timed(fn) / steps * 1e6)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def parity(cell="lstm", dtype=np.float32, layers=2, bidirectional=True, lengths=True,
           T=7, B=4, I=5, H=6, seed=0, backend="auto", **options):
    """Worst relative errors (max |ours - torch| / max |torch|) of a stacked layer
    against torch.nn.LSTM/GRU/RNN (options, e.g. nonlinearity="relu", go to both)
    with the same weights: outputs, final states,
    dx, the initial state's gradients and every weight gradient, with random
    lengths fed to torch through pack_padded_sequence (enforce_sorted=False).
    The loss is sum(y * dy) + sum(state_n * dstate_n) for random dy, dstate_n."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    rng = np.random.default_rng(seed)
    cls, tname = _classes(cell)
    tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[
        np.dtype(dtype)]
    torch.manual_seed(seed)
    module = getattr(torch.nn, tname)(I, H, num_layers=layers, bidirectional=bidirectional,
                                      dtype=tdtype, **options)
    layer = cls(I, H, num_layers=layers, bidirectional=bidirectional, dtype=dtype,
                backend=backend, **options)
    layer.load_weights(module.state_dict())
    D = 2 if bidirectional else 1
    n_parts = 2 if cell == "lstm" else 1
    lens = rng.integers(1, T + 1, B) if lengths else None
    if lengths:
        lens[rng.integers(B)] = T  # pad_packed_sequence pads to the longest
    x = rng.standard_normal((T, B, I)).astype(dtype)
    state0 = [rng.standard_normal((layers * D, B, H)).astype(dtype) for _ in range(n_parts)]
    dy = rng.standard_normal((T, B, D * H)).astype(dtype)
    dstate = [rng.standard_normal((layers * D, B, H)).astype(dtype) for _ in range(n_parts)]

    xt = torch.tensor(x, requires_grad=True)
    st = [torch.tensor(s, requires_grad=True) for s in state0]
    inp = pack_padded_sequence(xt, torch.tensor(lens), enforce_sorted=False) if lengths else xt
    yt, st_n = module(inp, tuple(st) if cell == "lstm" else st[0])
    if lengths:
        yt, _ = pad_packed_sequence(yt, total_length=T)
    st_n = list(st_n) if cell == "lstm" else [st_n]
    loss = (yt * torch.tensor(dy)).sum() + sum(
        (a * torch.tensor(b)).sum() for a, b in zip(st_n, dstate))
    loss.backward()

    y, s_n = layer(x, tuple(state0) if cell == "lstm" else state0[0], training=True,
                   lengths=lens)
    dx, ds0 = layer.backward(dy, tuple(dstate) if cell == "lstm" else dstate[0])
    s_n = list(s_n) if cell == "lstm" else [s_n]
    ds0 = list(ds0) if cell == "lstm" else [ds0]
    names = ["h", "c"][:n_parts]

    def err(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b.detach().numpy(), np.float64)
        return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))

    out = {"y": err(y, yt), "dx": err(dx, xt.grad)}
    for n, a, b, da, db in zip(names, s_n, st_n, ds0, st):
        out[n + "_n"] = err(a, b)
        out["d" + n + "0"] = err(da, db.grad)
    out["weight grads"] = max(err(layer.grads[k], p.grad)
                              for k, p in module.named_parameters())
    return out


_USER_ACTIVATION = {"activation=softsign (user)": {"activation": "softsign"}}
OPTION_VARIANTS = {"plain": {}, "cell_clip=1.0": {"cell_clip": 1.0},
                   "gate_clip=3.0": {"gate_clip": 3.0},
                   "input_forget": {"input_forget": True},
                   "all three": {"cell_clip": 1.0, "input_forget": True, "gate_clip": 3.0},
                   # h and y of H/2 units: the recurrent product shrinks to half and the
                   # projection adds a quarter, so it does less arithmetic than plain
                   "proj_size=H/2": {"proj_size": "H/2"},
                   # (training only: inference runs the plain layer)
                   "recurrent_dropout=0.25": {"recurrent_dropout": 0.25},
                   "zoneout=0.1": {"zoneout": 0.1},
                   # (against plain, not against proj_size=H/2 alone)
                   "proj_size=H/2, zoneout=0.1": {"proj_size": "H/2", "zoneout": 0.1},
                   "peephole": {"peephole": True},
                   # (its own loop, with a serial pass over each row: kernels/cpu/lstm.py)
                   "layer_norm": {"layer_norm": True},
                   # (both at once: each pair of activations compiles the kernels again)
                   "recurrent_activation=hard_sigmoid, activation=relu": {
                       "recurrent_activation": "hard_sigmoid", "activation": "relu"},
                   # a user's function, called through a pointer (not inlined)
                   **_USER_ACTIVATION}
GRU_OPTION_VARIANTS = {"plain": {},
                       # (Keras's older form: the per-step path with two products a step)
                       "reset_after=False": {"reset_after": False},
                       "recurrent_dropout=0.25": {"recurrent_dropout": 0.25},
                       "zoneout=0.1": {"zoneout": 0.1},
                       # (one product a step on the BLAS path, rows normalised serially)
                       "layer_norm": {"layer_norm": True},
                       "recurrent_activation=hard_sigmoid, activation=relu": {
                           "recurrent_activation": "hard_sigmoid", "activation": "relu"},
                       **_USER_ACTIVATION}
VARIANTS = {"lstm": OPTION_VARIANTS, "gru": GRU_OPTION_VARIANTS}


def _softsign(a):
    return a / (1 + abs(a))


def _softsign_grad(y):  # from the output: 1 / (1 + |a|)^2 = (1 - |y|)^2
    return (1 - abs(y)) ** 2


def _variant(options, H):
    special = {"H/2": H // 2, "softsign": (_softsign, _softsign_grad)}
    return {k: special.get(v, v) if isinstance(v, str) else v for k, v in options.items()}


def option_layers(H, cell="lstm", names=None):
    """The layers option_costs times, H inputs and H units, by variant name (all of
    VARIANTS[cell], or those in `names`: "plain" always, the ratios' base)."""
    unknown = sorted(set(names or ()) - set(VARIANTS[cell]))
    if unknown:
        raise ValueError(f"no {cell} variant named {', '.join(map(repr, unknown))}; "
                         f"the variants: {', '.join(map(repr, VARIANTS[cell]))}")
    chosen = VARIANTS[cell] if names is None else {
        n: VARIANTS[cell][n] for n in VARIANTS[cell] if n == "plain" or n in names}
    return {name: _classes(cell)[0](H, H, seed=0, **_variant(opts, H))
            for name, opts in chosen.items()}


def option_costs(shapes=((128, 16, 256), (128, 1, 64)), repeats=7, out=print, cell="lstm",
                 names=None):
    """The time of the LSTM (or GRU: cell="gru") with each cell option against the
    plain layer, float32 on the CPU, inference and training step (forward plus
    backward), calls of the variants alternating; the median of `repeats` rounds.
    Returns rows of {"T","B","H","option","mode","ms","ratio"} (ratio: time / the
    plain layer's). Initialisation options (recurrent_init, unit_forget_bias)
    change only the starting weights and cost nothing per step. names: the
    variants to run (option_layers'), default all."""
    rows = []
    w = max(map(len, VARIANTS[cell]))
    out(f"{'T,B,H':>12} {'option':>{w}} {'inference ms':>13} {'x plain':>8} "
        f"{'training ms':>12} {'x plain':>8}")
    for T, B, H in shapes:
        x = np.random.default_rng(0).standard_normal((T, B, H)).astype(np.float32)
        layers = option_layers(H, cell, names)

        def train(layer):
            y, _ = layer(x, training=True)
            layer.backward(y)

        times = {(name, mode): [] for name in layers for mode in ("inference", "training")}
        for layer in layers.values():  # compile and warm up
            layer(x)
            train(layer)
        for _ in range(repeats):
            for name, layer in layers.items():
                times[name, "inference"].append(_timed(lambda: layer(x)))
                times[name, "training"].append(_timed(lambda: train(layer)))
        med = {k: float(np.median(v)) for k, v in times.items()}
        for name in layers:
            r = {mode: med[name, mode] / med["plain", mode] for mode in ("inference",
                                                                         "training")}
            out(f"{f'{T},{B},{H}':>12} {name:>{w}} {med[name, 'inference'] * 1e3:13.2f} "
                f"{r['inference']:8.2f} {med[name, 'training'] * 1e3:12.2f} "
                f"{r['training']:8.2f}")
            rows += [dict(T=T, B=B, H=H, option=name, mode=mode, ms=med[name, mode] * 1e3,
                          ratio=r[mode]) for mode in ("inference", "training")]
    return rows
