"""`numlstm bench --isolated`: each library timed in a fresh process of its own,
on an idle machine or with other processes busy.

Dimensions: T steps, B batch, I input features, H hidden units.

Why a process each: libraries with their own thread pools slow each other when
their calls alternate in one process (torch's OpenMP pool and onnxruntime's
spinning workers keep cores that the next library's call needs), so a fair
comparison runs each one alone. Why load: a laptop is never idle; --load N keeps
N processes busy (a plain Python loop each) while every library is timed, and
--copies N runs N copies of the same worker at once, each timing the same call.

How a run goes: for each round, one worker process per library (the order of the
libraries rotates from round to round), started with `python -m
numlstm.bench_isolated`. A worker builds every (shape, mode) first (compiling
numlstm's kernels, exporting the ONNX file), says it is ready, then times one
(shape, mode) per "go" line from the parent and answers with a JSON line. With
--copies the parent sends each "go" to all copies at once, and a copy that has
answered keeps calling until the next "go", so that the copies overlap for the
whole of each measurement. A figure is the median over rounds of each worker's
time per call: the time of all the calls it made in the round divided by their
number, which is what a loop of such calls takes (the median call can hide a slow
mode: with a core busy, onnxruntime's streaming step at B=1, H=1024 had a median
call of 183 us and took 458 us a call on average, as its worker thread ran only
part of the time).

The peers, float32, I and H as given, of the cell asked for (--cell: the LSTM, the
GRU or the RNN):
  torch        torch.nn.LSTM (GRU, RNN), the same weights; inference under no_grad,
               training a forward and backward with dx, step module(x_t[None], state).
  onnxruntime  the file numlstm.export_onnx writes, default session settings, the
               CPU provider; a step is a T=1 run of the file with initial_state=True.
  numlstm      numlstm.LSTM (GRU, RNN) on the CPU: layer(x), layer(x, training=True)
               then layer.backward(dy), and layer.step(x_t, state).
With --dtype int8 or bfloat16 (inference and step only; the LSTM and the GRU):
numlstm runs numlstm.quantize_dynamic(layer, dtype), torch runs
torch.ao.quantization.quantize_dynamic(module, {nn.LSTM or nn.GRU}, torch.qint8)
(its int8 layer, for either dtype), and numlstm_f32, numlstm's float32 layer, is
timed beside them (its ratio: float32 time / the reduced-precision time).
"""
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

LIBRARIES = ("numlstm", "torch", "onnxruntime", "numlstm_f32")
CELLS = {"lstm": ("LSTM", 4), "gru": ("GRU", 3), "rnn": ("RNN", 1)}  # (class, gates)
DTYPES = ("float32", "int8", "bfloat16")
MODES = ("inference", "training", "step")
# The shapes of the robustness issue: from a single step to the sizes where the
# products bind (T, B, I, H).
GRID = [(1, 1, 64, 128), (100, 1, 64, 64), (200, 8, 40, 96), (100, 32, 128, 256),
        (1000, 16, 32, 128), (50, 64, 256, 512), (30, 1, 256, 1024)]
QUICK_GRID = [(1, 1, 64, 128), (100, 1, 64, 64), (200, 8, 40, 96)]


def supports(lib, mode, dtype="float32"):
    """Whether `lib` has `mode`: onnxruntime runs inference only (no training), and
    the int8 and bfloat16 layers inference and steps."""
    return mode != "training" or (lib != "onnxruntime" and dtype == "float32")


def flops(T, B, I, H, mode, cell="lstm"):
    """FLOPs of one call of one layer: 2*T*B*gH*(I+H) (g: the cell's gates, 4 for the
    LSTM), three times that for a training step, T = 1 for a streaming step."""
    steps = 1 if mode == "step" else T
    return 2 * steps * B * CELLS[cell][1] * H * (I + H) * (3 if mode == "training" else 1)


# -- the worker ---------------------------------------------------------------------------
def _build(lib, T, B, I, H, mode, tmpdir, dtype="float32", cell="lstm"):
    """A function making one call of `lib`'s `cell` at (T, B, I, H) in `mode`, its
    weights in `dtype` (the module docstring)."""
    import numlstm
    name = CELLS[cell][0]
    layer = getattr(numlstm, name)(I, H, seed=T + B + I + H)
    rng = np.random.default_rng(T * 7 + B)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    if lib in ("numlstm", "numlstm_f32"):
        if lib == "numlstm" and dtype != "float32":
            layer = numlstm.quantize_dynamic(layer, dtype)
        if mode == "inference":
            return lambda: layer(x)
        if mode == "training":
            def train():
                layer(x, training=True)
                layer.backward(dy)
            return train
        state = [None]

        def step():
            _, state[0] = layer.step(x[0], state[0])
        return step
    if lib == "torch":
        import torch
        module = getattr(torch.nn, name)(I, H)
        module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
        if dtype != "float32":
            import warnings
            with warnings.catch_warnings():  # (torch.ao.quantization's deprecation notices)
                warnings.simplefilter("ignore")
                # (it swaps a model's children: a bare LSTM would come back as it was)
                module = torch.ao.quantization.quantize_dynamic(
                    torch.nn.Sequential(module), {type(module)}, dtype=torch.qint8)[0]
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
        if mode == "inference":
            def infer():
                with torch.no_grad():
                    module(xt)
            return infer
        if mode == "training":
            def train():
                y, _ = module(xt.detach().requires_grad_())
                y.backward(dyt)
            return train
        tstate = [None]

        def tstep():
            with torch.no_grad():
                _, tstate[0] = module(xt[:1], tstate[0])
        return tstep
    import onnxruntime
    path = os.path.join(tmpdir, f"{cell}_{T}_{B}_{I}_{H}_{mode}.onnx")
    numlstm.export_onnx(layer, path, initial_state=mode == "step")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    if mode == "inference":
        return lambda: session.run(None, {"x": x})
    parts = ("h0", "c0") if cell == "lstm" else ("h0",)
    feeds = {"x": x[:1], **{p: np.zeros((1, B, H), np.float32) for p in parts}}

    def ostep():
        _, *state = session.run(None, feeds)
        feeds.update(zip(parts, state))
    return ostep


def _time(call, repeats, min_seconds):
    """Seconds per call of at least `repeats` calls and of as many as fit in
    min_seconds (at most 10,000): their total time over their number (the module
    docstring says why not the median call), and the number."""
    n, start = 0, time.perf_counter()
    while n < repeats or (time.perf_counter() - start < min_seconds and n < 10_000):
        call()
        n += 1
    return (time.perf_counter() - start) / n, n


def _worker(spec, build=None):
    """Run in the worker process: build every task (build(shape, mode, tmpdir) -> a
    call; None: the LSTM's _build), then time one per 'go'."""
    lib = spec["lib"]
    if build is None:
        def build(shape, mode, tmpdir):
            return _build(lib, *shape, mode, tmpdir, spec.get("dtype", "float32"),
                          spec.get("cell", "lstm"))
    with tempfile.TemporaryDirectory() as tmpdir:
        calls = []
        for shape, mode in spec["tasks"]:
            call = build(shape, mode, tmpdir)
            call()  # compile, allocate, warm the caches
            call()
            calls.append(call)
        print("ready", flush=True)
        current = None
        while True:
            if current is not None and spec["keep_busy"]:
                # Keep the machine as busy as the other copies see it until the next "go".
                while not select.select([sys.stdin], [], [], 0)[0]:
                    current()
            line = sys.stdin.readline()
            if not line or line.strip() == "stop":
                return
            current = calls[int(line.split()[1])]
            seconds, n = _time(current, spec["repeats"], spec["min_seconds"])
            print(json.dumps({"seconds": seconds, "calls": n}), flush=True)


# -- the parent ---------------------------------------------------------------------------
# A busy process's loop: pure Python on one core, until its parent is gone (checked
# every few milliseconds), so that a bench killed before it could stop them (SIGTERM
# runs no finally) leaves no process keeping a core busy behind it.
_BUSY = ("import os\nparent = os.getppid()\n"
         "while os.getppid() == parent:\n    for _ in range(100_000): pass\n")


def _busy_loop():
    return subprocess.Popen([sys.executable, "-c", _BUSY], stdin=subprocess.DEVNULL)


def _start(spec, env, module="numlstm.bench_isolated"):
    proc = subprocess.Popen([sys.executable, "-m", module],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            bufsize=1, env=env)
    proc.stdin.write(json.dumps(spec) + "\n")
    proc.stdin.flush()
    return proc


def _expect(proc, what):
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"a benchmark worker ({what}) ended early with status "
                           f"{proc.wait()}")
    return line


def measure(specs, load=0, copies=1, rounds=3, env=None, module="numlstm.bench_isolated"):
    """Time each library's tasks in fresh workers (`python -m module`, whose main runs
    _worker), `rounds` rounds, the libraries' order rotating from round to round,
    `load` busy processes meanwhile, numlstm in `copies` workers at once. specs:
    {library: its workers' spec (lib, tasks, repeats, min_seconds, ...)}; a library
    with no tasks is skipped. Returns {(library, task index): [per round, the
    slowest copy's median seconds]}."""
    libraries = list(specs)
    busy = [_busy_loop() for _ in range(load)]
    results = {}
    try:
        time.sleep(0.2 if load else 0)
        for r in range(rounds):
            order = libraries[r % len(libraries):] + libraries[:r % len(libraries)]
            for lib in order:
                if not specs[lib]["tasks"]:
                    continue
                n = copies if lib == "numlstm" else 1
                spec = dict(specs[lib], keep_busy=n > 1)
                procs = [_start(spec, env, module) for _ in range(n)]
                try:
                    for p in procs:
                        line = _expect(p, lib)
                        if line.strip() != "ready":
                            raise RuntimeError(f"a benchmark worker ({lib}) said {line!r}")
                    for i in range(len(spec["tasks"])):
                        for p in procs:
                            p.stdin.write(f"go {i}\n")
                            p.stdin.flush()
                        answers = [json.loads(_expect(p, lib)) for p in procs]
                        results.setdefault((lib, i), []).append(
                            max(a["seconds"] for a in answers))
                    for p in procs:
                        p.stdin.write("stop\n")
                        p.stdin.flush()
                finally:
                    for p in procs:
                        try:
                            p.wait(timeout=60)
                        except subprocess.TimeoutExpired:
                            p.kill()
    finally:
        for p in busy:
            p.kill()
            p.wait()
    return results


def measure_tasks(libraries, tasks, module, repeats=5, min_seconds=0.3, **options):
    """measure() of the same tasks [(shape, mode)] in every library's workers
    (`python -m module`); options: measure's load, copies, rounds, env."""
    specs = {lib: dict(lib=lib, tasks=tasks, repeats=repeats, min_seconds=min_seconds)
             for lib in libraries}
    return measure(specs, module=module, **options)


def check_run(libraries, known_libraries, modes, known_modes, copies, load):
    """ValueError unless every library and mode is a known one, copies >= 1 and
    load >= 0 (a run's arguments: this module's and bench_convlstm's)."""
    for lib in libraries:
        if lib not in known_libraries:
            raise ValueError(f"libraries: expected some of {known_libraries}, got {lib!r}")
    for mode in modes:
        if mode not in known_modes:
            raise ValueError(f"modes: expected some of {known_modes}, got {mode!r}")
    if not isinstance(copies, int) or copies < 1 or not isinstance(load, int) or load < 0:
        raise ValueError(f"copies >= 1 and load >= 0 (integers), got {copies!r}, {load!r}")


def run(shapes, libraries=("numlstm", "torch", "onnxruntime"), modes=("inference",),
        load=0, copies=1, rounds=3, repeats=20, min_seconds=0.3, env=None, dtype="float32",
        cell="lstm"):
    """Time every library at every (T, B, I, H) in `shapes` and mode, each in its own
    process, `rounds` rounds; return one row dict per (shape, mode) with each
    library's median ms (and, with copies > 1, numlstm's copies as one figure each:
    the slowest copy's median). load: busy processes kept running meanwhile; env:
    the workers' environment (None: this process's), e.g. a PYTHONPATH that puts
    another build of numlstm first, for an A/B of two versions; dtype: the weights'
    precision; cell: "lstm", "gru" or "rnn" (the module docstring)."""
    check_run(libraries, LIBRARIES, modes, MODES, copies, load)
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    if dtype != "float32" and "onnxruntime" in libraries:
        raise ValueError("dtype: onnxruntime runs the float32 file; compare int8 and "
                         "bfloat16 with torch")
    if cell not in CELLS:
        raise ValueError(f"cell: expected one of {list(CELLS)}, got {cell!r}")
    if dtype != "float32" and cell == "rnn":
        raise ValueError("dtype: the quantized layers are the LSTM and the GRU, not the RNN")
    specs = {lib: dict(lib=lib, repeats=repeats, min_seconds=min_seconds, dtype=dtype,
                       cell=cell,
                       tasks=[(list(shape), mode) for shape in shapes for mode in modes
                              if supports(lib, mode, dtype)])
             for lib in libraries}
    measured = measure(specs, load=load, copies=copies, rounds=rounds, env=env)
    results = {(lib, tuple(specs[lib]["tasks"][i][0]), specs[lib]["tasks"][i][1]): seconds
               for (lib, i), seconds in measured.items()}
    rows = []
    for shape in shapes:
        for mode in modes:
            row = dict(T=shape[0], B=shape[1], I=shape[2], H=shape[3], mode=mode, load=load,
                       copies=copies, rounds=rounds, dtype=dtype, cell=cell)
            for lib in libraries:
                key = (lib, tuple(shape), mode)
                if key in results:
                    ms = 1e3 * statistics.median(results[key])
                    row[lib + "_ms"] = ms
                    row[lib + "_gflops"] = flops(*shape, mode, cell) / ms / 1e6
            for lib in libraries:
                if lib != "numlstm" and lib + "_ms" in row and "numlstm_ms" in row:
                    row[lib + "_ratio"] = row[lib + "_ms"] / row["numlstm_ms"]
            rows.append(row)
    return rows


def table(rows, libraries, roof, out=print, keys="TBIH", columns=None):
    """Print the rows: ms and GFLOP/s (share of the roof) of numlstm, each peer's ms
    and the ratio peer / numlstm (> 1: numlstm is faster). keys: the rows' shape
    fields, in order; columns: the line explaining the columns (None: the LSTM's,
    numlstm.bench.COLUMNS)."""
    peers = [lib for lib in libraries if lib != "numlstm"]
    shapes = [",".join(str(row[k]) for k in keys) for row in rows]
    width = max([16] + [len(s) for s in shapes])
    head = (f"{'mode':<9} {','.join(keys):>{width}} | {'numlstm ms':>10} {'GFLOP/s':>8} "
            f"{'%roof':>6}")
    for lib in peers:
        head += f" | {lib + ' ms':>14} {'ratio':>6}"
    if columns is None:
        from .bench import COLUMNS as columns
    out(columns)
    out(head)
    out("-" * len(head))
    for row, shape in zip(rows, shapes):
        line = f"{row['mode']:<9} {shape:>{width}} | "
        if "numlstm_ms" in row:
            line += (f"{row['numlstm_ms']:>10.3f} {row['numlstm_gflops']:>8.1f} "
                     f"{100 * row['numlstm_gflops'] / roof:>5.0f}%")
        else:
            line += f"{'-':>10} {'-':>8} {'-':>6}"
        for lib in peers:
            if lib + "_ms" in row:
                ratio = f"{row[lib + '_ratio']:>5.2f}x" if lib + "_ratio" in row else "-"
                line += f" | {row[lib + '_ms']:>14.3f} {ratio:>6}"
            else:
                line += f" | {'-':>14} {'-':>6}"
        out(line)


if __name__ == "__main__":
    _worker(json.loads(sys.stdin.readline()))
