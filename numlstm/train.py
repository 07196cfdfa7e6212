"""The training tasks behind `numlstm train` and `numlstm generate`.

    forecast  a series (the embedded Mauna Loa CO2 record, or a CSV column): from a
              window of past values predict the next `horizon` values at once
    text      a character-level language model on a text file
    adding    Hochreiter & Schmidhuber's adding problem: a long-range dependency

Each task writes into its run folder metrics.json, checkpoint.npz and PNG plots,
and returns the metrics. Errors a user can fix (a missing file, a bad column)
are raised as UsageError, which the command prints as one line.

With --distributed mpi (args.group, a numlstm.distributed.Group) every rank runs
the same task on the same data, draws the same batches and trains on its rows of
each (numlstm.distributed); rank 0 alone chooses and writes the run folder.
"""
import csv
import hashlib
import json
import math
import os
import time
from importlib import resources

import numpy as np

from . import plot
from .checkpoint import load_checkpoint, resolve, save_checkpoint
from .files import write_text_atomically
from .layers import CELLS, Dense, Dropout, Embedding, Recurrent
from .model import Sequential


class UsageError(Exception):
    """A problem with the user's arguments or files, told in one line."""


CO2_NOTE = ("NOAA/Scripps Mauna Loa weekly CO2 (ppm), 1958-03-29 to 2001-12-29, "
            "public domain; from statsmodels' co2 dataset (Keeling & Whorf 2004)")


# -- run folders and outputs -------------------------------------------------------------
def make_run_dir(out, task):
    """`out` if given (created if needed), else a new runs/<task>-<time> folder."""
    if out is None:
        base = os.path.join("runs", f"{task}-{time.strftime('%Y%m%d-%H%M%S')}")
        out, n = base, 1
        while os.path.exists(out):
            n += 1
            out = f"{base}-{n}"
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {out}: cannot create the folder ({err.strerror})") from None
    return out


def write_json(path, data):
    write_text_atomically(path, json.dumps(data, indent=1) + "\n")


def _optimizer_args(args, steps):
    from .optim import cosine
    schedule = cosine(steps, warmup_steps=min(100, steps // 10)) if args.schedule == "cosine" \
        else None
    return dict(lr=args.lr, clip_norm=args.clip_norm or None, lr_schedule=schedule)


def resume_from(args, task):
    """The checkpoint `--resume` names (falling back to the previous one when the
    latest is damaged), or None for a fresh run. A run folder that has no checkpoint
    yet (a run killed before its first) starts from the beginning."""
    if not args.resume:
        return None
    ckpt = task_checkpoint(args.resume, "--resume", task, f"checkpoint, not a {task} model's",
                           fallback=True, missing_ok=os.path.isdir(args.resume))
    if ckpt is None:
        print(f"--resume {args.resume}: no checkpoint there yet; starting from the beginning")
    elif ckpt.note:
        print(f"--resume: {ckpt.note}")
    return ckpt


def task_checkpoint(path, flag, task, other, fallback=False, missing_ok=False):
    """The checkpoint of `task` that the option `flag` names. An unreadable file, or
    another task's (`other` says what it is not), is a UsageError naming the flag;
    a missing one too, unless missing_ok (then None)."""
    try:
        ckpt = load_checkpoint(path, fallback=fallback)
    except FileNotFoundError as err:
        if missing_ok:
            return None
        raise UsageError(f"{flag}: {err}") from None
    except ValueError as err:
        raise UsageError(f"{flag}: {err}") from None
    if ckpt.extra.get("task") != task:
        raise UsageError(f"{flag} {path}: a {ckpt.extra.get('task')!r} {other}")
    return ckpt


def run_dir(args, task):
    """--out, else the folder being resumed (a resumed run goes on where it was), else
    a new runs/<task>-<time> folder. Over MPI rank 0 alone makes it and tells the
    others its name."""
    group = args.group
    if group is not None and not group.root:
        return group.bcast(None)
    if args.out is None and args.resume and os.path.isdir(args.resume):
        out = make_run_dir(args.resume, task)
    else:
        out = make_run_dir(args.out, task)
    return out if group is None else group.bcast(out)


def _writes(args):
    """Whether this process writes the run's files: rank 0 over MPI, else always."""
    return args.group is None or args.group.root


def _agree(args, what, *values):
    """Over MPI, numlstm.distributed.RanksDiffer on every rank unless every rank holds
    the same values (the data, the step a resumed run starts at, ...): ranks that drew
    different batches would train different models, and ranks that stop at different
    steps would wait for each other for ever."""
    if args.group is not None:
        h = hashlib.sha256()
        for v in values:
            h.update((v if isinstance(v, bytes) else str(v).encode()) + b"\0")
        args.group.check_same(what, h.hexdigest())


def _ranks(args):
    """metrics.json's record of how the run was spread: ranks and threads per rank."""
    import numba
    return {"ranks": 1 if args.group is None else args.group.size,
            "threads_per_rank": numba.get_num_threads()}


def _compile(model, loss, args, steps, resumed=None):
    """Compile model for training, continuing resumed's optimizer when given."""
    opt = _optimizer_args(args, steps)
    if resumed is not None:
        model.compile(resumed.optimizer or "adam", loss, on_nonfinite=_NAN[args.on_nan])
        model.optimizer.lr_schedule = opt["lr_schedule"]
    else:
        model.compile("adam", loss, on_nonfinite=_NAN[args.on_nan], **opt)


_NAN = {"stop": "raise", "skip": "skip"}


def throughput(tokens, seconds):
    """metrics.json's tokens_per_second, the same in every task: the time steps of
    every training sequence this run trained on (all epochs or steps, batch rows
    times sequence length), over train_seconds, the wall time of the training loop
    (its validation passes and checkpoints included)."""
    return tokens / seconds if seconds > 0 else None


def beat_baseline(score, baseline, what, hint):
    """Say so when a run did not do clearly better than its baseline (lower is
    better; clearly: below 90% of it), with what to change; return whether it did."""
    beat = score < 0.9 * baseline
    if not beat:
        print(f"note: this run did not beat {what} ({score:.4f} against {baseline:.4f}). "
              f"{hint}")
    return beat


# -- forecasting ---------------------------------------------------------------------------
def load_co2():
    """The embedded weekly CO2 series: (dates as numpy datetime64[D], ppm with the 59
    missing weeks filled by linear interpolation)."""
    text = resources.files("numlstm").joinpath("data/co2_weekly.csv").read_text()
    rows = [line.split(",") for line in text.splitlines()
            if line and not line.startswith("#")][1:]
    dates = np.array([r[0] for r in rows], dtype="datetime64[D]")
    values = np.array([float(r[1]) if r[1] else np.nan for r in rows])
    return dates, _fill_gaps(values)


def _fill_gaps(values):
    bad = np.isnan(values)
    if bad.all():
        raise UsageError("the series has no numbers")
    idx = np.arange(len(values))
    values = values.copy()
    values[bad] = np.interp(idx[bad], idx[~bad], values[~bad])
    return values


def load_csv_column(path, column):
    """One numeric column of a CSV file with a header row; blanks are interpolated."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or []):
                raise UsageError(f"--column {column!r}: not in {path}'s header "
                                 f"{reader.fieldnames}")
            raw = [row[column] for row in reader]
    except OSError as err:
        raise UsageError(f"--csv {path}: cannot read it ({err.strerror})") from None
    except (csv.Error, UnicodeDecodeError) as err:
        raise UsageError(f"--csv {path}: not a readable CSV file ({err})") from None
    values = []
    for n, v in enumerate(raw):
        if v is None:
            raise UsageError(f"--csv {path}: row {n + 2} has no {column!r} cell")
        try:
            value = float(v) if v.strip() else np.nan
        except ValueError:
            value = None
        if value is None or np.isinf(value):
            raise UsageError(f"--csv {path}: row {n + 2} of column {column!r} is not a "
                             f"finite number: {v!r}")
        values.append(value)
    return np.arange(len(values)), _fill_gaps(np.array(values))


def seasonal_naive(series, origin, horizon, season):
    """Forecast of series[origin+1 .. origin+horizon] repeating the last season seen
    (season=1: the last value)."""
    k = np.arange(1, horizon + 1)
    return series[origin + k - season * np.ceil(k / season).astype(int)]


def forecast_windows(series, origins, window, horizon, scale):
    """Inputs [N,window,1] and targets [N,horizon], both relative to the value at each
    origin and divided by scale, so one model serves every level of the series."""
    origins = np.asarray(origins)
    last = series[origins]
    x = series[origins[:, None] + np.arange(-window + 1, 1)] - last[:, None]
    y = series[origins[:, None] + np.arange(1, horizon + 1)] - last[:, None]
    return (x / scale)[:, :, None].astype(np.float32), (y / scale).astype(np.float32)


def run_forecast(args):
    if args.csv:
        t, series = load_csv_column(args.csv, args.column)
        name, unit = f"{os.path.basename(args.csv)}:{args.column}", args.column
        season = args.season or 1
    else:
        t, series = load_co2()
        name, unit, season = "co2", "CO2 (ppm)", args.season or 52
    window = args.window or max(2 * season, 24)
    horizon = args.horizon or (season if season > 1 else 1)
    n = len(series)
    n_val = int(round(n * args.val_fraction))
    split = n - n_val  # targets at index >= split are validation
    train_origins = np.arange(window - 1, split - horizon)
    val_origins = np.arange(max(split - 1, window - 1, season - 1), n - horizon)
    if len(train_origins) < 1 or len(val_origins) < 1:
        raise UsageError(f"the series has {n} values: too few for a window of {window}, "
                         f"a horizon of {horizon} and a validation fraction of "
                         f"{args.val_fraction}")
    rel = series[train_origins[:, None] + np.arange(-window + 1, horizon + 1)] - \
        series[train_origins][:, None]
    scale = float(rel.std()) or 1.0
    x_tr, y_tr = forecast_windows(series, train_origins, window, horizon, scale)
    x_va, y_va = forecast_windows(series, val_origins, window, horizon, scale)

    epochs = args.epochs or 60
    steps = epochs * math.ceil(len(x_tr) / args.batch_size)
    resumed = resume_from(args, "forecast")
    if resumed:
        model = resumed.model
        history = resumed.extra["history"]
    else:
        seeds = np.random.SeedSequence(args.seed).generate_state(4)
        hidden, layers = args.hidden or 64, args.layers or 1
        model = Sequential([
            CELLS[args.cell](1, hidden, num_layers=layers, return_sequences=False,
                             seed=int(seeds[0])),
            Dense(hidden, horizon, seed=int(seeds[1]))], name="forecaster",
            seed=int(seeds[2]))
        history = {"loss": [], "tokens_per_s": [], "val_loss": []}
    _compile(model, "mse", args, steps, resumed)
    done = len(history["loss"])
    _agree(args, "the series and the epoch to start at", series.tobytes(), done)
    out = run_dir(args, "forecast")
    print(f"forecasting {name}: {n} values, window {window}, horizon {horizon}, "
          f"{len(x_tr)} training windows, {len(x_va)} validation origins -> {out}"
          + (f" (resuming after epoch {done})" if resumed else ""))
    model.summary()
    extra = {"task": "forecast", "scale": scale, "window": window, "horizon": horizon}

    def checkpoint(epoch, new):
        for key in history:
            history[key].append(new[key][-1])
        if _writes(args):
            save_checkpoint(os.path.join(out, "checkpoint.npz"), model, model.optimizer,
                            step=model.optimizer.steps, extra={**extra, "history": history})

    t0 = time.perf_counter()
    if done < epochs:
        model.fit(x_tr, y_tr, epochs=epochs, initial_epoch=done, batch_size=args.batch_size,
                  validation_data=(x_va, y_va), verbose=args.verbose,
                  on_epoch_end=checkpoint, distributed=args.group)
    train_seconds = time.perf_counter() - t0
    tokens = (epochs - done) * x_tr.shape[0] * x_tr.shape[1]  # windows of `window` steps

    pred = model.predict(x_va, batch_size=512) * scale + series[val_origins][:, None]
    truth = series[val_origins[:, None] + np.arange(1, horizon + 1)]
    naive = np.stack([seasonal_naive(series, o, horizon, season) for o in val_origins])
    rmse = float(np.sqrt(np.mean((pred - truth) ** 2)))
    base_rmse = float(np.sqrt(np.mean((naive - truth) ** 2)))
    baseline = f"seasonal naive (the value {season} steps earlier)" if season > 1 else \
        "naive (the last value)"
    metrics = {
        "task": "forecast", "dataset": CO2_NOTE if not args.csv else name,
        "values": n, "window": window, "horizon": horizon, "season": season,
        "validation_origins": len(val_origins), "val_rmse": rmse,
        "baseline": baseline, "baseline_rmse": base_rmse,
        "rmse_ratio_to_baseline": rmse / base_rmse if base_rmse else None,
        "epochs": epochs, "parameters": model.count_params(),
        "train_seconds": train_seconds, "tokens_per_second": throughput(tokens, train_seconds),
        "final_loss": history["loss"][-1], "final_val_loss": history["val_loss"][-1],
        "skipped_steps": model.skipped_steps, "seed": args.seed, **_ranks(args)}
    metrics.update(_quantized(model, lambda m: float(np.sqrt(np.mean(
        (m.predict(x_va, batch_size=512) * scale + series[val_origins][:, None] - truth) ** 2))),
        "val_rmse", rmse))
    if not _writes(args):
        return metrics
    write_json(os.path.join(out, "metrics.json"), metrics)
    ep = list(range(1, epochs + 1))
    plot.loss_curve(os.path.join(out, "loss.png"),
                    {"training": (ep, history["loss"]),
                     "validation": (ep, history["val_loss"])},
                    "epoch", f"{name}: the model's loss, per epoch",
                    ylabel="mean squared error of the scaled series\n(change from the "
                           "last value seen, over its deviation)")
    starts = np.arange(0, len(val_origins), horizon)  # forecasts that do not overlap
    spans = [t[o + 1:o + horizon + 1] for o in val_origins[starts]]
    paths = [(f"numlstm {args.cell.upper()}", dict(color="tab:blue"),
              list(zip(spans, pred[starts]))),
             (baseline.split(" (")[0], dict(color="tab:orange", ls="--"),
              list(zip(spans, naive[starts])))]
    lo = max(split - 4 * horizon, 0)
    plot.forecast(os.path.join(out, "forecast.png"), t[split:], series[split:], paths,
                  f"{name}: consecutive {horizon}-step forecasts, joined end to end\n"
                  f"validation RMSE {rmse:.3f} against "
                  f"{baseline.split(' (')[0]} {base_rmse:.3f}", unit,
                  context=(t[lo:split + 1], series[lo:split + 1]),
                  xlabel="date" if not args.csv else "row")
    print(f"validation RMSE {rmse:.4f} ({unit}){_quantized_line(metrics, 'val_rmse')}, "
          f"{baseline}: {base_rmse:.4f}; trained in {train_seconds:.1f} s; wrote "
          f"{out}/metrics.json, checkpoint.npz, forecast.png, loss.png")
    beat_baseline(rmse, base_rmse, f"the {baseline}",
                  "Try more --epochs, a longer --window or a larger --hidden.")
    return metrics


# -- character language model ------------------------------------------------------------
def read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise UsageError(f"--text {path}: cannot read it ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"--text {path}: not UTF-8 text ({err.reason} at byte "
                         f"{err.start})") from None
    return text


def encode_text(text, vocab, seq_len):
    """text -> (train ids, validation ids): each character's index in vocab, the last
    10% (at least seq_len + 1 characters) held out for validation."""
    index = {c: i for i, c in enumerate(vocab)}
    ids = np.fromiter((index[c] for c in text), np.int64, len(text))
    n_val = max(len(ids) // 10, seq_len + 1)
    return ids[:-n_val], ids[-n_val:]


def char_model(vocab, embed, hidden, layers, dropout, seed, cell="lstm"):
    seeds = np.random.SeedSequence(seed).generate_state(5)
    stack = [Embedding(vocab, embed, seed=int(seeds[0])),
             CELLS[cell](embed, hidden, num_layers=layers, dropout=dropout,
                         seed=int(seeds[1]))]
    if dropout:
        stack.append(Dropout(dropout, seed=int(seeds[2])))
    stack.append(Dense(hidden, vocab, seed=int(seeds[3])))
    return Sequential(stack, name=f"char_{cell}", seed=int(seeds[4]))


def sample_batch(ids, rng, batch, seq_len):
    """B random windows of the text: inputs [B,T] and the next characters [B,T]."""
    starts = rng.integers(0, len(ids) - seq_len - 1, batch)
    idx = starts[:, None] + np.arange(seq_len)
    return ids[idx], ids[idx + 1]


def _quantized(model, metric, name, value):
    """The validation metric of the trained model with its LSTM and GRU layers
    quantized (numlstm.quantize_dynamic, int8 and bfloat16), for metrics.json:
    {name_int8, name_bfloat16, and each one's change from the float32 value, in
    percent}; none for a model without such a layer or with one whose options the
    quantized layers do not run (numlstm.layers.quantized)."""
    from .layers import GRU, LSTM
    from .quantize import quantize_dynamic
    if not any(isinstance(layer, (LSTM, GRU)) for layer in model.layers):
        return {}
    out = {}
    for dtype in ("int8", "bfloat16"):
        try:
            quantized = quantize_dynamic(model, dtype)
        except ValueError:  # (a cell option it does not run: no such metric)
            return {}
        v = metric(quantized)
        out[f"{name}_{dtype}"] = v
        out[f"{name}_{dtype}_change_percent"] = 100 * (v - value) / value if value else None
    return out


def _quantized_line(metrics, name):
    """What the run prints of _quantized's metrics (empty without them)."""
    if f"{name}_int8" not in metrics:
        return ""
    return (f"; quantized: int8 {metrics[name + '_int8']:.4f}, bfloat16 "
            f"{metrics[name + '_bfloat16']:.4f}")


def bits_per_char(model, ids, seq_len, batch=64, distributed=None):
    """Mean cross-entropy over the text in consecutive windows of seq_len, in bits
    (distributed: the ranks share the windows out, see Sequential.evaluate)."""
    n = (len(ids) - 1) // seq_len
    if n < 1:
        raise UsageError(f"the validation text has {len(ids)} characters, fewer than "
                         f"--seq-len {seq_len} + 1")
    x = ids[:n * seq_len].reshape(n, seq_len)
    y = ids[1:n * seq_len + 1].reshape(n, seq_len)
    return model.evaluate(x, y, batch_size=batch, distributed=distributed) / math.log(2)


def run_text(args):
    text = read_text(args.text)
    seq_len, steps = args.seq_len, args.steps or 2000
    resume = resume_from(args, "text")
    if resume:
        vocab = resume.extra["vocab"]
        unknown = sorted(set(text) - set(vocab))
        if unknown:
            raise UsageError(f"--resume: the text has characters the checkpoint's "
                             f"vocabulary lacks: {''.join(unknown)[:20]!r}")
    else:
        vocab = "".join(sorted(set(text)))
    train_ids, val_ids = encode_text(text, vocab, seq_len)
    if len(train_ids) < seq_len + 2:
        raise UsageError(f"--text {args.text}: {len(text)} characters is too short for "
                         f"--seq-len {seq_len} (training takes the first 90%)")

    if resume:
        model, step = resume.model, resume.step
        data_rng = np.random.default_rng()
        data_rng.bit_generator.state = resume.extra["data_rng"]
        losses = resume.extra.get("losses", [])
    else:
        model = char_model(len(vocab), args.embed, args.hidden or 128, args.layers or 1,
                           args.dropout, args.seed, args.cell)
        step, losses = 0, []
        data_rng = np.random.default_rng(np.random.SeedSequence(args.seed).spawn(1)[0])
    _compile(model, "cross_entropy", args, steps, resume)
    _agree(args, "the text and the step to start at", text, step,
           data_rng.bit_generator.state)
    out = run_dir(args, "text")
    print(f"character model on {args.text}: {len(text):,} characters, vocabulary "
          f"{len(vocab)}, training on {len(train_ids):,}, validating on the last "
          f"{len(val_ids):,} -> {out}")
    model.summary()

    def checkpoint(step):
        if _writes(args):
            save_checkpoint(os.path.join(out, "checkpoint.npz"), model, model.optimizer,
                            step=step, extra={"task": "text", "vocab": vocab,
                                              "data_rng": data_rng.bit_generator.state,
                                              "losses": losses})

    seen = {"tokens": 0, "running": None, "t0": time.perf_counter()}

    def record(step, loss, batch):
        seen["tokens"] += batch[0].size
        running = seen["running"] = loss if seen["running"] is None else \
            0.98 * seen["running"] + 0.02 * loss
        losses.append([step, loss])
        if step % 10 == 0 or step == steps:
            tok_s = seen["tokens"] / (time.perf_counter() - seen["t0"])
            return {"loss": f"{running:.3f}", "tok_s": f"{tok_s:,.0f}"}
        return None

    train_seconds = step_loop(
        args, model, steps, step,
        lambda: sample_batch(train_ids, data_rng, args.batch_size, seq_len), record,
        checkpoint)
    step, tokens = steps, seen["tokens"]
    val_bpc = bits_per_char(model, val_ids, seq_len, distributed=args.group)
    counts = np.bincount(train_ids, minlength=len(vocab)) + 1
    p = counts / counts.sum()
    metrics = {"task": "text", "text": os.path.abspath(args.text), "characters": len(text),
               "vocab": len(vocab), "val_bpc": val_bpc,
               **_quantized(model, lambda m: bits_per_char(m, val_ids, seq_len,
                                                           distributed=args.group),
                            "val_bpc", val_bpc),
               "unigram_bpc": float(-(p * np.log2(p)).sum()),
               "steps": step, "skipped_steps": model.skipped_steps,
               "train_seconds": train_seconds,
               "tokens_per_second": throughput(tokens, train_seconds),
               "parameters": model.count_params(), "seed": args.seed,
               "config": {"embed": args.embed, "hidden": args.hidden or 128,
                          "layers": args.layers or 1, "seq_len": seq_len,
                          "batch_size": args.batch_size, "lr": args.lr,
                          "clip_norm": args.clip_norm}, **_ranks(args)}
    if not _writes(args):
        return metrics
    write_json(os.path.join(out, "metrics.json"), metrics)
    if losses:
        s, v = np.array(losses).T
        k = max(1, len(v) // 200)
        smooth = np.convolve(v, np.ones(k) / k, mode="valid")
        label = "training batches" + (f" (mean of each {k} steps)" if k > 1 else "")
        plot.loss_curve(os.path.join(out, "loss.png"), {label: (s[k - 1:], smooth / math.log(2))},
                        "step", f"character model: validation {val_bpc:.3f} bits per "
                                f"character", ylabel="bits per character")
    print(f"val_bpc {val_bpc:.4f}{_quantized_line(metrics, 'val_bpc')} "
          f"(unigram {metrics['unigram_bpc']:.3f}); "
          f"{metrics['tokens_per_second']:,.0f} tokens/s over {train_seconds:.1f} s; wrote "
          f"{out}/metrics.json, checkpoint.npz, loss.png")
    beat_baseline(val_bpc, metrics["unigram_bpc"],
                  "the unigram model (each character at its frequency)",
                  "Try more --steps, a longer text or a larger --hidden.")
    return metrics


def predict(args):
    """The forecast of a trained forecaster (`numlstm train`, or `--csv`): the next
    `horizon` values after the series' last, as CSV text (CO2: a date a week; a
    --csv series: the step after its last row). args.checkpoint: its run folder or
    checkpoint.npz; args.csv and args.column: the series to continue (default:
    the embedded CO2 record); args.quantize: "int8" or "bfloat16" runs the model's
    recurrent layers quantized (numlstm.quantize_dynamic)."""
    if args.csv and not args.column:
        raise UsageError("--csv needs --column NAME (the series to continue)")
    if args.column and not args.csv:
        raise UsageError("--column goes with --csv FILE")
    ckpt = task_checkpoint(args.checkpoint, "--checkpoint", "forecast",
                           "model, not a forecaster")
    window, horizon, scale = (ckpt.extra[k] for k in ("window", "horizon", "scale"))
    if args.csv:
        _, series = load_csv_column(args.csv, args.column)
        name, dates = f"{os.path.basename(args.csv)}:{args.column}", None
    else:
        dates, series = load_co2()
        name = "co2"
    if len(series) < window:
        raise UsageError(f"the series has {len(series)} values; the model reads the last "
                         f"{window}")
    model = ckpt.model
    if args.quantize:
        from .quantize import quantize_dynamic
        model = quantize_dynamic(model, args.quantize)
    last = series[-1]
    x = ((series[-window:] - last) / scale)[None, :, None].astype(np.float32)
    forecast = model.predict(x)[0] * scale + last
    where = f"{dates[-1]}, " if dates is not None else ""
    lines = [f"# the next {horizon} values of {name} after its last ({where}{last:g}), by "
             f"{resolve(args.checkpoint)}"
             + (f" with its recurrent layers in {args.quantize}" if args.quantize else "")]
    if dates is not None:
        lines.append("date,forecast")
        step = dates[-1] - dates[-2]
        lines += [f"{dates[-1] + k * step},{v:.6g}" for k, v in enumerate(forecast, 1)]
    else:
        lines.append("step,forecast")
        lines += [f"{k},{v:.6g}" for k, v in enumerate(forecast, 1)]
    return "\n".join(lines)


def generate(args):
    """Continue a prompt with a trained character model, one sampled character a step
    (with args.quantize "int8" or "bfloat16": its LSTM layers quantized first)."""
    ckpt = task_checkpoint(args.checkpoint, "--checkpoint", "text",
                           "model, not a character model")
    vocab = ckpt.extra["vocab"]
    index = {c: i for i, c in enumerate(vocab)}
    prompt = args.prompt or vocab[0]
    unknown = sorted(set(prompt) - set(index))
    if unknown:
        raise UsageError(f"--prompt: characters not in the model's vocabulary: "
                         f"{''.join(unknown)!r}")
    rng = np.random.default_rng(args.seed)
    model = ckpt.model
    if getattr(args, "quantize", None):
        from .quantize import quantize_dynamic
        model = quantize_dynamic(model, args.quantize)
    layers = model.layers
    states = [None] * len(layers)

    def advance(ids):
        """Feed ids [T] through the model, carrying each recurrent layer's state -> the
        last logits."""
        h = np.asarray(ids)
        for k, layer in enumerate(layers):
            if isinstance(layer, Recurrent):
                h, states[k] = layer(h, states[k])  # unbatched [T,I]
            else:
                h = layer.forward(h)
        return h[-1].astype(np.float64)

    logits = advance([index[c] for c in prompt])
    out = []
    for _ in range(args.length):
        if args.temperature <= 0:
            nxt = int(np.argmax(logits))
        else:
            z = (logits - logits.max()) / args.temperature  # (in this order: no inf - inf)
            p = np.exp(z)
            nxt = int(rng.choice(len(p), p=p / p.sum()))
        out.append(vocab[nxt])
        logits = advance([nxt])
    return prompt + "".join(out)


# -- the adding problem --------------------------------------------------------------------
def adding_batch(rng, batch, T):
    """x [B,T,2]: random values in [0,1) and a marker channel with two ones, one in
    each half; y [B,1]: the sum of the two marked values."""
    values = rng.random((batch, T))
    first = rng.integers(0, T // 2, batch)
    second = rng.integers(T // 2, T, batch)
    marks = np.zeros((batch, T))
    marks[np.arange(batch), first] = 1
    marks[np.arange(batch), second] = 1
    x = np.stack([values, marks], axis=2).astype(np.float32)
    y = (values[np.arange(batch), first] + values[np.arange(batch), second])[:, None]
    return x, y.astype(np.float32)


def train_on_batches(args, model, out, task, steps, step, curve, data_rng, extra, batch,
                     evaluate, every, name):
    """The training loop of the tasks that draw a fresh batch each step (adding,
    frames): from `step` to `steps`, batch() -> (x, y) a step; every `every` steps
    and at the end curve gains (step, loss, evaluate()) (shown as `name`); the
    checkpoint (extra: the task's own entries; the curve and data_rng's state go in
    too, so a resumed run draws what an uninterrupted one would) every
    --checkpoint-every steps and at the end. Returns (train_seconds, the first step)."""
    def checkpoint(step):
        if _writes(args):
            save_checkpoint(os.path.join(out, "checkpoint.npz"), model, model.optimizer,
                            step=step, extra={"task": task, **extra, "curve": curve,
                                              "data_rng": data_rng.bit_generator.state})

    def record(step, loss, _):
        if step % every == 0 or step == steps:
            value = evaluate()
            curve.append((step, loss, value))
            return {"loss": f"{loss:.4f}", name: f"{value:.4f}"}
        return None

    return step_loop(args, model, steps, step, batch, record, checkpoint), step


def step_loop(args, model, steps, step, batch, record, checkpoint):
    """The loop of every task counted in optimizer steps (text, adding, frames,
    translate): from `step` to `steps`, model.train_step(*batch()) a step, then
    record(step, loss, the batch), which returns the progress bar's figures or None;
    checkpoint(step) every --checkpoint-every steps, and at the end once the ranks'
    weights are checked equal (over MPI). Returns the loop's wall time in seconds."""
    from tqdm.auto import tqdm
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=step, desc="training", unit="step",
               disable=not args.verbose, dynamic_ncols=True)
    while step < steps:
        data = batch()
        loss = model.train_step(*data, distributed=args.group)
        step += 1
        bar.update(1)
        shown = record(step, loss, data)
        if shown is not None:
            bar.set_postfix(shown, refresh=False)
        if args.checkpoint_every and step % args.checkpoint_every == 0 and step < steps:
            checkpoint(step)
    bar.close()
    train_seconds = time.perf_counter() - t0
    if args.group is not None:
        args.group.check_weights(model)
    checkpoint(step)
    return train_seconds


def run_adding(args):
    # At T=100 the error sits at the always-1.0 level for about 1300 steps before the
    # LSTM finds the two marked values (seed 0, lr 1e-2); 2000 leave room for it.
    T, steps = args.seq_len, args.steps or 2000
    if T < 2:
        raise UsageError(f"--seq-len: the adding problem needs at least 2 steps, got {T}")
    seeds = np.random.SeedSequence(args.seed).generate_state(4)
    x_te, y_te = adding_batch(np.random.default_rng(seeds[3] + 1), 1000, T)
    resumed = resume_from(args, "adding")
    if resumed:
        model, step, curve = resumed.model, resumed.step, resumed.extra["curve"]
        data_rng = np.random.default_rng()
        data_rng.bit_generator.state = resumed.extra["data_rng"]
    else:
        hidden = args.hidden or 64
        model = Sequential([
            CELLS[args.cell](2, hidden, num_layers=args.layers or 1, return_sequences=False,
                             seed=int(seeds[0])),
            Dense(hidden, 1, seed=int(seeds[1]))], name=f"adding_{args.cell}",
            seed=int(seeds[2]))
        step, curve = 0, []
        data_rng = np.random.default_rng(seeds[3])
    _compile(model, "mse", args, steps, resumed)
    _agree(args, "the step to start at", step, data_rng.bit_generator.state)
    out = run_dir(args, "adding")
    print(f"adding problem: T={T}, {steps} steps of batch {args.batch_size}; always "
          f"answering 1.0 scores MSE {np.mean((y_te - 1) ** 2):.4f} on the test set -> {out}"
          + (f" (resuming at step {step})" if resumed else ""))
    model.summary()

    train_seconds, start = train_on_batches(
        args, model, out, "adding", steps, step, curve, data_rng, {"T": T},
        lambda: adding_batch(data_rng, args.batch_size, T),
        lambda: model.evaluate(x_te, y_te, batch_size=500, distributed=args.group),
        50, "test_mse")
    step = steps
    test_mse = curve[-1][2]
    metrics = {"task": "adding", "T": T, "steps": steps, "batch_size": args.batch_size,
               "test_mse": test_mse, "baseline_mse": float(np.mean((y_te - 1) ** 2)),
               "baseline": "always answering 1.0", "train_seconds": train_seconds,
               "tokens_per_second": throughput((step - start) * args.batch_size * T,
                                               train_seconds),
               "skipped_steps": model.skipped_steps, "seed": args.seed, **_ranks(args)}
    if not _writes(args):
        return metrics
    write_json(os.path.join(out, "metrics.json"), metrics)
    s, tr, te = np.array(curve).T
    plot.loss_curve(os.path.join(out, "loss.png"),
                    {"training batch": (s, tr), "test set": (s, te),
                     "always 1.0": (s, np.full_like(s, metrics["baseline_mse"]))},
                    "step", f"adding problem, T={T}: mean squared error")
    print(f"test MSE {test_mse:.4f} against {metrics['baseline_mse']:.4f} for always "
          f"answering 1.0; trained in {train_seconds:.1f} s; wrote {out}/metrics.json, "
          f"checkpoint.npz, loss.png")
    beat_baseline(test_mse, metrics["baseline_mse"], "always answering 1.0",
                  "The task takes an LSTM about 2000 steps at T=100: try more --steps "
                  "(the default is 2000), a shorter --seq-len"
                  + (", or --cell lstm or gru (a plain RNN does not learn it)."
                     if args.cell == "rnn" else "."))
    return metrics


__all__ = ["run_forecast", "run_text", "run_adding", "generate", "UsageError", "resolve"]
