"""The `numlstm` command.

    numlstm train    train a model on a CPU (with no arguments: a forecaster of the
                     embedded Mauna Loa CO2 record); --text FILE: a character model;
                     --csv FILE --column NAME: your own series; --task adding: the
                     adding problem; --task translate: a sequence-to-sequence model
                     (dates written many ways -> ISO dates, or --pairs FILE); under
                     `mpiexec -n N` with --distributed mpi: on N processes or machines
    numlstm generate continue a prompt with a trained character model
    numlstm predict  forecast the next values of a series with a model of
                     `numlstm train` (the forecast task)
    numlstm translate  decode texts with a model of `numlstm train --task translate`
    numlstm demo     build a stacked bidirectional LSTM, run a training forward and
                     backward on random data, check the CPU kernels against the NumPy
                     reference, and print what happened and how long it took
    numlstm bench    numlstm's LSTM (--cell gru, rnn: GRU, RNN) against torch's,
                     side by side on the CPU (--backend cuda: on the GPU, against
                     cuDNN) (--quick: a CI-sized grid; --full: the asv grid;
                     --step: one streaming step; --parity: errors against torch;
                     --isolated --cell convlstm2d: ConvLSTM2D against torch and Keras)
"""
import argparse
import contextlib
import os
import sys
import time

import numpy as np


def _demo(args):
    import numlstm

    rng = np.random.default_rng(args.seed)
    T, B, I, H = args.steps, args.batch, args.input_size, args.hidden_size
    lstm = numlstm.LSTM(I, H, num_layers=2, bidirectional=True, seed=args.seed)
    print(f"numlstm {numlstm.__version__}: {lstm}")
    n_params = sum(p.size for p in lstm.params.values())
    print(f"parameters: {n_params} in {len(lstm.params)} arrays "
          f"(weight_ih_l0 {lstm.params['weight_ih_l0'].shape}, ...)")
    x = rng.standard_normal((T, B, I)).astype(np.float32)

    t0 = time.perf_counter()
    y, (h_n, c_n) = lstm(x, training=True)
    t1 = time.perf_counter()
    dx, (dh0, dc0) = lstm.backward(np.ones_like(y))
    t2 = time.perf_counter()
    print(f"forward  x {x.shape} -> y {y.shape}, h_n {h_n.shape}, c_n {c_n.shape} "
          f"in {1e3 * (t1 - t0):.1f} ms (first call includes compiling or loading kernels)")
    print(f"backward dy {y.shape} -> dx {dx.shape}, dh0 {dh0.shape}, "
          f"grad norm {np.sqrt(sum((g ** 2).sum() for g in lstm.grads.values())):.4f} "
          f"in {1e3 * (t2 - t1):.1f} ms")

    t0 = time.perf_counter()
    for _ in range(args.repeat):
        lstm(x)
    dt = (time.perf_counter() - t0) / args.repeat
    print(f"inference: {dt * 1e3:.2f} ms per call, {T * B / dt:,.0f} tokens/s")

    ref = numlstm.LSTM(I, H, num_layers=2, bidirectional=True, backend="numpy",
                       dtype=np.float64)
    ref.load_weights(lstm.state_dict())
    y_ref, _ = ref(x.astype(np.float64))
    err = np.abs(y - y_ref).max() / np.abs(y_ref).max()
    print(f"CPU kernels against the float64 NumPy reference: max relative error {err:.1e}")
    return 0 if err < 1e-5 else 1


def _bench(args):
    from . import bench
    from .train import UsageError

    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise UsageError(f"--json {args.json}: the folder does not exist")
    if args.memory:
        m = bench.training_memory(*args.memory)
        mib = 1 / 2 ** 20
        print(f"training forward T={m['T']} B={m['B']} H={m['H']}: the cache must hold "
              f"gates, c and h of each step = {m['expected'] * mib:.1f} MiB; held after "
              f"the call: {m['retained'] * mib:.1f} MiB; peak during the call (output "
              f"included): {m['peak'] * mib:.1f} MiB")
        return 0
    if args.step:
        print("one streaming step, layer.step(x_t, state), B=1, I=H=64, from Python "
              "(median of blocks of 1000 steps); torch: module(x_t[None], state)")
        rows = {}
        for cell in ("lstm", "gru", "rnn"):
            rows[cell] = bench.step_cost(cell, with_torch=not args.no_torch)
            print(f"  {cell:<5} numlstm {rows[cell]['numlstm']:6.1f} us" + (
                f"   torch {rows[cell]['torch']:6.1f} us" if "torch" in rows[cell] else ""))
        _write_json(args.json, rows)
        return 0
    if args.options:
        if args.cell not in bench.VARIANTS:
            raise SystemExit(f"numlstm bench --options: cells with options are "
                             f"{sorted(bench.VARIANTS)}, not {args.cell}")
        _write_json(args.json, bench.option_costs(repeats=args.repeats, cell=args.cell))
        return 0
    if args.parity:
        print("worst relative error against torch (max |numlstm - torch| / max |torch|), "
              "2 layers, bidirectional, T=7 B=4 I=5 H=6; lengths via pack_padded_sequence")
        rows = []
        for cell, options in (("lstm", {}), ("gru", {}), ("rnn", {}),
                              ("rnn", {"nonlinearity": "relu"})):
            name = cell + "".join(f" {v}" for v in options.values())
            for dtype in (np.float32, np.float64):
                for lengths in (False, True):
                    e = bench.parity(cell, dtype, lengths=lengths, **options)
                    rows.append(dict(cell=name, dtype=np.dtype(dtype).name,
                                     lengths=lengths, **e))
                    values = max(e[k] for k in ("y", "h_n", "c_n") if k in e)
                    grads = max(v for k, v in e.items() if k not in ("y", "h_n", "c_n"))
                    print(f"  {name:<9} {np.dtype(dtype).name:<8} "
                          f"{'lengths' if lengths else 'full':<8} outputs {values:.1e}  "
                          f"gradients {grads:.1e}")
        _write_json(args.json, rows)
        return 0
    if args.char is not None:
        from .train import read_text, UsageError
        text = read_text(args.char) if args.char else _default_char_text()
        if len(text) < 1000:
            raise UsageError(f"--char: the text has {len(text)} characters; give at least "
                             f"1000")
        result = bench.compare_char(text, steps=args.steps)
        _write_json(args.json, result)
        return 0
    if args.isolated:
        return _bench_isolated(args)
    if args.cell in ("convlstm2d", "seq2seq"):
        raise UsageError(f"--cell {args.cell} times each library in a process of its own: "
                         "add --isolated")
    if args.load or args.copies > 1 or args.peer or args.modes or args.dtype != "float32":
        raise UsageError("--load, --copies, --peer, --modes and --dtype time each library "
                         "in a process of its own: add --isolated")
    if args.shapes:
        if any(len(s) > 4 for s in args.shapes):
            raise UsageError("--shapes: T,B,R,C,I,F[,k] are --isolated --cell convlstm2d's; "
                             "the LSTM's are T,B,H")
        if any(len(s) == 4 and s[2] != s[3] for s in args.shapes):
            raise UsageError("--shapes: the in-process comparison has I = H (T,B,H); "
                             "give T,B,I,H with --isolated")
        grid = [(s[0], s[1], s[-1]) for s in args.shapes]
    else:
        grid = bench.QUICK_GRID if args.quick else (
            bench.FULL_GRID if args.full else bench.DEFAULT_GRID)
    if args.backend == "cuda":
        from .dispatch import gpu_available
        if not gpu_available():
            from .train import UsageError
            raise UsageError("--backend cuda times the CUDA kernels against cuDNN and "
                             "needs an NVIDIA GPU; none is usable here")
    rows = bench.compare(grid, repeats=args.repeats, with_torch=not args.no_torch,
                         cell=args.cell, backend=args.backend)
    _write_json(args.json, rows)
    return 0


def _bench_isolated(args):
    from . import bench, bench_isolated
    from .train import UsageError
    if args.cell == "convlstm2d":
        return _bench_convlstm(args)
    if args.cell == "seq2seq":
        return _bench_seq2seq(args)
    if args.peer and "keras" in args.peer:
        raise UsageError("--peer keras: Keras is the peer of --cell convlstm2d only")
    if args.shapes and any(len(s) > 4 for s in args.shapes):
        raise UsageError("--shapes: T,B,R,C,I,F[,k] are --cell convlstm2d's; the LSTM's "
                         "are T,B,I,H")
    if args.shapes:
        shapes = [s if len(s) == 4 else (s[0], s[1], s[2], s[2]) for s in args.shapes]
    else:
        shapes = bench_isolated.QUICK_GRID if args.quick else bench_isolated.GRID
    peers = args.peer if args.peer else ([] if args.no_torch else ["torch"])
    quantized = args.dtype != "float32"
    if quantized and "onnxruntime" in peers:
        raise UsageError("--dtype int8/bfloat16: onnxruntime runs the float32 file; "
                         "compare with --peer torch (its quantize_dynamic int8 LSTM)")
    libraries = ["numlstm"] + (["numlstm_f32"] if quantized else []) + list(
        dict.fromkeys(peers))
    modes = args.modes or (["inference", "step"] if quantized else ["inference", "training"])
    if quantized and "training" in modes:
        raise UsageError("--dtype int8/bfloat16: the quantized layers are inference-only; "
                         "--modes inference step")
    if quantized and args.cell == "rnn":
        raise UsageError("--dtype int8/bfloat16: the quantized layers are the LSTM and the "
                         "GRU; --cell lstm or gru")
    roof = bench.roofs()
    print(bench.roof_line(roof))
    if quantized:
        from .kernels.cpu.qtile import bf16_variant, int8_variant
        variant = int8_variant() if args.dtype == "int8" else bf16_variant()
        print(f"numlstm: quantize_dynamic({args.cell}, {args.dtype!r}) ({args.dtype} "
              f"products: {variant}); numlstm_f32: its float32 layer; torch: "
              "quantize_dynamic int8")
    print(f"each library in a fresh process of its own, {args.rounds} rounds (the order "
          f"rotating), the median of each worker's time per call; busy processes: "
          f"{args.load}; numlstm copies at once: {args.copies}")
    rows = bench_isolated.run(shapes, libraries, modes, load=args.load, copies=args.copies,
                              rounds=args.rounds, repeats=args.repeats, dtype=args.dtype,
                              cell=args.cell)
    bench_isolated.table(rows, libraries, roof["fma_peak"])
    return _isolated_report(rows, roof, args.json)


def _peer_run(args, module, shape, libraries, what):
    """What --cell convlstm2d and seq2seq share: --dtype and --modes checked, the
    shapes (--shapes through `shape`, else the module's grid), the roof and `what`
    runs printed, then module.run -> (rows, roof); rows None after a ParityError
    (said on stderr)."""
    from . import bench
    from .train import UsageError
    if args.dtype != "float32" or (args.modes and "step" in args.modes):
        raise UsageError(f"--cell {args.cell}: float32, --modes inference training")
    try:
        shapes = ([shape(s) for s in args.shapes] if args.shapes else
                  module.QUICK_GRID if args.quick else module.GRID)
    except ValueError as err:
        raise UsageError(f"--cell {args.cell} {err}") from None
    roof = bench.roofs()
    print(bench.roof_line(roof))
    print(f"{what}. Each library in a fresh process of its own, {args.rounds} rounds (the "
          f"order rotating), the median of each worker's time per call; busy processes: "
          f"{args.load}; numlstm copies at once: {args.copies}")
    try:
        return module.run(shapes, libraries, args.modes or ["inference", "training"],
                          load=args.load, copies=args.copies, rounds=args.rounds,
                          repeats=args.repeats), roof
    except module.ParityError as err:
        print(f"numlstm bench: not timed: {err}", file=sys.stderr)
        return None, roof


def _bench_convlstm(args):
    from . import bench_convlstm
    from .train import UsageError
    if args.peer and "onnxruntime" in args.peer:
        raise UsageError("--cell convlstm2d: the peers are torch and keras")
    peers = list(dict.fromkeys(args.peer or ["torch", "keras"]))
    if args.no_torch and "torch" in peers:
        peers.remove("torch")
    libraries = ["numlstm"] + peers
    rows, roof = _peer_run(args, bench_convlstm, bench_convlstm.shape7, libraries,
                           "ConvLSTM2D, padding same, float32, x [B,T,R,C,I]: numlstm; torch: "
                           "one Conv2d on cat([x_t, h]) a step; keras: ConvLSTM2D on JAX, "
                           "jitted")
    if rows is None:
        return 1
    if peers:
        print("parity before timing (y, dx and weight gradients on the probes T,B,R,C = "
              f"{','.join(map(str, bench_convlstm.PROBE))}): worst |peer - numlstm| "
              + ", ".join(f"{p} {rows[0][p + '_parity']:.1e}" for p in peers))
    bench_convlstm.table(rows, libraries, roof["fma_peak"])
    return _isolated_report(rows, roof, args.json)


def _bench_seq2seq(args):
    from . import bench_seq2seq
    from .train import UsageError
    if args.peer and set(args.peer) - {"torch"}:
        raise UsageError("--cell seq2seq: the peer is torch")
    libraries = ["numlstm"] + ([] if args.no_torch else ["torch"])
    rows, roof = _peer_run(args, bench_seq2seq, bench_seq2seq.shape3, libraries,
                           "Seq2Seq (the translate task's model), float32, shapes B,S,T: "
                           "numlstm; torch: the same model in nn.LSTM, nn.Embedding, "
                           "nn.Linear")
    if rows is None:
        return 1
    if "torch" in libraries:
        print(f"parity before timing (logits, loss, every gradient and the greedy outputs "
              f"at B,S,T = {','.join(map(str, bench_seq2seq.PROBE))}): worst |torch - "
              f"numlstm| {rows[0]['torch_parity']:.1e}, the same greedy outputs")
    bench_seq2seq.table(rows, libraries)
    for row in rows:
        row.update(roof)
    _write_json(args.json, rows)
    return 0


def _isolated_report(rows, roof, path):
    """The end of an --isolated run: the ratio's legend, and the rows with the
    machine's roof figures to `path` (--json); exit status 0."""
    print("ratio = peer time / numlstm time (> 1: numlstm is faster); %roof: numlstm's "
          "GFLOP/s as a share of the FMA peak")
    for row in rows:
        row.update(roof)
    _write_json(path, rows)
    return 0


def _write_json(path, rows):
    if path:
        import json
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)


def _train(args):
    from . import train

    if args.text and args.csv:
        raise train.UsageError("give --text or --csv, not both")
    if args.csv and not args.column:
        raise train.UsageError("--csv needs --column NAME (the column to forecast)")
    task = args.task  # main() resolved the default
    if task == "text" and not args.text:
        raise train.UsageError("--task text needs --text FILE")
    if task != "text" and args.text:
        raise train.UsageError(f"--text goes with the text task, not --task {task}")
    if task == "adding" and args.csv:
        raise train.UsageError("--csv goes with the forecast task, not --task adding")
    if task in ("frames", "translate") and args.csv:
        raise train.UsageError(f"--csv goes with the forecast task, not --task {task}")
    if task != "translate" and args.pairs:
        raise train.UsageError(f"--pairs goes with the translate task, not --task {task}")
    from .frames import run_frames
    from .translate import run_translate
    run = {"forecast": train.run_forecast, "text": train.run_text,
           "adding": train.run_adding, "frames": run_frames, "translate": run_translate}[task]
    group = args.group
    if group is None:
        run(args)
        return 0
    options = {k: v for k, v in vars(args).items() if k not in ("run", "group")}
    train._agree(args, "the command line", sorted(options.items()))
    if group.root:
        run(args)
        return 0
    args.verbose = False  # rank 0 alone shows progress and prints
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        run(args)
    return 0


def _translate(args):
    from .translate import translate
    print(translate(args))
    return 0


def _generate(args):
    from . import train
    print(train.generate(args))
    return 0


def _predict(args):
    from . import train
    print(train.predict(args))
    return 0


def _number(kind, minimum=0, strict=True):
    """An argparse type: a finite `kind` above (strict) or at least `minimum`."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}")
        if not np.isfinite(value) or (value <= minimum if strict else value < minimum):
            raise argparse.ArgumentTypeError(
                f"expected a finite number {'>' if strict else '>='} {minimum}, got {text}")
        return value
    return parse


def _positive(kind):
    return _number(kind, 0, strict=True)


def _shape(text):
    """--shapes: T,B,H, or T,B,I,H, or (--cell convlstm2d) T,B,R,C,I,F or
    T,B,R,C,I,F,k, with each an integer >= 1."""
    parts = text.split(",")
    try:
        values = tuple(int(v) for v in parts)
    except ValueError:
        values = ()
    if len(values) not in (3, 4, 6, 7) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected T,B,H or T,B,I,H (--cell convlstm2d: "
                                         f"T,B,R,C,I,F[,k]), integers >= 1, got {text!r}")
    return values


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (what was wrong and where to look), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _fraction(text):
    value = _positive(float)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text}")
    return value


def _add_train_parser(sub):
    p = sub.add_parser(
        "train", help="train a model (default: forecast the embedded CO2 record)",
        description="Train on a CPU. With no arguments: an LSTM forecaster of NOAA's Mauna "
                    "Loa weekly CO2 record (embedded, public domain), compared with a "
                    "seasonal-naive forecast. Writes metrics.json, checkpoint.npz and PNG "
                    "plots into --out.")
    what = p.add_argument_group("what to train")
    what.add_argument("--task", choices=["forecast", "text", "adding", "frames", "translate"],
                      help="forecast (default; CO2 or --csv), text (needs --text), "
                           "adding (the adding problem: a dependency over --seq-len "
                           "steps), frames (next-frame prediction of moving digits "
                           "with a ConvLSTM2D), or translate (a character-level "
                           "encoder-decoder with attention: dates written many ways -> "
                           "ISO dates, or --pairs FILE)")
    what.add_argument("--pairs", metavar="FILE",
                      help="translate: UTF-8 text, one pair a line, source TAB target; "
                           "validation on the last 10%% (default: generated dates)")
    what.add_argument("--text", metavar="FILE", help="train a character-level language "
                      "model on this UTF-8 text; validation on its last 10%%")
    what.add_argument("--csv", metavar="FILE", help="forecast a column of this CSV file "
                      "(header row required)")
    what.add_argument("--column", metavar="NAME", help="the --csv column to forecast")
    what.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm",
                      help="the recurrent cell (default: lstm; with --task adding, rnn "
                           "shows a plain RNN failing where the LSTM succeeds)")
    m = p.add_argument_group("model")
    m.add_argument("--embed", type=_positive(int), default=32,
                   help="text and translate: embedding size (default: 32)")
    m.add_argument("--hidden", type=_positive(int),
                   help="hidden units per layer (default: 128 for text, 64 otherwise; "
                        "translate: per direction of the bidirectional encoder, the "
                        "decoder has twice as many; frames: the ConvLSTM2D's filters, "
                        "default 16)")
    m.add_argument("--layers", type=_positive(int),
                   help="stacked recurrent layers (frames: ConvLSTM2D layers; default: 1)")
    m.add_argument("--attention", choices=["luong", "bahdanau", "none"], default="luong",
                   help="translate: the decoder's attention over the source (default: "
                        "luong)")
    m.add_argument("--dropout", type=_number(float, 0, strict=False), default=0.0,
                   help="text, translate and frames: dropout between layers and before "
                        "the output (default: 0)")
    o = p.add_argument_group("training")
    o.add_argument("--seq-len", type=_positive(int), default=None,
                   help="text: characters per training window (default: 64); adding: "
                        "sequence length T (default: 100); frames: frames a sequence "
                        "(default: 10)")
    o.add_argument("--batch-size", type=_positive(int), default=None,
                   help="sequences per step (default: 32; frames: 16; translate: 64)")
    o.add_argument("--lr", type=_positive(float), default=None,
                   help="Adam's learning rate (default: 2e-3 text, 5e-3 forecast, "
                        "frames and translate, 1e-2 adding)")
    o.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                   help="learning-rate schedule: linear warm-up then cosine decay, or "
                        "constant (default: cosine)")
    o.add_argument("--steps", type=_positive(int),
                   help="text and adding: optimizer steps (default: 2000 each); "
                        "frames and translate: 1500")
    o.add_argument("--epochs", type=_positive(int),
                   help="forecast: passes over the training windows (default: 60)")
    o.add_argument("--clip-norm", type=_number(float, 0, strict=False), default=1.0,
                   help="clip the global gradient norm to this (0: no clipping; default 1)")
    o.add_argument("--seed", type=_number(int, 0, strict=False), default=0,
                   help="seeds everything (default: 0)")
    f = p.add_argument_group("forecast")
    f.add_argument("--window", type=_positive(int),
                   help="past values the model reads (default: two seasons, at least 24)")
    f.add_argument("--horizon", type=_positive(int),
                   help="values forecast at once (default: one season, or 1)")
    f.add_argument("--season", type=_positive(int),
                   help="season length in steps for the seasonal-naive baseline "
                        "(default: 52 for CO2, 1 for --csv: the last value)")
    f.add_argument("--val-fraction", type=_fraction, default=0.2,
                   help="the last fraction of the series held out (default: 0.2)")
    r = p.add_argument_group("output")
    r.add_argument("--out", metavar="DIR",
                   help="run folder (default: a new runs/<task>-<date>-<time>)")
    r.add_argument("--checkpoint-every", type=_number(int, 0, strict=False), default=500,
                   metavar="N",
                   help="text and adding: also write the checkpoint every N steps "
                        "(default: 500; forecast writes one after every epoch)")
    r.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue from a checkpoint file or run folder (model, optimizer, "
                        "step, random state) up to --steps or --epochs, ending as an "
                        "uninterrupted run would; a damaged checkpoint falls back to the "
                        "previous one. Without --out, the run goes on in that folder")
    r.add_argument("--on-nan", choices=["stop", "skip"], default="stop",
                   help="a NaN or infinite loss or gradient: stop with a message naming "
                        "the step, leaving the last checkpoint as it was (default), or "
                        "skip that step's update")
    r.add_argument("--quiet", dest="verbose", action="store_false",
                   help="no progress bar")
    d = p.add_argument_group("several processes or machines")
    d.add_argument("--distributed", choices=["mpi"],
                   help="mpi: data-parallel training over MPI, launched as `mpiexec -n N "
                        "numlstm train ... --distributed mpi`: each of the N ranks trains "
                        "on 1/N of every batch and the gradients are averaged, so N ranks "
                        "end where one process would; rank 0 alone writes the run folder; "
                        "a rank that fails stops them all. Needs pip install "
                        "\"numlstm[mpi]\" (mpi4py and MPICH)")
    p.set_defaults(run=_train)


def _add_translate_parser(sub):
    p = sub.add_parser("translate", help="decode texts with a trained translate model")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a run folder of `numlstm train --task translate`, or its "
                        "checkpoint.npz")
    p.add_argument("--beam", type=_positive(int), default=1,
                   help="beam size (default: 1, greedy decoding)")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="texts to translate")
    p.set_defaults(run=_translate)


def _add_generate_parser(sub):
    p = sub.add_parser("generate", help="continue a prompt with a trained character model")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a run folder of `numlstm train --text`, or its checkpoint.npz")
    p.add_argument("--prompt", default="", help="text to start from (default: the "
                   "vocabulary's first character)")
    p.add_argument("--length", type=_positive(int), default=200,
                   help="characters to generate (default: 200)")
    p.add_argument("--temperature", type=_number(float, 0, strict=False), default=0.8,
                   help="sampling temperature; 0 picks the likeliest character "
                        "(default: 0.8)")
    p.add_argument("--seed", type=_number(int, 0, strict=False), default=0,
                   help="seeds the sampling (default: 0)")
    p.add_argument("--quantize", choices=["int8", "bfloat16"],
                   help="run the model's LSTM layers with int8 or bfloat16 weights "
                        "(numlstm.quantize_dynamic; default: float32 as trained)")
    p.set_defaults(run=_generate)


def _add_predict_parser(sub):
    p = sub.add_parser("predict", help="forecast the next values of a series with a "
                                       "trained forecaster")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a run folder of `numlstm train` (the forecast task), or its "
                        "checkpoint.npz")
    p.add_argument("--csv", metavar="FILE", help="the series to continue: a column of "
                   "this CSV file (default: the embedded CO2 record)")
    p.add_argument("--column", metavar="NAME", help="the --csv column")
    p.add_argument("--quantize", choices=["int8", "bfloat16"],
                   help="run the model's recurrent layers with int8 or bfloat16 weights "
                        "(numlstm.quantize_dynamic; default: float32 as trained)")
    p.set_defaults(run=_predict)


_TASK_DEFAULTS = {"text": dict(lr=2e-3, seq_len=64, batch_size=32),
                  "forecast": dict(lr=5e-3, seq_len=None, batch_size=32),
                  "adding": dict(lr=1e-2, seq_len=100, batch_size=32),
                  "frames": dict(lr=5e-3, seq_len=10, batch_size=16),
                  "translate": dict(lr=5e-3, seq_len=None, batch_size=64)}


def _default_char_text():
    """English prose for the character benchmark when no text is given, from what
    every Python install has: docstrings of standard-library modules (the
    benchmark measures speed, and compares two libraries on the same text)."""
    import collections
    import json
    import logging
    import os
    import re
    import textwrap
    parts = [m.__doc__ or "" for m in (argparse, collections, json, logging, os, re,
                                       textwrap)]
    return "\n".join(parts)


def main(argv=None):
    parser = _Parser(prog="numlstm", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train_parser(sub)
    _add_generate_parser(sub)
    _add_predict_parser(sub)
    _add_translate_parser(sub)
    demo = sub.add_parser("demo", help="run a layer forward and backward and print it")
    demo.add_argument("--steps", type=_positive(int), default=50)
    demo.add_argument("--batch", type=_positive(int), default=16)
    demo.add_argument("--input-size", type=_positive(int), default=32)
    demo.add_argument("--hidden-size", type=_positive(int), default=64)
    demo.add_argument("--repeat", type=_positive(int), default=20)
    demo.add_argument("--seed", type=_number(int, 0, strict=False), default=0)
    demo.set_defaults(run=_demo)
    bench = sub.add_parser("bench", help="compare the LSTM (or GRU, RNN) with torch's, on "
                                         "the CPU or the GPU")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a small grid, for CI")
    size.add_argument("--full", action="store_true",
                      help="T in 16,128,1024 x H in 64,256,1024 x B in 1,16,128 (slow)")
    size.add_argument("--shapes", nargs="+", metavar="T,B,H", type=_shape,
                      help="shapes to run (--isolated: T,B,I,H; --cell convlstm2d: "
                           "T,B,R,C,I,F or T,B,R,C,I,F,k, k odd, default 3; --cell "
                           "seq2seq: B,S,T)")
    size.add_argument("--char", nargs="?", const="", metavar="TEXT",
                      help="train the character model (embed 32, hidden 128, batch 32, 64 "
                           "characters, Adam) in numlstm and in torch side by side, on TEXT "
                           "(default: a built-in English text), and compare tokens/s and "
                           "val_bpc")
    size.add_argument("--memory", nargs=3, type=_positive(int), metavar=("T", "B", "H"),
                      help="report the training cache's memory at one shape "
                           "(the issue's: 1024 64 256)")
    size.add_argument("--step", action="store_true",
                      help="the cost of one streaming step (layer.step) at B=1, H=64, "
                           "for each cell")
    size.add_argument("--options", action="store_true",
                      help="the cost of each cell option (cell_clip, zoneout, "
                           "layer_norm, ...) against the plain layer, on the CPU; the LSTM's, "
                           "or with --cell gru the GRU's")
    size.add_argument("--parity", action="store_true",
                      help="worst errors of LSTM, GRU and RNN against torch, with and "
                           "without lengths, float32 and float64")
    bench.add_argument("--cell", choices=["lstm", "gru", "rnn", "convlstm2d", "seq2seq"],
                       default="lstm",
                       help="the cell of the speed grid (default: lstm); convlstm2d (with "
                            "--isolated): ConvLSTM2D against torch and Keras (JAX), 64x64 "
                            "frames, I=1, k=3, T=10, (B, F) in (4,16), (4,64), (16,16), "
                            "(16,64); --quick: 16x16 and 32x32; seq2seq (with --isolated): "
                            "the translate task's Seq2Seq against the same model in torch, "
                            "shapes B,S,T (inference: greedy decoding)")
    bench.add_argument("--backend", choices=["cpu", "cuda"], default="cpu",
                       help="the speed grid's backend: cpu against torch on the CPU, or "
                            "cuda against torch's cuDNN on the GPU (default: cpu)")
    bench.add_argument("--isolated", action="store_true",
                       help="time each library in a fresh process of its own (rounds "
                            "alternating, median of rounds); shapes are T,B,I,H (default: "
                            "7 shapes from one step to T=1000)")
    bench.add_argument("--peer", action="append", choices=["torch", "onnxruntime", "keras"],
                       help="--isolated: a library to compare with (repeat for several; "
                            "default: torch; --cell convlstm2d: torch and keras); "
                            "onnxruntime runs the file export_onnx writes")
    bench.add_argument("--load", type=_number(int, 0, strict=False), default=0,
                       help="--isolated: keep N other processes busy while timing")
    bench.add_argument("--copies", type=_positive(int), default=1,
                       help="--isolated: run N numlstm workers at once, each timing the "
                            "same call (the slowest copy's time is reported)")
    bench.add_argument("--rounds", type=_positive(int), default=3,
                       help="--isolated: rounds of fresh processes (default: 3)")
    bench.add_argument("--modes", nargs="+", choices=["inference", "training", "step"],
                       help="--isolated: what to time (default: inference training; step "
                            "is one streaming step from Python, onnxruntime's T=1 run)")
    bench.add_argument("--dtype", choices=["float32", "int8", "bfloat16"], default="float32",
                       help="--isolated: numlstm's weights, quantize_dynamic's int8 or "
                            "bfloat16 (against torch's quantize_dynamic int8 LSTM and "
                            "numlstm's float32, inference and step; default: float32)")
    bench.add_argument("--repeats", type=_positive(int), default=5)
    bench.add_argument("--steps", type=_positive(int), default=300,
                       help="--char: training steps each (default: 300)")
    bench.add_argument("--no-torch", action="store_true")
    bench.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    bench.set_defaults(run=_bench)
    args = parser.parse_args(argv)
    if args.command == "train":
        args.task = args.task or ("text" if args.text else "forecast")
        for key, value in _TASK_DEFAULTS[args.task].items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        if args.clip_norm < 0 or args.dropout < 0 or args.dropout >= 1:
            parser.error("--clip-norm must be >= 0 and --dropout in [0, 1)")
    from .distributed import RanksDiffer
    from .optim import NonFiniteError
    from .train import UsageError
    group = None
    try:
        if args.command == "train":
            args.group = group = _group(args.distributed)
        return args.run(args)
    except (UsageError, RanksDiffer) as err:  # (RanksDiffer: every rank's, alike)
        message, code = str(err), 2
    except MemoryError as err:  # a training cache that cannot fit, refused up front
        message, code = str(err), 2
    except NonFiniteError as err:
        message, code = (f"stopped: {err}; the last checkpoint is as it was (--resume from "
                         f"it, or pass --on-nan skip)"), 3
    if group is not None and group.size > 1:
        group.fail(message, code)  # the other ranks may be waiting: stop them all
    print(f"numlstm {args.command}: {message}", file=sys.stderr)
    return code


def _group(distributed):
    """The numlstm.distributed.Group that --distributed names, or None; a UsageError
    when mpi4py or MPI cannot be loaded."""
    if distributed is None:
        return None
    from .distributed import MPIUnavailable, mpi
    from .train import UsageError
    try:
        return mpi()
    except MPIUnavailable as err:
        raise UsageError(f"--distributed {distributed}: {err}") from None


if __name__ == "__main__":
    sys.exit(main())
