"""Moving digits: the data of a next-frame-prediction task for a ConvLSTM layer.

A 5x7 bitmap font of the digits, sequences of digits bouncing inside a square
frame, the (input, target) pairs of next-frame prediction and two per-pixel
errors: a model's, and that of copying the current frame (the baseline a model
has to beat). Pure NumPy.

Shapes: N sequences, T steps, S the frame's side; frames are batch-first and
channels-last, [N,T,S,S,1], float32 in [0, 1].
"""
import numbers
import os

import numpy as np

# One string per row, '#' lit; 5 columns, 7 rows, indexed by the digit.
FONT = (
    (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    ("####.", "....#", "....#", ".###.", "....#", "....#", "####."),
    ("#..#.", "#..#.", "#..#.", "#####", "...#.", "...#.", "...#."),
    ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    ("#####", "....#", "...#.", "..#..", "..#..", ".#...", ".#..."),
    (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
)
GLYPH_H, GLYPH_W = 7, 5

_FONT = np.array([[[c == "#" for c in row] for row in g] for g in FONT], np.float32)

MAX_SPEED = 2  # pixels per step along each axis


def _int(value, name, minimum, maximum=None):
    """value as an int; TypeError for a non-integer (or a bool), ValueError out of range."""
    want = f"an integer >= {minimum}" if maximum is None else \
        f"an integer in {minimum}..{maximum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected {want}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    return int(value)


def digit_bitmap(d, scale=1):
    """The glyph of digit d (0..9): float32 [7*scale, 5*scale] of 0 and 1, each font
    pixel a scale x scale block (nearest-neighbour upscaling)."""
    d = _int(d, "d", 0, 9)
    scale = _int(scale, "scale", 1)
    return np.kron(_FONT[d], np.ones((scale, scale), np.float32))


def _velocities(room_r, room_c):
    """Every velocity (dy, dx), each component in -MAX_SPEED..MAX_SPEED and at most the
    room along its axis, not both zero (a component with no room would never move)."""
    sr, sc = min(MAX_SPEED, room_r), min(MAX_SPEED, room_c)
    return np.array([(dy, dx) for dy in range(-sr, sr + 1) for dx in range(-sc, sc + 1)
                     if (dy, dx) != (0, 0)])


def _bounce(start, v, T, room):
    """Positions [..., T] of a coordinate in 0..room that starts at start and moves by
    v a step; where a step would leave 0..room, v reverses first and the step is then
    cut at the edge if it still overshoots. So a moving coordinate changes at every
    step (reflecting the overshoot instead, a glyph with 2 of room at 1 moving by 2
    would land on 1 again at every step)."""
    pos, v = start.copy(), v.copy()
    out = np.empty(start.shape + (T,), start.dtype)
    out[..., 0] = pos
    for t in range(1, T):
        nxt = pos + v
        v = np.where((nxt < 0) | (nxt > room), -v, v)
        pos = np.clip(pos + v, 0, room)
        out[..., t] = pos
    return out


def moving_digits(rng, n, T, size=16, digits=1, scale=1):
    """n sequences of T square frames of side size, each showing `digits` random
    digits (glyph [7*scale, 5*scale]) moving in straight lines and bouncing off the
    frame's edges; where digits overlap the brighter pixel wins (np.maximum).

    Each digit's glyph starts with its top-left corner at a uniform position that
    keeps it wholly inside the frame, and moves by an integer velocity (dy, dx) drawn
    uniformly: each component in -2..2, not both zero, and at most the glyph's room
    along its axis (size - 7*scale rows, size - 5*scale columns; so with 1 row of
    room dy is in -1..1, with none it is 0). A component reverses at the step where
    the glyph would leave the frame (and that step stops at the edge when the room
    is shorter than it), so each glyph stays whole inside and moves at every step.

    rng: np.random.Generator, the only source of randomness (same state, same frames).
    Returns float32 [n, T, size, size, 1] of 0 and 1.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {rng!r}")
    n = _int(n, "n", 1)
    T = _int(T, "T", 2)
    scale = _int(scale, "scale", 1)
    digits = _int(digits, "digits", 1)
    gh, gw = GLYPH_H * scale, GLYPH_W * scale
    size = _int(size, "size", gh)  # the glyph is taller than wide: room_c >= 2
    room_r, room_c = size - gh, size - gw
    velocities = _velocities(room_r, room_c)

    which = rng.integers(0, 10, (n, digits))
    r0 = rng.integers(0, room_r + 1, (n, digits))
    c0 = rng.integers(0, room_c + 1, (n, digits))
    v = velocities[rng.integers(0, len(velocities), (n, digits))]  # [n,digits,2]
    rows = _bounce(r0, v[..., 0], T, room_r)  # [n,digits,T], top row of the glyph
    cols = _bounce(c0, v[..., 1], T, room_c)

    glyphs = np.stack([digit_bitmap(d, scale) for d in range(10)])  # [10,gh,gw]
    out = np.zeros((n, T, size, size), np.float32)
    i = np.arange(n)[:, None, None, None]
    t = np.arange(T)[None, :, None, None]
    dr, dc = np.arange(gh)[:, None], np.arange(gw)[None, :]
    for k in range(digits):
        # one index per pixel of the glyph at every (sequence, step): [n,T,gh,gw],
        # no repeats within one digit, so a gathered maximum is safe to scatter
        r = rows[:, k, :, None, None] + dr
        c = cols[:, k, :, None, None] + dc
        g = glyphs[which[:, k]][:, None]  # [n,1,gh,gw]
        out[i, t, r, c] = np.maximum(out[i, t, r, c], g)
    return out[..., None]


def next_frame_pairs(frames):
    """frames [N,T,...] -> (x, y), both float32 contiguous [N,T-1,...]: x the frames
    0..T-2, y the frames 1..T-1, so y[:, t] (the target at step t) is frame t+1."""
    frames = np.asarray(frames)
    if frames.ndim < 2 or frames.shape[1] < 2:
        raise ValueError("frames: expected an array [N,T,...] with T >= 2, "
                         f"got shape {frames.shape}")
    x = np.ascontiguousarray(frames[:, :-1], dtype=np.float32)
    y = np.ascontiguousarray(frames[:, 1:], dtype=np.float32)
    return x, y


def mse(pred, y):
    """The per-pixel mean squared error, mean((pred - y)**2) over every element (the
    mean, not the sum, over pixels, steps and sequences), as a float; computed in
    float64."""
    pred, y = np.asarray(pred), np.asarray(y)
    if pred.shape != y.shape:
        raise ValueError(f"pred: expected the shape of y, {y.shape}, got {pred.shape}")
    if pred.size == 0:
        raise ValueError(f"pred: expected a non-empty array, got shape {pred.shape}")
    d = pred.astype(np.float64) - y.astype(np.float64)
    return float(np.mean(d * d))


def copy_last_mse(x, y):
    """The per-pixel mean squared error of predicting each next frame as a copy of
    the current one: mse(x, y) for (x, y) as next_frame_pairs returns them."""
    return mse(x, y)


# -- the task: `numlstm train --task frames` -----------------------------------------------
FRAMES_NOTE = ("moving digits: one 5x7 digit a sequence, bouncing in a 16x16 frame, "
               "generated at run time (numlstm.frames)")


def frames_model(filters, seed, layers=1, dropout=0.0):
    """`layers` ConvLSTM2D layers (1 -> filters, then filters -> filters; 3x3, "same")
    over the frames, with Dropout(dropout) after each when dropout > 0, then a Dense
    over each pixel's filters (a 1x1 convolution) giving the next frame. The
    readout is linear: behind a sigmoid, MSE's gradient vanished on the mostly
    black frames and a run settled on predicting black (val MSE 0.056 after 1200
    steps, against 0.041 after 300 linear)."""
    from .layers import ConvLSTM2D, Dense, Dropout
    from .model import Sequential
    # (the first three seeds are the one-layer model's, as before there were options)
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(2 + 2 * layers)]
    conv_seeds, drop_seeds = [seeds[0]] + seeds[3:2 + layers], seeds[2 + layers:]
    stack = []
    for k in range(layers):
        stack.append(ConvLSTM2D(1 if k == 0 else filters, filters, 3, padding="same",
                                return_sequences=True, seed=conv_seeds[k]))
        if dropout:
            stack.append(Dropout(dropout, seed=drop_seeds[k]))
    return Sequential(stack + [Dense(filters, 1, seed=seeds[1])], name="next_frame",
                      seed=seeds[2])


def run_frames(args):
    """Next-frame prediction: from frames 1..t predict frame t+1, at every step of
    sequences of --seq-len + 1 frames, fresh training batches each step and a fixed
    validation set of 256 sequences; metrics: the per-pixel MSE of the prediction
    against that of copying the current frame."""
    from . import plot
    from .train import (UsageError, _agree, _compile, _ranks, _writes, beat_baseline,
                        resume_from, run_dir, throughput, train_on_batches, write_json)
    T, steps, size = args.seq_len, args.steps or 1500, 16
    if T < 2:
        raise UsageError(f"--seq-len: next-frame prediction needs at least 2 frames, "
                         f"got {T}")
    seeds = np.random.SeedSequence(args.seed).generate_state(2)
    x_val, y_val = next_frame_pairs(moving_digits(np.random.default_rng(seeds[1]), 256,
                                                  T + 1, size))
    baseline = copy_last_mse(x_val, y_val)
    resumed = resume_from(args, "frames")
    if resumed:
        model, step, curve = resumed.model, resumed.step, resumed.extra["curve"]
        data_rng = np.random.default_rng()
        data_rng.bit_generator.state = resumed.extra["data_rng"]
    else:
        model = frames_model(args.hidden or 16, args.seed, args.layers or 1, args.dropout)
        step, curve = 0, []
        data_rng = np.random.default_rng(seeds[0])
    _compile(model, "mse", args, steps, resumed)
    _agree(args, "the step to start at", step, data_rng.bit_generator.state)
    out = run_dir(args, "frames")
    print(f"next-frame prediction: {FRAMES_NOTE}, {T} frames a sequence, {steps} steps "
          f"of batch {args.batch_size}; copying the last frame scores MSE {baseline:.4f} "
          f"per pixel -> {out}" + (f" (resuming at step {step})" if resumed else ""))
    model.summary()

    train_seconds, start = train_on_batches(
        args, model, out, "frames", steps, step, curve, data_rng, {"T": T},
        lambda: next_frame_pairs(moving_digits(data_rng, args.batch_size, T + 1, size)),
        lambda: model.evaluate(x_val, y_val, batch_size=64, distributed=args.group),
        100, "val_mse")
    step = steps
    pred = model.predict(x_val, batch_size=64)
    val_mse = mse(pred, y_val)
    metrics = {"task": "frames", "dataset": FRAMES_NOTE, "T": T, "frame_size": size,
               "steps": steps, "batch_size": args.batch_size, "val_mse": val_mse,
               "copy_last_mse": baseline,
               "change_percent": 100.0 * (val_mse - baseline) / baseline,
               "train_seconds": train_seconds,
               "tokens_per_second": throughput((step - start) * args.batch_size * T,
                                               train_seconds),
               "skipped_steps": model.skipped_steps, "seed": args.seed, **_ranks(args)}
    if not _writes(args):
        return metrics
    write_json(os.path.join(out, "metrics.json"), metrics)
    s, tr, va = np.array(curve).T
    plot.loss_curve(os.path.join(out, "loss.png"),
                    {"training batch": (s, tr), "validation": (s, va),
                     "copy the last frame": (s, np.full_like(s, baseline))},
                    "step", "next-frame prediction: per-pixel mean squared error")
    plot.frames(os.path.join(out, "frames.png"),
                [("input", x_val[0]), ("predicted", np.clip(pred[0], 0, 1)),
                 ("true", y_val[0])],
                [f"t={t + 1}" for t in range(T)],
                suptitle=f"validation sequence 0: input frame t, and frame t+1 predicted "
                         f"and true (MSE {val_mse:.4f}, copying {baseline:.4f})")
    print(f"validation MSE per pixel {val_mse:.4f} against {baseline:.4f} for copying "
          f"the last frame ({metrics['change_percent']:+.0f}%); trained in "
          f"{train_seconds:.1f} s; wrote {out}/metrics.json, checkpoint.npz, loss.png, "
          "frames.png")
    beat_baseline(val_mse, baseline, "copying the last frame",
                  "Try more --steps (the default is 1500) or --hidden 32 (filters).")
    return metrics
