"""Check every kernel variant against the reference, then time it.

    python -m numlstm.kernels.harness --backend cpu|cuda [--cell lstm|gru|rnn ...]
        [--plan auto one units rows rows-fused] [--options plain lengths ...]
        [--dtype float32 float64] [--shapes T,B,I,H ...] [--quick]
    python -m numlstm.kernels.harness --backend cuda --resources [--cell ...] [--dtype ...]
    python -m numlstm.kernels.harness --quantized [--shapes ...] [--quick]
    python -m numlstm.kernels.harness --convlstm [--backend cpu|cuda] [--dtype ...]
        [--quick]
    python -m numlstm.kernels.harness --attention [--dtype ...] [--quick]

A row is one variant: a cell, an option family, a plan (CPU: which split of the
time loop, on how many threads; CUDA: the persistent kernel or one launch a
step), a dtype and a pass: inference (forward without a cache), training (the
training forward and the backward), step (one streaming step from the state).
Each row runs the kernel on random inputs, compares every output and gradient
with reference.py (max |error| <= rtol * max |reference|, the first mismatch
printed), and only then times it: the median of several calls, and GFLOP/s from
the products' multiply-adds (forward 2 T B G (I + H), the backward twice that;
G = gates * H). It prints, per row, the variant, the plan that ran, the error
against its tolerance, ms and GFLOP/s (and, where the thread policy found a
thread lagging and held the loop on one thread, how often), and exits 1 on any
mismatch.

--resources (with --backend cuda; no GPU needed): ptxas's registers, shared
memory and spills of every CUDA kernel for sm_80, sm_89 and sm_90, and the launch
plan of every recurrence over the bench grid on an A100, L40S and H100, each
checked to fit (kernels/cuda/resources.py); exits 1 on a launch that would fail.

--quick: the smallest shapes, one timed call with no warm-up: it checks, and
says the rest runs (CI runs it for both backends; the CUDA one under NUMBA_ENABLE_CUDASIM=1,
where the simulator runs one block, slowly). Without a GPU and without the
simulator, --backend cuda says so and exits 2.

--quantized: the int8 and bfloat16 kernels (run_quantized): every int8 product
variant this CPU can run, checked to the bit against NumPy's integer product,
every bfloat16 one against NumPy's product of the rounded values, and the
quantized LSTM against its reference, each then timed.

--convlstm: the ConvLSTM kernels (run_convlstm) of the backend, inference and
training (forward and backward, every gradient), against reference.convlstm_*_ref,
then timed (on the CPU the direct form, and Winograd's where it applies); GFLOP/s
from the two convolutions' multiply-adds in the direct form (so Winograd's, which
does 2.25x fewer, can show more than the machine's peak).

--attention: the CPU kernels of attention's core (cpu/attention.py, numlstm.Seq2Seq's),
both scores, forward and backward against reference_attention.py, then timed;
GFLOP/s from the scores' and the context's multiply-adds.

Dimensions: T steps, B batch, I input features, H hidden units.
"""
import argparse
import statistics
import sys
import time

import numpy as np

from . import reference
from .gates import make_acts
from .table import GATES

RTOL = {np.float32: 2e-5, np.float64: 1e-10}  # (gradients: 5x; layer_norm in float32: 1e-4)
SHAPES = [(16, 8, 32, 64), (64, 32, 64, 128), (32, 64, 128, 256)]
QUICK_SHAPES = [(5, 3, 4, 37), (1, 1, 3, 5)]
CUDA_QUICK_SHAPES = [(3, 2, 3, 5)]

# Option families: per cell, name -> (the packers' and the reference's options,
# the forward's per-call options as functions of (rng, T, B, H) or names).
OPTIONS = {
    "lstm": {
        "plain": {},
        "lengths": {"lengths": True},
        "clips": {"cell_clip": 0.5, "gate_clip": 1.5, "input_forget": True},
        "activations": {"acts": ("hard_sigmoid", "relu")},
        "proj": {"proj": True},
        "peephole": {"peephole": True},
        "dropout": {"h_mask": True, "lengths": True},
        "zoneout": {"zone": True, "lengths": True},
        "layer_norm": {"layer_norm": True},
    },
    "gru": {
        "plain": {},
        "lengths": {"lengths": True},
        "reset_before": {"reset_after": False},
        "activations": {"acts": ("hard_sigmoid", "relu")},
        "dropout": {"h_mask": True, "lengths": True},
        "zoneout": {"zone": True, "lengths": True},
        "layer_norm": {"layer_norm": True},
    },
    "rnn": {
        "plain": {},
        "lengths": {"lengths": True},
        "relu": {"nonlinearity": "relu"},
    },
}
PLANS = {"cpu": ["auto", "one", "units", "rows", "rows-fused"],
         "cuda": ["auto", "persistent", "per-step"]}


class Case:
    """One cell, option family, dtype and shape: the random inputs, the packed
    weights (backend) and the reference's outputs and gradients."""

    def __init__(self, cell, family, dtype, shape, seed):
        self.cell, self.family, self.dtype = cell, family, np.dtype(dtype)
        self.shape = T, B, I, H = shape
        rng = np.random.default_rng(seed)
        spec = OPTIONS[cell][family]
        G = GATES[cell] * H
        scale = min(0.5, 1 / np.sqrt(H))

        def draw(*s, base=0.0, s_=scale):
            return (base + rng.standard_normal(s) * s_).astype(dtype)

        P = max(1, H // 2) if spec.get("proj") else H
        self.weights = [draw(G, I), draw(G, P), draw(G), draw(G)]
        self.pack_options, self.call = {}, {}
        if cell == "lstm":
            for k in ("cell_clip", "gate_clip", "input_forget"):
                if k in spec:
                    self.pack_options[k] = spec[k]
            if spec.get("proj"):
                self.pack_options["w_hr"] = draw(P, H)
            if spec.get("peephole"):
                self.pack_options["peephole"] = draw(3 * H)
            if spec.get("layer_norm"):
                self.pack_options.update(
                    ln_ih=draw(G, base=1, s_=0.3), ln_hh=draw(G, base=1, s_=0.3),
                    ln_c=draw(H, base=1, s_=0.3), ln_c_bias=draw(H, s_=0.3))
        if cell == "gru":
            self.pack_options["reset_after"] = spec.get("reset_after", True)
            if spec.get("layer_norm"):
                self.pack_options.update(ln_ih=draw(G, base=1, s_=0.3),
                                         ln_hh=draw(G, base=1, s_=0.3))
        if cell == "rnn":
            self.pack_options["nonlinearity"] = spec.get("nonlinearity", "tanh")
        if "acts" in spec:
            self.pack_options["acts"] = make_acts(*spec["acts"])
        if spec.get("h_mask"):
            self.call["h_mask"] = ((rng.random((B, P)) >= 0.3) / 0.7).astype(dtype)
        if spec.get("zone"):
            if cell == "lstm":
                self.call["zone_c"] = (rng.random((T, B, H)) < 0.3).astype(dtype)
            self.call["zone_h"] = (rng.random((T, B, P)) < 0.3).astype(dtype)
        self.lengths = None
        if spec.get("lengths") and B > 1:
            self.lengths = rng.integers(1, T + 1, B)
            self.lengths[0] = T
        self.x = draw(T, B, I, s_=1.0)
        self.state = [draw(B, P, s_=1.0)] + ([draw(B, H, s_=1.0)] if cell == "lstm" else [])
        self.dy = draw(T, B, P, s_=1.0)
        self.dstate = [draw(*s.shape, s_=1.0) for s in self.state]
        self.flops = 2 * T * B * G * (I + P)
        self.rtol = RTOL[self.dtype.type] * (5 if spec.get("layer_norm") and
                                             self.dtype == np.float32 else 1)
        self._reference()

    def _reference(self):
        ref_forward = getattr(reference, f"{self.cell}_forward_ref")
        ref_backward = getattr(reference, f"{self.cell}_backward_ref")
        options = dict(self.pack_options)
        after = [options.pop("reset_after")] if self.cell == "gru" else []  # (positional)
        out = ref_forward(self.x, *self.weights, *self.state, self.lengths, False, *after,
                          **options, **self.call)
        *outs, cache = out
        self.want = dict(zip(["y", "h", "c"][:len(outs)], outs))
        back = ref_backward(self.dy, *self.dstate, cache)
        *douts, grads = back
        self.want_grads = dict(zip(["dx", "dh0", "dc0"][:len(douts)], douts), **grads)
        # one step from the initial state: the reference on the first step alone
        if not self.call and self.lengths is None:
            step = ref_forward(self.x[:1], *self.weights, *self.state, None, False, *after,
                               **options)
            self.want_step = step[1:-1]
        else:
            self.want_step = None


def _error(got, want):
    """max |got - want| / max |want| (1 where want is all zero), and whether any
    value is not finite."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return np.inf
    if not np.isfinite(got).all():
        return np.inf
    scale = np.abs(want).max() if want.size else 1.0
    return float(np.abs(got - want).max() / (scale or 1.0)) if want.size else 0.0


class Runner:
    """The backend's kernels for one Case: packs once, runs a pass under a plan."""

    def __init__(self, backend):
        self.backend = backend
        if backend == "cpu":
            from .cpu import KERNELS, PLANS
            from .cpu.threads import LAGGED, POLICY, new_gate
            self.plans, self.policy, self.new_gate = PLANS, POLICY, new_gate
            self.lagged_slot = LAGGED
        else:
            from .cuda import KERNELS
        self.kernels = KERNELS

    def plan(self, case, packed, name, training):
        """The forward's keyword arguments for the plan `name`, and the plan's text;
        None where the variant does not apply to this case."""
        if self.backend == "cuda":
            return ({"auto": {}, "persistent": {"persistent": True},
                     "per-step": {"persistent": False}}[name], name)
        if getattr(packed, "kind", None) != "tiled":
            return ({}, "auto: the BLAS loop") if name == "auto" else None
        options = ("proj", "peephole", "dropout", "zoneout")  # (the LSTM's options' loop)
        plain = not (case.cell == "lstm" and case.family in options)
        # the plan the forward makes itself, with a gate of its own: a lag timed in
        # one variant holds no other (the lags are counted in the row)
        plan = self.plans[case.cell](case.x.shape, packed, training, plain)._replace(
            gate=self.new_gate())
        pool = max(2, plan.threads)
        forced = {"auto": {}, "one": dict(threads=1, rows=False, fused=False),
                  "units": dict(threads=pool, rows=False, fused=False),
                  "rows": dict(threads=pool, rows=True, fused=False),
                  "rows-fused": dict(threads=pool, rows=True, fused=True)}[name]
        if name.startswith("rows") and (case.cell == "rnn" or not plain):
            return None  # (no batch split for these)
        if name == "rows-fused" and case.cell != "lstm":
            return None
        plan = plan._replace(**forced)
        return {"plan": plan}, (f"auto: {plan}" if name == "auto" else str(plan))

    def forward(self, case, packed, training, extra):
        k = self.kernels[case.cell]
        return k.forward(case.x, packed, *case.state, case.lengths, False, training,
                         **case.call, **extra)

    def check(self, case, packed, pass_, extra):
        """The largest relative error of one pass's outputs (and, training, its
        gradients, divided by their 5x looser tolerance) against the reference."""
        k = self.kernels[case.cell]
        names = ["y", "h", "c"][:len(case.state) + 1]
        if pass_ == "step":
            got = k.step(case.x[0], packed, *case.state) if k.step else self.forward(
                _one_step(case), packed, False, extra)[1:-1]
            got = got if isinstance(got, tuple) else (got,)
            return max(_error(_host(g), w) for g, w in zip(got, case.want_step))
        out = self.forward(case, packed, pass_ == "training", extra)
        errs = [_error(_host(g), case.want[n]) for g, n in zip(out[:-1], names)]
        if pass_ == "training":
            back = k.backward(case.dy, *case.dstate, out[-1], packed)
            dnames = ["dx", "dh0", "dc0"][:len(case.state) + 1]
            errs += [_error(_host(g), case.want_grads[n]) / 5 for g, n in zip(back[:-1], dnames)]
            grads = back[-1]
            errs += [_error(_host(grads[n]), case.want_grads[n]) / 5 if n in grads else np.inf
                     for n in case.want_grads if n not in dnames]
        return max(errs)

    def call(self, case, packed, pass_, extra):
        """A function of no arguments that runs the pass once (what time() times)."""
        k = self.kernels[case.cell]
        if pass_ == "step":
            if k.step:
                return lambda: k.step(case.x[0], packed, *case.state)
            one = _one_step(case)
            return lambda: self.forward(one, packed, False, extra)
        if pass_ == "training":
            def train():
                out = self.forward(case, packed, True, extra)
                k.backward(case.dy, *case.dstate, out[-1], packed)
            return train
        return lambda: self.forward(case, packed, False, extra)

    def time(self, case, packed, pass_, extra, repeats, warm=True):
        """The median seconds of `repeats` calls of the pass, after one untimed (none
        when not warm: the check's call compiled it). On the CPU the thread
        policy's gate for calls starts clear, so that a hold an earlier variant
        earned does not put this one on one thread."""
        if self.backend == "cpu":
            self.policy.gate()[:] = 0
        call = self.call(case, packed, pass_, extra)
        if warm:
            call()  # (allocations, caches)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def lagged(self, extra):
        """The regions the thread policy found lagged while a CPU plan ran (each starts
        a hold on one thread: on a busy machine a variant's time is then partly the
        one thread's); 0 for other backends and the BLAS loops."""
        plan = extra.get("plan")
        return 0 if plan is None else int(plan.gate[self.lagged_slot])

    def flops(self, case, pass_):
        """The pass's multiply-add FLOPs (the products'; the gate math not counted)."""
        if pass_ == "step":
            return case.flops // case.shape[0]
        return case.flops * (3 if pass_ == "training" else 1)


def _one_step(case):
    """The case's first step alone, as a sequence of one (for a one-step forward)."""
    one = Case.__new__(Case)
    one.__dict__.update(case.__dict__)
    one.x, one.lengths, one.call = case.x[:1], None, {}
    return one


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def run(backend, cells, plans, families, dtypes, shapes, quick, out=None):
    """Check then time every variant; print a row each (to out, default stdout);
    return the mismatches."""
    out = sys.stdout if out is None else out
    runner = Runner(backend)
    repeats = 1 if quick else 7
    failures = []
    head = (f"{'cell':<5} {'options':<12} {'dtype':<8} {'T,B,I,H':<14} {'pass':<10} "
            f"{'plan':<34} {'error (tol)':<20} {'ms':>9} {'GFLOP/s':>8}")
    print(head, file=out)
    print("-" * len(head), file=out)
    seed = 0
    for cell in cells:
        for family in families or OPTIONS[cell]:
            if family not in OPTIONS[cell]:
                continue
            for dtype in dtypes:
                for shape in shapes:
                    seed += 1
                    case = Case(cell, family, dtype, shape, seed)
                    k = runner.kernels[cell]
                    packed = k.pack(*case.weights, **case.pack_options)
                    for pass_ in ("inference", "training", "step"):
                        if pass_ == "step" and case.want_step is None:
                            continue
                        for name in plans:
                            planned = runner.plan(case, packed, name, pass_ == "training")
                            if planned is None or (pass_ == "step" and name != "auto"):
                                continue
                            extra, plan_text = planned
                            if pass_ == "step":
                                plan_text = "the streaming step" if (
                                    backend == "cpu") else "a one-step forward"
                            err = runner.check(case, packed, pass_, extra)
                            ok = err <= case.rtol
                            label = (f"{cell:<5} {family:<12} {np.dtype(dtype).name:<8} "
                                     f"{','.join(map(str, shape)):<14} {pass_:<10} "
                                     f"{plan_text:<34} {err:8.1e} ({case.rtol:.0e}) ")
                            if not ok:
                                failures.append(label)
                                print(label + " MISMATCH", file=out, flush=True)
                                continue
                            seconds = runner.time(case, packed, pass_, extra, repeats,
                                                  warm=not quick)
                            flops = runner.flops(case, pass_)
                            lags = runner.lagged(extra)
                            print(f"{label}{seconds * 1e3:9.3f} {flops / seconds / 1e9:8.3g}"
                                  + (f"  (held on one thread after {lags} lagged region"
                                     f"{'s' if lags > 1 else ''})" if lags else ""),
                                  file=out, flush=True)
    return failures


def _checked_row(text, mismatch, call, ops, quick, failures, out, repeats):
    """Print a row of run_quantized or run_convlstm: `text` and MISMATCH (added to
    failures), or `text`, then the median time of the call (one call with --quick,
    else `repeats` after a warm-up) and ops / time (GOP/s or GFLOP/s)."""
    if mismatch:
        failures.append(text)
        print(text + " MISMATCH", file=out, flush=True)
        return
    times = []
    for _ in range(1 if quick else repeats + 1):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times[0 if quick else 1:])
    print(f"{text}{seconds * 1e3:9.3f} {ops / seconds / 1e9:8.3g}", file=out, flush=True)


def _pass_table(out, shape_label):
    """Print the head of _check_passes's table (shapes named by shape_label) to out
    (None: stdout) -> out."""
    out = sys.stdout if out is None else out
    head = f"{'pass':<18} {'dtype':<8} {shape_label:<26} {'error (tol)':<20} " \
           f"{'ms':>9} {'GFLOP/s':>8}"
    print(head, file=out)
    print("-" * len(head), file=out)
    return out


def _check_passes(checks, calls, dtype, shape, flops, quick, failures, out, repeats):
    """The rows of run_convlstm and run_attention at one shape and dtype: for each
    pass, checks[pass] = (outputs, the reference's), compared within RTOL (5x for
    training), then calls[pass] timed by _checked_row; flops: a forward's (a
    training pass counts 3x)."""
    for name, (gots, wants) in checks.items():
        err = max(_error(g, w) for g, w in zip(gots, wants))
        training = name.startswith("training")
        tol = RTOL[dtype] * (5 if training else 1)
        text = (f"{name:<18} {np.dtype(dtype).name:<8} {','.join(map(str, shape)):<26} "
                f"{err:8.1e} ({tol:.0e})  ")
        _checked_row(text, err > tol, calls[name], flops * (3 if training else 1),
                     quick, failures, out, repeats)


def run_quantized(shapes, quick, out=None):
    """The reduced-precision kernels (cpu/qtile.py, cpu/quantized.py): each int8
    product variant this CPU runs, against NumPy's integer product to the bit, and
    each bfloat16 one against reference.bfloat16_product_ref, then timed (GOP/s:
    2 M N K); then the int8 and bfloat16 layers (the machine's
    variant) against reference.lstm_forward_quantized_ref (fed the kernel's h, so
    that a one-quantum jump of h over many steps does not hide the rest), then
    timed. A row each; returns the mismatches."""
    from .cpu import lstm_forward_quantized_cpu, quantized, qtile
    from .cpu.microkernel import CB
    out = sys.stdout if out is None else out
    repeats = 1 if quick else 7
    failures = []
    head = f"{'kernel':<26} {'T,B,I,H':<16} {'error (tol)':<20} {'ms':>9} {'GOP/s':>8}"
    print(head, file=out)
    print("-" * len(head), file=out)

    def row(label, shape, err, tol, call, ops):
        _checked_row(f"{label:<26} {','.join(map(str, shape)):<16} {err:8.1e} ({tol:.0e}) ",
                     err > tol, call, ops, quick, failures, out, repeats)

    rng = np.random.default_rng(0)
    for T, B, I, H in shapes:
        M, K, N = T * B, H, 4 * (-(-H // 16) * 16)
        Kq = -(-K // 4) * 4
        A = rng.integers(1, 256, (M, Kq), dtype=np.uint8)
        W = rng.integers(-127, 128, (N, Kq), dtype=np.int8)
        blocks, off = quantized.int8_blocks(W)
        want = (A.astype(np.int64) - 128) @ W.T.astype(np.int64)
        for variant in qtile.VARIANTS:
            fn, got = qtile.INT8_ROWS[variant], np.empty((M, N), np.int32)
            fn(A, blocks, got, 0, M, 0, N // CB, off)
            err = float(np.abs(got - want).max())
            row(f"int8 product {variant}", (T, B, I, H), err, 0,
                lambda: fn(A, blocks, got, 0, M, 0, N // CB, off), 2 * M * N * Kq)
        a = rng.standard_normal((M, K)).astype(np.float32)
        wf = rng.standard_normal((N, K)).astype(np.float32)
        wb = quantized.bf16_blocks(quantized.to_bfloat16_bits(wf))
        zero = np.zeros((1, N), np.float32)
        want = reference.bfloat16_product_ref(a, wf)
        for variant in qtile.BF16_VARIANTS:
            pairs = np.empty((M, qtile.PAIR_BYTES[variant] * -(-K // 2)), np.uint8)
            quantized.BF16_ACTIVATIONS[variant](a, pairs, 0, M)
            fn, got = qtile.BF16_ROWS[variant], np.empty((M, N), np.float32)
            fn(pairs, wb, got, zero, False, 0, M, 0, N // CB)
            row(f"bf16 product {variant}", (T, B, I, H), _error(got, want), RTOL[np.float32],
                lambda: fn(pairs, wb, got, zero, False, 0, M, 0, N // CB), 2 * M * N * K)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        k = 1 / np.sqrt(H)
        w = [rng.uniform(-k, k, s).astype(np.float32) for s in ((4 * H, I), (4 * H, H),
                                                                (4 * H,), (4 * H,))]
        h0, c0 = (0.5 * rng.standard_normal((B, H)).astype(np.float32) for _ in range(2))
        for dtype in ("int8", "bfloat16"):
            cell = quantized.pack_lstm_quantized(*w, dtype)
            y = lstm_forward_quantized_cpu(x, cell, h0, c0)[0]
            # (each step's product reads the kernel's h: reference.lstm_forward_quantized_ref)
            y_ref = reference.lstm_forward_quantized_ref(
                x, *w, h0, c0, dtype=dtype, h_in=np.concatenate([h0[None], y[:-1]]))[0]
            err = _error(y, y_ref)
            name = f"LSTM {dtype} ({qtile.VARIANT if dtype == 'int8' else qtile.BF16_VARIANT})"
            row(name, (T, B, I, H), err, RTOL[np.float32],
                lambda: lstm_forward_quantized_cpu(x, cell, h0, c0),
                2 * T * B * 4 * H * (I + H))
    return failures


CONVLSTM_SHAPES = [  # T, B, R, C, I, F, k, padding
    (10, 4, 32, 32, 1, 16, 3, "same"), (10, 4, 32, 32, 8, 32, 3, "same"),
    (6, 2, 24, 20, 3, 17, 5, "valid")]
CONVLSTM_QUICK = [(3, 2, 7, 6, 2, 5, 3, "same"), (1, 1, 5, 4, 1, 3, 2, "valid")]


def run_convlstm(backend, dtypes, shapes, quick, out=None):
    """The ConvLSTM kernels of `backend` (cpu/convlstm.py, cuda/convlstm.py): a row
    per shape, dtype and pass (inference; training: the training forward and the
    backward), every output and gradient against the reference, then timed; on the
    CPU, where Winograd's form applies (cpu/winograd.py), a row for each form.
    Returns the mismatches."""
    from .conv import conv_geometry
    forms = (None,)
    if backend == "cpu":
        from .cpu.convlstm import PackedConvLSTM, convlstm_backward_cpu, convlstm_forward_cpu
        from .cpu.winograd import applies

        def forward(a, training, form=None):
            cell = PackedConvLSTM(a["w_ih"], a["w_hh"], a["b"])
            return convlstm_forward_cpu(a["x"], cell, a["h0"], a["c0"],
                                        padding=a["padding"], training=training,
                                        winograd=form == "winograd")
        backward = convlstm_backward_cpu
    else:
        from .cuda.convlstm import convlstm_backward_cuda as backward
        from .cuda.convlstm import convlstm_forward_cuda

        def forward(a, training, form=None):
            return convlstm_forward_cuda(a["x"], a["w_ih"], a["w_hh"], a["b"], a["h0"],
                                         a["c0"], padding=a["padding"], training=training)
    out = _pass_table(out, "T,B,R,C,I,F,k,pad")
    repeats, failures = (1 if quick else 5), []
    rng = np.random.default_rng(0)
    for T, B, R, C, I, F, k, padding in shapes:
        for dtype in dtypes:
            x = rng.standard_normal((T, B, R, C, I)).astype(dtype)
            w_ih = (0.3 * rng.standard_normal((4 * F, I, k, k))).astype(dtype)
            w_hh = (0.1 * rng.standard_normal((4 * F, F, k, k))).astype(dtype)
            b = (0.1 * rng.standard_normal(4 * F)).astype(dtype)
            grid = tuple(conv_geometry(n, k, 1, 1, padding)[0] for n in (R, C))
            zeros = np.zeros((B,) + grid + (F,), dtype)
            y, h, c, cache = reference.convlstm_forward_ref(x, w_ih, w_hh, b, zeros, zeros,
                                                            padding=padding)
            a = dict(x=x, w_ih=w_ih, w_hh=w_hh, b=b, h0=zeros, c0=zeros, padding=padding)
            dy = rng.standard_normal(y.shape).astype(dtype)
            want = reference.convlstm_backward_ref(dy, h, c, cache)
            flops = 2 * T * np.prod(y.shape[1:4]) * k * k * (I + F) * 4 * F
            if backend == "cpu":
                forms = ("direct",) + (("winograd",) if applies((k, k), (k, k), (1, 1),
                                                                (1, 1), dtype) else ())
            checks, calls = {}, {}
            for form in forms:
                name = "" if form is None else f"/{form}"
                grads = backward(dy, h, c, forward(a, True, form)[3])
                checks["inference" + name] = ([_host(v) for v in forward(a, False, form)[:3]],
                                              [y, h, c])
                checks["training" + name] = ([_host(grads[n]) for n in want],
                                             list(want.values()))
                calls["inference" + name] = lambda form=form: forward(a, False, form)
                calls["training" + name] = lambda form=form: backward(
                    dy, h, c, forward(a, True, form)[3])
            _check_passes(checks, calls, dtype, (T, B, R, C, I, F, k, padding), flops, quick,
                          failures, out, repeats)
    return failures


ATTENTION_SHAPES = [  # B, T, S, Q, K, score
    (64, 12, 30, 128, 128, "luong"), (64, 12, 30, 128, 128, "bahdanau"),
    (64, 1, 30, 128, 128, "luong"), (16, 50, 100, 256, 256, "luong")]
ATTENTION_QUICK = [(3, 2, 5, 4, 3, "luong"), (2, 1, 4, 3, 5, "bahdanau")]


def run_attention(dtypes, shapes, quick, out=None):
    """The attention kernels (cpu/attention.py): a row per shape, dtype and pass
    (inference: the forward; training: the forward and the backward), the context,
    weights and every gradient against the reference, then timed. Returns the
    mismatches."""
    from . import reference_attention as ref
    from . import cpu
    out = _pass_table(out, "B,T,S,Q,K,score")
    repeats, failures = (1 if quick else 5), []
    rng = np.random.default_rng(0)
    for B, T, S, Q, K, score in shapes:
        q, keys = rng.standard_normal((B, T, Q)), rng.standard_normal((B, S, Q))
        values, dctx = rng.standard_normal((B, S, K)), rng.standard_normal((B, T, K))
        v = rng.standard_normal(Q) if score == "bahdanau" else None
        lengths = rng.integers(1, S + 1, B)
        ctx, a = ref.attention_forward_ref(q, keys, values, lengths, v)
        want = [g for g in ref.attention_backward_ref(dctx, q, keys, values, a, lengths, v)
                if g is not None]
        flops = 2 * B * T * S * (Q + K)
        for dtype in dtypes:
            args = [x.astype(dtype) for x in (q, keys, values)]
            v_in = np.zeros(0, dtype) if v is None else v.astype(dtype)
            d = dctx.astype(dtype)
            got_ctx, got_a = cpu.attention_forward_cpu(*args, lengths, v_in)
            grads = cpu.attention_backward_cpu(d, *args, got_a, lengths, v_in)
            checks = {"inference": ([got_ctx, got_a], [ctx, a]),
                      "training": (list(grads[:len(want)]), want)}
            calls = {"inference": lambda: cpu.attention_forward_cpu(*args, lengths, v_in),
                     "training": lambda: cpu.attention_backward_cpu(
                         d, *args, cpu.attention_forward_cpu(*args, lengths, v_in)[1],
                         lengths, v_in)}
            _check_passes(checks, calls, dtype, (B, T, S, Q, K, score), flops, quick,
                          failures, out, repeats)
    return failures


def _shape(text):
    try:
        T, B, I, H = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T,B,I,H (four integers), got {text!r}")
    if min(T, B, I, H) < 1:
        raise argparse.ArgumentTypeError(f"T, B, I and H must be at least 1, got {text!r}")
    return T, B, I, H


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m numlstm.kernels.harness",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--cell", nargs="+", choices=list(GATES), default=list(GATES))
    p.add_argument("--plan", nargs="+", default=None,
                   help="CPU: auto one units rows rows-fused; CUDA: auto persistent per-step "
                        "(default: all of the backend's)")
    p.add_argument("--options", nargs="+", default=None,
                   help="option families (default: all): " + ", ".join(
                       sorted({f for c in OPTIONS.values() for f in c})))
    p.add_argument("--dtype", nargs="+", choices=["float32", "float64"],
                   default=["float32", "float64"])
    p.add_argument("--shapes", nargs="+", type=_shape, default=None, metavar="T,B,I,H")
    p.add_argument("--quick", action="store_true", help="the smallest shapes, one timed call")
    p.add_argument("--quantized", action="store_true",
                   help="the int8 and bfloat16 kernels instead (every int8 product variant "
                        "this CPU runs, and the quantized LSTM)")
    p.add_argument("--convlstm", action="store_true",
                   help="the ConvLSTM kernels of --backend instead, inference and training")
    p.add_argument("--attention", action="store_true",
                   help="the attention kernels instead (the CPU's), both scores, forward "
                        "and backward")
    p.add_argument("--resources", action="store_true",
                   help="--backend cuda, no GPU needed: each kernel's registers, shared "
                        "memory and spills from ptxas (sm_80, sm_89, sm_90), and every launch "
                        "plan over the bench grid checked to fit (kernels/cuda/resources.py)")
    a = p.parse_args(argv)
    if a.resources:
        if a.backend != "cuda":
            p.error("--resources is of the cuda backend: add --backend cuda")
        from .cuda.resources import main as resources
        return resources(a.cell, a.dtype)
    if a.attention:
        if a.backend != "cpu":
            p.error("--attention: the attention kernels are the CPU's")
        failures = run_attention([np.dtype(d).type for d in a.dtype],
                                 ATTENTION_QUICK if a.quick else ATTENTION_SHAPES, a.quick)
        for f in failures:
            print("  " + f, file=sys.stderr)
        return 1 if failures else 0
    if a.convlstm:
        failures = run_convlstm(a.backend, [np.dtype(d).type for d in a.dtype],
                                CONVLSTM_QUICK if a.quick or _simulated() else CONVLSTM_SHAPES,
                                a.quick)
        for f in failures:
            print("  " + f, file=sys.stderr)
        return 1 if failures else 0
    if a.quantized:
        if a.backend != "cpu":
            p.error("--quantized: the int8 and bfloat16 kernels are the CPU's")
        failures = run_quantized(a.shapes or (QUICK_SHAPES if a.quick else SHAPES), a.quick)
        for f in failures:
            print("  " + f, file=sys.stderr)
        return 1 if failures else 0
    plans = a.plan or PLANS[a.backend]
    unknown = [n for n in plans if n not in PLANS[a.backend]]
    if unknown:
        p.error(f"--plan: {unknown} is not a plan of the {a.backend} backend; expected "
                f"some of {PLANS[a.backend]}")
    families = a.options
    if families:
        known = {f for c in OPTIONS.values() for f in c}
        bad = [f for f in families if f not in known]
        if bad:
            p.error(f"--options: unknown {bad}; expected some of {sorted(known)}")
    if a.backend == "cuda":
        import numba
        from numba import cuda
        if not numba.config.ENABLE_CUDASIM and not cuda.is_available():
            print("--backend cuda: no GPU here (numba.cuda.is_available() is False); set "
                  "NUMBA_ENABLE_CUDASIM=1 to run the kernels in Numba's simulator at tiny "
                  "shapes", file=sys.stderr)
            return 2
    shapes = a.shapes or (CUDA_QUICK_SHAPES if a.backend == "cuda" and (
        a.quick or _simulated()) else QUICK_SHAPES if a.quick else SHAPES)
    failures = run(a.backend, a.cell, plans, families, [np.dtype(d).type for d in a.dtype],
                   shapes, a.quick)
    if failures:
        print(f"\n{len(failures)} variant(s) did not match the reference:", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        return 1
    return 0


def _simulated():
    import numba
    return bool(numba.config.ENABLE_CUDASIM)


if __name__ == "__main__":
    sys.exit(main())
