"""The translate task behind `numlstm train --task translate` and `numlstm
translate`: a character-level numlstm.Seq2Seq on pairs of strings.

    pairs      UTF-8 text, one pair a line, source TAB target (--pairs FILE), or
               without a file, dates written many ways -> ISO dates, generated
               from --seed
    vocab      each side's characters; source id 0 is padding, target ids 0, 1, 2
               are pad, bos and eos (numlstm.Seq2Seq's defaults)
    metrics    val_exact_match (whole targets right) and val_char_accuracy (target
               characters right at their position) on the last 10% of the pairs,
               greedy decoding; the same with a beam of 4, and decoding speed
"""
import calendar
import datetime
import hashlib
import os
import time

import numpy as np

from .seq2seq import Seq2Seq
from .train import UsageError

DATES_NOTE = "dates 1950-2049 written 12 ways -> ISO 8601 (generated)"
DATES_COUNT = 20000
SPECIAL = 3  # target ids below this are pad, bos, eos

_MONTHS = calendar.month_name[1:]
_DAYS = calendar.day_name


def _date_formats():
    """Ways of writing a date d (every one says which number is the day)."""
    month, mon = (lambda d: _MONTHS[d.month - 1]), (lambda d: _MONTHS[d.month - 1][:3])
    return (
        lambda d: f"{d.day} {month(d)} {d.year}",                       # 3 May 1997
        lambda d: f"{d.day:02d} {mon(d)} {d.year}",                     # 03 May 1997
        lambda d: f"{month(d)} {d.day}, {d.year}",                      # May 3, 1997
        lambda d: f"{mon(d)} {d.day} {d.year}",                         # May 3 1997
        lambda d: f"{_DAYS[d.weekday()]}, {month(d)} {d.day}, {d.year}",  # Saturday, May 3, 1997
        lambda d: f"{_DAYS[d.weekday()][:3]} {d.day} {mon(d)} {d.year}",  # Sat 3 May 1997
        lambda d: f"{d.day} {month(d).upper()} {d.year}",               # 3 MAY 1997
        lambda d: f"{mon(d).lower()} {d.day} {d.year}",                 # may 3 1997
        lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",                # 05/03/1997 (US)
        lambda d: f"{d.day}.{d.month}.{d.year}",                        # 3.5.1997
        lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",                # 1997/05/03
        lambda d: f"the {d.day}. of {month(d)} {d.year}",               # the 3. of May 1997
    )


def date_pairs(rng, n):
    """n pairs (a date written one of 12 ways, its ISO form), dates uniform over
    1950-01-01 .. 2049-12-31, ways uniform."""
    first = datetime.date(1950, 1, 1).toordinal()
    span = datetime.date(2049, 12, 31).toordinal() - first + 1
    formats = _date_formats()
    days = rng.integers(0, span, n)
    ways = rng.integers(0, len(formats), n)
    pairs = []
    for day, way in zip(days, ways):
        d = datetime.date.fromordinal(first + int(day))
        pairs.append((formats[way](d), d.isoformat()))
    return pairs


def read_pairs(path):
    """The pairs of a UTF-8 file, one `source TAB target` a line; UsageError naming
    the line for an empty line, a line without exactly one tab, or an empty side."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UsageError(f"--pairs {path}: no such file") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"--pairs {path}: not UTF-8 text ({err.reason} at byte "
                         f"{err.start})") from None
    except OSError as err:
        raise UsageError(f"--pairs {path}: cannot read it ({err.strerror})") from None
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r")
        parts = line.split("\t")
        if not line.strip():
            raise UsageError(f"--pairs {path}: line {n} is empty; expected source TAB target "
                             f"on every line")
        if len(parts) != 2:
            raise UsageError(f"--pairs {path}: line {n} has {len(parts) - 1} tabs, expected "
                             f"one (source TAB target): {line[:60]!r}")
        if not parts[0] or not parts[1]:
            side = "source" if not parts[0] else "target"
            raise UsageError(f"--pairs {path}: line {n} has an empty {side}: {line[:60]!r}")
        pairs.append((parts[0], parts[1]))
    if len(pairs) < 10:
        raise UsageError(f"--pairs {path}: expected at least 10 pairs (the last 10% are "
                         f"held out for validation), got {len(pairs)}")
    return pairs


def pairs_digest(pairs):
    h = hashlib.sha256()
    for s, t in pairs:
        h.update(s.encode() + b"\t" + t.encode() + b"\n")
    return h.hexdigest()


class CharVocab:
    """The characters of one side: id = offset + position in `chars`."""

    def __init__(self, chars, offset):
        self.chars, self.offset = chars, offset
        self.index = {c: i + offset for i, c in enumerate(chars)}

    @classmethod
    def of(cls, texts, offset):
        return cls("".join(sorted(set("".join(texts)))), offset)

    @property
    def size(self):
        return self.offset + len(self.chars)

    def unknown(self, text):
        return sorted(set(text) - set(self.chars))

    def encode(self, texts, end=None):
        """texts -> (ids [N, longest (+1 with end)] padded with 0, lengths [N]); end:
        an id appended to each (eos)."""
        extra = end is not None
        lengths = np.array([len(t) + extra for t in texts], np.int64)
        ids = np.zeros((len(texts), lengths.max()), np.int64)
        for i, t in enumerate(texts):
            ids[i, :len(t)] = [self.index[c] for c in t]
            if extra:
                ids[i, len(t)] = end
        return ids, lengths

    def decode(self, ids):
        return "".join(self.chars[i - self.offset] for i in ids if i >= self.offset)


def scores(predicted, targets):
    """(exact match: the share of targets reproduced whole; char accuracy: the share
    of target characters equal to the prediction's at the same position)."""
    exact = np.mean([p == t for p, t in zip(predicted, targets)])
    right = sum(sum(a == b for a, b in zip(p, t)) for p, t in zip(predicted, targets))
    return float(exact), right / sum(len(t) for t in targets)


def _data(args):
    """The task's pairs and where they came from."""
    if args.pairs:
        return read_pairs(args.pairs), os.path.basename(args.pairs)
    seed = np.random.SeedSequence(args.seed).generate_state(2)[1]
    return date_pairs(np.random.default_rng(seed), DATES_COUNT), DATES_NOTE


def run_translate(args):
    """Train a Seq2Seq with attention on --pairs (or the dates), fresh random batches
    of the first 90% a step, and report exact match and character accuracy on the
    last 10%."""
    from . import plot
    from .train import (_compile, resume_from, run_dir, throughput, train_on_batches,
                        write_json)
    if args.group is not None:
        raise UsageError("--distributed: the translate task trains in one process")
    pairs, source = _data(args)
    digest = pairs_digest(pairs)
    n_val = max(1, len(pairs) // 10)
    train, val = pairs[:-n_val], pairs[-n_val:]
    steps = args.steps or 1500
    resumed = resume_from(args, "translate")
    if resumed:
        extra = resumed.extra
        if extra["pairs_sha256"] != digest:
            raise UsageError(f"--resume: the checkpoint was trained on other pairs than "
                             f"{source} (its {extra['source']}); pass the same --pairs")
        model, step, curve = resumed.model, resumed.step, extra["curve"]
        data_rng = np.random.default_rng()
        data_rng.bit_generator.state = extra["data_rng"]
        src_chars, tgt_chars, max_len = extra["src_chars"], extra["tgt_chars"], \
            extra["max_len"]
    else:
        src, tgt = CharVocab.of([s for s, _ in pairs], 1), \
            CharVocab.of([t for _, t in pairs], SPECIAL)
        src_chars, tgt_chars = src.chars, tgt.chars
        max_len = 2 * max(len(t) for _, t in train) + 2
        seeds = np.random.SeedSequence(args.seed).generate_state(3)
        attention = None if args.attention == "none" else args.attention
        model = Seq2Seq(src.size, tgt.size, embed=args.embed,
                        hidden=args.hidden or 64, num_layers=args.layers or 1, cell=args.cell,
                        bidirectional=True, attention=attention, dropout=args.dropout,
                        seed=int(seeds[0]), name=f"translate_{args.cell}")
        step, curve = 0, []
        data_rng = np.random.default_rng(seeds[2])
    src, tgt = CharVocab(src_chars, 1), CharVocab(tgt_chars, SPECIAL)
    x, ls = src.encode([s for s, _ in train])
    y, lt = tgt.encode([t for _, t in train], end=2)
    xv, lsv = src.encode([s for s, _ in val])
    yv, ltv = tgt.encode([t for _, t in val], end=2)
    _compile(model, None, args, steps, resumed)
    out = run_dir(args, "translate")
    print(f"translate: {source}, {len(train)} training and {len(val)} validation pairs, "
          f"{len(src_chars)} source and {len(tgt_chars)} target characters; {steps} steps "
          f"of batch {args.batch_size} -> {out}"
          + (f" (resuming at step {step})" if resumed else ""))
    model.summary()

    def batch():
        idx = data_rng.integers(0, len(x), args.batch_size)
        return x[idx], y[idx], (ls[idx], lt[idx])

    extra = {"source": source, "pairs_sha256": digest, "src_chars": src_chars,
             "tgt_chars": tgt_chars, "max_len": max_len}
    train_seconds, start = train_on_batches(
        args, model, out, "translate", steps, step, curve, data_rng, extra, batch,
        lambda: model.evaluate(xv, yv, lengths=(lsv, ltv)), 100, "val_loss")
    targets = [t for _, t in val]
    metrics = {"task": "translate", "dataset": source, "pairs": len(pairs),
               "validation_pairs": len(val), "steps": steps, "batch_size": args.batch_size}
    for beam in (1, 4):
        t0 = time.perf_counter()
        decoded, maps = model.decode(xv, lsv, max_len=max_len, beam_size=beam,
                                     return_attention=True)
        seconds = time.perf_counter() - t0
        texts = [tgt.decode(d) for d in decoded]
        exact, chars = scores(texts, targets)
        name = "" if beam == 1 else "_beam4"
        metrics.update({f"val_exact_match{name}": exact, f"val_char_accuracy{name}": chars,
                        f"decode_seq_per_s_{'greedy' if beam == 1 else 'beam4'}":
                            len(val) / seconds})
        if beam == 1:
            greedy, greedy_maps = texts, maps
    metrics.update(train_seconds=train_seconds,
                   tokens_per_second=throughput((steps - start) * args.batch_size
                                                * float(lt.mean()), train_seconds),
                   skipped_steps=model.skipped_steps, seed=args.seed)
    write_json(os.path.join(out, "metrics.json"), metrics)
    s, tr, va = np.array(curve).T
    plot.loss_curve(os.path.join(out, "loss.png"),
                    {"training batch": (s, tr), "validation": (s, va)}, "step",
                    "translate: cross-entropy per target character")
    written = "metrics.json, checkpoint.npz, loss.png"
    if greedy_maps[0] is not None:
        shown = list(greedy[0]) + ["</s>"] * (len(greedy_maps[0]) - len(greedy[0]))
        plot.attention(os.path.join(out, "attention.png"), greedy_maps[0], val[0][0], shown,
                       f"attention: {val[0][0]!r} -> {greedy[0]!r}")
        written += ", attention.png"
    print("validation examples (greedy):")
    for (s_text, t_text), p in list(zip(val, greedy))[:6]:
        print(f"  {s_text!r:36} -> {p!r:16} {'ok' if p == t_text else 'expected ' + repr(t_text)}")
    print(f"validation exact match {metrics['val_exact_match']:.1%} (beam 4: "
          f"{metrics['val_exact_match_beam4']:.1%}), characters right "
          f"{metrics['val_char_accuracy']:.1%}; decoding {metrics['decode_seq_per_s_greedy']:,.0f}"
          f" sequences/s greedy, {metrics['decode_seq_per_s_beam4']:,.0f} with a beam of 4; "
          f"trained in {train_seconds:.1f} s; wrote {out}/{written}")
    return metrics


def translate(args):
    """Decode each of args.texts with the model of a translate run -> the outputs,
    one a line."""
    from .train import task_checkpoint
    ckpt = task_checkpoint(args.checkpoint, "--checkpoint", "translate",
                           "checkpoint, not a translate model's")
    extra, model = ckpt.extra, ckpt.model
    src, tgt = CharVocab(extra["src_chars"], 1), CharVocab(extra["tgt_chars"], SPECIAL)
    for text in args.texts:
        if not text:
            raise UsageError("an empty text: give at least one character to translate")
        unknown = src.unknown(text)
        if unknown:
            raise UsageError(f"{text!r} has characters the model never saw: "
                             f"{''.join(unknown)!r}; it knows {src.chars!r}")
    x, lengths = src.encode(args.texts)
    decoded = model.decode(x, lengths, max_len=extra["max_len"], beam_size=args.beam)
    return "\n".join(tgt.decode(d) for d in decoded)
