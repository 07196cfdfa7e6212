"""Seq2Seq: an encoder-decoder model (an encoder reads the source, a decoder writes
the target from the encoder's final state, optionally attending to all of the
encoder's outputs), trained with teacher forcing and decoded greedily or by
beam search, one decoder step at a time.

Dimensions: B batch, S source steps, T target steps, E embedding size, H the
encoder's units per direction, D its directions, K = D*H its output width, Hd
the decoder's units, L layers, V the target vocabulary.

Token ids: x [B,S] source ids, y [B,T] target ids. The target vocabulary
reserves pad, bos and eos (0, 1, 2 by default): y holds each target followed by
eos; the decoder reads bos then y shifted right (teacher forcing) and learns to
predict y, eos included. Decoding starts from bos and stops at eos; it never
emits pad or bos.
"""
import numbers
import time

import numpy as np

from .layers import CELLS, Dense, Dropout, Embedding
from .layers.attention import KINDS, Attention, take
from .losses import CrossEntropyLoss
from .model import Model, progress
from .validation import (as_numeric, check_bool, check_dtype, check_int, check_probability,
                         check_seed)

IGNORE = -100  # the loss's ignore_index at target steps past a target's length
BRIDGES = ("concat", "sum")


class Seq2Seq(Model):
    """An encoder-decoder model over token ids, with Keras's compile / fit /
    evaluate / summary and a decoder that runs one step at a time.

    Args:
        src_vocab, tgt_vocab: the vocabulary sizes (ids 0..V-1 on each side).
        embed (E): the embedding size of both sides (default 32).
        hidden (H): the encoder's units per direction (default 128).
        num_layers (L): stacked layers of encoder and decoder (default 1).
        cell: "lstm" (default), "gru" or "rnn", for both.
        bidirectional: a bidirectional encoder (default False). Its final state
            reaches the decoder as `bridge` says, layer by layer:
            "concat" (default): [forward; backward], so the decoder has Hd = 2H
            units (as Keras users concatenate the two states); "sum": forward +
            backward, Hd = H (as torch's translation tutorial adds them).
            A one-directional encoder hands its state over as it is (Hd = H).
        attention: None (default: the decoder sees the source through its initial
            state only), "luong" or "bahdanau": numlstm.layers.Attention over the
            encoder's outputs at every decoder step (see its docstring).
        attention_units: the additive score's width (default Hd).
        dropout: dropout on both embeddings' outputs, between stacked layers and
            on the decoder's output before the output layer (default 0).
        pad, bos, eos: the reserved target ids (defaults 0, 1, 2). Source steps past
            a source's length are never read, whatever their ids.
        dtype: np.float32 (default) or np.float64.
        backend: "cpu" (default) or "numpy" (the reference kernels).
        seed: seeds every layer's initial weights and dropout, and fit's shuffling.
        name: shown by summary().

    Layers, as attributes: src_embed, encoder, tgt_embed, decoder, attention (or
    None), head (the Dense output layer, Hd -> V); parameters are gathered as
    "<layer>/<name>", torch's names within each layer.

    lengths: fit, evaluate and train_step take lengths=(src_lengths, tgt_lengths),
    either None for full length; tgt_lengths counts eos. Steps past a length are
    never read: padding changes neither the loss nor a gradient, and each batch
    is cut to its longest source and target, so padding costs no time.

    Typical use::

        model = numlstm.Seq2Seq(src_vocab, tgt_vocab, hidden=64, bidirectional=True,
                                attention="luong")
        model.compile("adam", lr=5e-3, clip_norm=1.0)
        model.fit(x, y, lengths=(src_len, tgt_len), epochs=10, batch_size=64)
        outputs = model.decode(x_new, lengths=new_len, beam_size=4)
    """

    def __init__(self, src_vocab, tgt_vocab, embed=32, hidden=128, num_layers=1, cell="lstm",
                 bidirectional=False, bridge="concat", attention=None, attention_units=None,
                 dropout=0.0, pad=0, bos=1, eos=2, dtype=np.float32, backend="cpu", seed=None,
                 name="seq2seq"):
        if cell not in CELLS:
            raise ValueError(f"cell: expected one of {sorted(CELLS)}, got {cell!r}")
        if bridge not in BRIDGES:
            raise ValueError(f"bridge: expected one of {BRIDGES}, got {bridge!r}")
        if attention is not None and attention not in KINDS:
            raise ValueError(f"attention: expected None or one of {KINDS}, got {attention!r}")
        if attention_units is not None and attention != "bahdanau":
            raise ValueError(f"attention_units: the width of the additive score, with "
                             f"attention='bahdanau'; got it with attention={attention!r}")
        if backend not in ("cpu", "numpy"):
            raise ValueError(f"backend: expected 'cpu' or 'numpy' (the attention and the "
                             f"decoding loop run on the host), got {backend!r}")
        V = check_int(tgt_vocab, "tgt_vocab", 3)
        special = {k: check_int(v, k, 0) for k, v in (("pad", pad), ("bos", bos), ("eos", eos))}
        if len(set(special.values())) < 3 or max(special.values()) >= V:
            raise ValueError(f"pad, bos, eos: expected three different ids below tgt_vocab="
                             f"{V}, got {special}")
        self.config = dict(
            src_vocab=check_int(src_vocab, "src_vocab", 1), tgt_vocab=V,
            embed=check_int(embed, "embed", 1), hidden=check_int(hidden, "hidden", 1),
            num_layers=check_int(num_layers, "num_layers", 1), cell=cell,
            bidirectional=check_bool(bidirectional, "bidirectional"), bridge=bridge,
            attention=attention, attention_units=attention_units,
            dropout=check_probability(dropout, "dropout"), **special,
            dtype=check_dtype(dtype).name, backend=backend, seed=check_seed(seed))
        c = self.config
        self.name, self.pad, self.bos, self.eos = name, pad, bos, eos
        self.dtype = np.dtype(c["dtype"])
        D = 2 if c["bidirectional"] else 1
        self.dec_units = 2 * c["hidden"] if D == 2 and bridge == "concat" else c["hidden"]
        seeds = [int(s) for s in np.random.SeedSequence(c["seed"]).generate_state(9)]
        rec = dict(num_layers=c["num_layers"], batch_first=True, dropout=c["dropout"],
                   backend=backend, dtype=self.dtype)
        self.src_embed = Embedding(c["src_vocab"], c["embed"], self.dtype, seeds[0])
        self.encoder = CELLS[cell](c["embed"], c["hidden"], bidirectional=D == 2,
                                   seed=seeds[1], **rec)
        self.tgt_embed = Embedding(V, c["embed"], self.dtype, seeds[2])
        self.decoder = CELLS[cell](c["embed"], self.dec_units, seed=seeds[3], **rec)
        self.attention = None if attention is None else Attention(
            self.dec_units, D * c["hidden"], attention, attention_units, self.dtype, backend,
            seeds[4])
        self.head = Dense(self.dec_units, V, dtype=self.dtype, seed=seeds[5])
        drop = (lambda k: Dropout(c["dropout"], seeds[k])) if c["dropout"] else \
            (lambda k: None)
        self.src_drop, self.tgt_drop, self.out_drop = drop(6), drop(7), drop(8)
        named = [("src_embed", self.src_embed), ("src_dropout", self.src_drop),
                 ("encoder", self.encoder), ("tgt_embed", self.tgt_embed),
                 ("tgt_dropout", self.tgt_drop), ("decoder", self.decoder),
                 ("attention", self.attention), ("dropout", self.out_drop),
                 ("head", self.head)]
        self.layers = []
        for layer_name, layer in named:
            if layer is not None:
                layer.name = layer_name
                self.layers.append(layer)
        self._rng = np.random.default_rng(c["seed"])
        self.loss = None

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"Seq2Seq({args})"

    def _layer_shapes(self):
        c, K = self.config, (2 if self.config["bidirectional"] else 1) * self.config["hidden"]
        width = {"src_embed": c["embed"], "src_dropout": c["embed"], "encoder": K,
                 "tgt_embed": c["embed"], "tgt_dropout": c["embed"],
                 "decoder": self.dec_units, "attention": self.dec_units,
                 "dropout": self.dec_units, "head": c["tgt_vocab"]}
        return [(None, None, width[layer.name]) for layer in self.layers]

    def get_config(self):
        return {"class": "Seq2Seq", "name": self.name, **self.config}

    @classmethod
    def from_config(cls, config):
        return cls(**{k: v for k, v in config.items() if k != "class"})

    def compile(self, optimizer="adam", loss="cross_entropy", on_nonfinite="raise",
                **optimizer_args):
        """The optimizer, as Sequential.compile's. The loss is the softmax
        cross-entropy of each target step (eos included) up to its length, averaged
        over the batch's target steps; `loss` may only name it ("cross_entropy", or
        None)."""
        if loss not in (None, "cross_entropy"):
            raise ValueError(f"loss: a Seq2Seq trains on the cross-entropy of its target "
                             f"steps; expected 'cross_entropy' or None, got {loss!r}")
        return super().compile(optimizer, CrossEntropyLoss(IGNORE), on_nonfinite,
                               **optimizer_args)

    # -- checking data before any kernel runs -------------------------------------------
    def _ids(self, ids, what, vocab):
        ids = as_numeric(ids, what)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{what}: expected integer token ids, got dtype {ids.dtype}")
        if ids.ndim != 2 or 0 in ids.shape:
            raise ValueError(f"{what}: expected ids [B,steps] with B, steps >= 1, got shape "
                             f"{ids.shape}")
        if ids.min() < 0 or ids.max() >= vocab:
            raise ValueError(f"{what}: expected ids in [0, {vocab}), got min {ids.min()} max "
                             f"{ids.max()}")
        return ids.astype(np.int64, copy=False)

    @staticmethod
    def _lengths(lengths, what, B, steps):
        if lengths is None:
            return np.full(B, steps, np.int64)
        arr = as_numeric(lengths, what)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{what}: expected integers, got dtype {arr.dtype}")
        if arr.shape != (B,):
            raise ValueError(f"{what}: expected {B} lengths (one per sequence), got shape "
                             f"{arr.shape}")
        if arr.min() < 1 or arr.max() > steps:
            raise ValueError(f"{what}: expected values in [1, {steps}], got min {arr.min()} "
                             f"max {arr.max()}")
        return arr.astype(np.int64)

    def _check_data(self, x, y, lengths, what=""):
        """-> x, y, src_lengths, tgt_lengths, checked."""
        x = self._ids(x, what + "x", self.config["src_vocab"])
        y = self._ids(y, what + "y", self.config["tgt_vocab"])
        if len(y) != len(x):
            raise ValueError(f"{what}x and {what}y: expected the same number of sequences, "
                             f"got {len(x)} and {len(y)}")
        if lengths is None:
            lengths = (None, None)
        if not isinstance(lengths, (tuple, list)) or len(lengths) != 2:
            raise TypeError(f"{what}lengths: expected a pair (src_lengths, tgt_lengths), got "
                            f"{type(lengths).__name__}")
        return (x, y, self._lengths(lengths[0], what + "src_lengths", *x.shape),
                self._lengths(lengths[1], what + "tgt_lengths", *y.shape))

    # -- teacher forcing -----------------------------------------------------------------
    def _bridge(self, state):
        """The encoder's final state -> the decoder's initial one ([L*D,B,H] parts ->
        [L,B,Hd])."""
        parts = state if isinstance(state, tuple) else (state,)
        if self.config["bidirectional"]:
            join = (lambda p: np.concatenate([p[0::2], p[1::2]], axis=-1)) \
                if self.config["bridge"] == "concat" else (lambda p: p[0::2] + p[1::2])
            parts = tuple(np.ascontiguousarray(join(p)) for p in parts)
        return parts if len(parts) > 1 else parts[0]

    def _bridge_back(self, dstate):
        """The gradient of _bridge's output -> that of the encoder's final state."""
        parts = dstate if isinstance(dstate, tuple) else (dstate,)
        if self.config["bidirectional"]:
            H = self.config["hidden"]
            concat = self.config["bridge"] == "concat"
            out = []
            for p in parts:
                g = np.empty((2 * p.shape[0], p.shape[1], H), p.dtype)
                g[0::2], g[1::2] = (p[..., :H], p[..., H:]) if concat else (p, p)
                out.append(g)
            parts = tuple(out)
        return parts if len(parts) > 1 else parts[0]

    @staticmethod
    def _drop(layer, x, training):
        return x if layer is None else layer.forward(x, training)

    def _encode(self, x, src_lengths, training):
        B, S = x.shape
        full = bool((src_lengths == S).all())
        e = self._drop(self.src_drop, self.src_embed.forward(x, training), training)
        y, state = self.encoder(e, training=training, lengths=None if full else src_lengths)
        memory = None if self.attention is None else \
            self.attention.memory(y, src_lengths, training)
        return self._bridge(state), memory

    def forward(self, x, y, lengths=None, training=False):
        """Teacher forcing: source ids x [B,S] and target ids y [B,T] -> (logits
        [B,T,V] of each target step given the steps before it, the attention
        weights [B,T,S] or None). lengths as fit's."""
        x, y, ls, lt = self._check_data(x, y, lengths)
        return self._forward(x, y, ls, lt, training)

    def _forward(self, x, y, ls, lt, training):
        state, memory = self._encode(x, ls, training)
        dec_in = np.empty_like(y)
        dec_in[:, 0], dec_in[:, 1:] = self.bos, y[:, :-1]
        d = self._drop(self.tgt_drop, self.tgt_embed.forward(dec_in, training), training)
        full = bool((lt == y.shape[1]).all())
        h, _ = self.decoder(d, state=state, training=training, lengths=None if full else lt)
        weights = None
        if memory is not None:
            h, weights = self.attention.forward(h, memory, training)
        h = self._drop(self.out_drop, h, training)
        return self.head.forward(h, training), weights

    def _backward(self, dlogits, src_shape):
        """dlogits [B,T,V] -> every layer's parameter gradients (added)."""
        dh = self.head.backward_output(dlogits)
        if self.out_drop is not None:
            dh = self.out_drop.backward_output(dh)
        dvalues = None
        if self.attention is not None:
            dh, dvalues = self.attention.backward(dh)
        dd, dstate = self.decoder.backward(dh)
        if self.tgt_drop is not None:
            dd = self.tgt_drop.backward_output(dd)
        self.tgt_embed.backward_output(dd)
        if dvalues is None:
            dvalues = np.zeros(src_shape + (self.encoder.output_size,), self.dtype)
        de, _ = self.encoder.backward(dvalues, self._bridge_back(dstate))
        if self.src_drop is not None:
            de = self.src_drop.backward_output(de)
        self.src_embed.backward_output(de)

    @staticmethod
    def _targets(y, lt):
        return np.where(np.arange(y.shape[1]) < lt[:, None], y, IGNORE)

    @staticmethod
    def _cut(x, y, ls, lt):
        """A batch without the steps past its longest source and target."""
        return x[:, :ls.max()], y[:, :lt.max()], ls, lt

    # -- training --------------------------------------------------------------------------
    def train_step(self, x, y, lengths=None, distributed=None):
        """One update on one batch (teacher forcing) -> the mean loss per target step.
        A NaN or infinite loss or gradient changes nothing (compile's on_nonfinite).
        distributed: None (data-parallel training is Sequential's so far)."""
        if distributed is not None:
            raise ValueError("distributed: a Seq2Seq trains in one process; expected None, "
                             f"got {distributed!r}")
        self._need_compiled("train_step")
        return self._update(self.gradients(x, y, lengths)[0])

    def gradients(self, x, y, lengths=None):
        """One batch's loss and gradients, no update: zero_grad, a training forward
        (teacher forcing) and the backward -> (the loss per target step, the logits
        [B,T',V], T' the longest target length); the gradients land in each layer's
        `grads` (not when the loss is NaN or infinite)."""
        self._need_compiled("gradients")
        x, y, ls, lt = self._cut(*self._check_data(x, y, lengths))
        self.zero_grad()
        logits, _ = self._forward(x, y, ls, lt, True)
        value, grad = self.loss.value_and_grad(logits, self._targets(y, lt))
        if np.isfinite(value):
            self._backward(grad, x.shape)
        return value, logits

    def evaluate(self, x, y, batch_size=256, lengths=None):
        """The loss per target step over (x, y) (no training)."""
        self._need_compiled("evaluate")
        batch_size = check_int(batch_size, "batch_size", 1)
        x, y, ls, lt = self._check_data(x, y, lengths)
        total = 0.0
        for i in range(0, len(x), batch_size):
            part = slice(i, i + batch_size)
            xb, yb, lsb, ltb = self._cut(x[part], y[part], ls[part], lt[part])
            logits, _ = self._forward(xb, yb, lsb, ltb, False)
            total += self.loss(logits, self._targets(yb, ltb)) * ltb.sum()
        return total / lt.sum()

    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, lengths=None,
            shuffle=True, verbose=1, initial_epoch=0, on_epoch_end=None):
        """Train for `epochs` passes over (x, y) -> history {"loss": [...],
        "val_loss": [...] (with validation_data: (x, y) or (x, y, lengths)),
        "tokens_per_s": [...] (target steps a second)}; initial_epoch and
        on_epoch_end(epoch, history) as Sequential.fit's."""
        self._need_compiled("fit")
        epochs, batch_size = self._check_loop(epochs, batch_size, initial_epoch, on_epoch_end)
        x, y, ls, lt = self._check_data(x, y, lengths)
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or \
                    len(validation_data) not in (2, 3):
                raise ValueError("validation_data: expected (x_val, y_val) or (x_val, y_val, "
                                 "(src_lengths, tgt_lengths))")
            xv, yv, lsv, ltv = self._check_data(*validation_data[:2], *validation_data[2:],
                                                what="validation ")
        history = {"loss": [], "tokens_per_s": []}
        if validation_data is not None:
            history["val_loss"] = []
        for epoch in range(int(initial_epoch), epochs):
            order = self._rng.permutation(len(x)) if shuffle else np.arange(len(x))
            batches = [order[i:i + batch_size] for i in range(0, len(x), batch_size)]
            bar = progress(len(batches), f"epoch {epoch + 1}/{epochs}", verbose)
            total = seen = tokens = 0
            t0 = time.perf_counter()
            for idx in batches:
                loss = self.train_step(x[idx], y[idx], (ls[idx], lt[idx]))
                if np.isfinite(loss):
                    total, seen = total + loss * lt[idx].sum(), seen + lt[idx].sum()
                tokens += lt[idx].sum()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total / max(seen, 1):.4f}", refresh=False)
            history["loss"].append(total / seen if seen else float("nan"))
            history["tokens_per_s"].append(tokens / (time.perf_counter() - t0))
            if validation_data is not None:
                history["val_loss"].append(self.evaluate(xv, yv, batch_size, (lsv, ltv)))
            if bar is not None:
                bar.close()
            if on_epoch_end is not None:
                on_epoch_end(epoch, history)
        return history

    # -- decoding --------------------------------------------------------------------------
    def encode(self, x, lengths=None):
        """Source ids x [B,S] (and their lengths) -> (the decoder's initial state, the
        attention's Memory or None): what decode_step starts from."""
        x = self._ids(x, "x", self.config["src_vocab"])
        return self._encode(x, self._lengths(lengths, "lengths", *x.shape), False)

    def decode_step(self, tokens, state, memory):
        """One decoder step: the previous tokens [B] (bos first) -> (log-probabilities
        [B,V] of the next token, float64, pad and bos at -inf; the new state; the
        attention weights [B,S] or None). Equal to the teacher-forced forward's
        step, renormalised without pad and bos."""
        e = self.tgt_embed.forward(tokens)
        h, state = self.decoder.step(e, state)
        weights = None
        if memory is not None:
            h, weights = self.attention.forward(h[:, None], memory)
            h, weights = h[:, 0], weights[:, 0]
        z = self.head.forward(h).astype(np.float64)
        z[:, [self.pad, self.bos]] = -np.inf
        z -= z.max(axis=1, keepdims=True)
        z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
        return z, state, weights

    def decode(self, x, lengths=None, max_len=None, beam_size=1, length_penalty=1.0,
               batch_size=256, return_attention=False):
        """Decode each source -> a list of B int64 arrays (the target ids, eos not
        included), and with return_attention=True also a list of their attention
        maps [steps, S_b] (a row per decoder step, the eos step included; S_b the
        source's length), None without attention.

        max_len: the most ids a target gets (default 2*S + 10); one that reaches
        it without eos ends there. beam_size=1 is greedy decoding; more keeps that
        many extensions a step (finished ones included) and returns the best
        finished hypothesis by log-probability divided by length**length_penalty
        (length counts eos; 0: the plain sum; 1, the default: the mean per step).
        Sources run batch_size at a time."""
        x = self._ids(x, "x", self.config["src_vocab"])
        ls = self._lengths(lengths, "lengths", *x.shape)
        max_len = 2 * x.shape[1] + 10 if max_len is None else check_int(max_len, "max_len", 1)
        beam_size = check_int(beam_size, "beam_size", 1)
        batch_size = check_int(batch_size, "batch_size", 1)
        if isinstance(length_penalty, bool) or not isinstance(length_penalty, numbers.Real) \
                or not 0 <= length_penalty < np.inf:
            raise ValueError(f"length_penalty: expected a number >= 0, got {length_penalty!r}")
        outs, maps = [], []
        for i in range(0, len(x), batch_size):
            part = slice(i, i + batch_size)
            xb, lsb = x[part, :ls[part].max()], ls[part]
            state, memory = self._encode(xb, lsb, False)
            if beam_size == 1:
                o, m = self._greedy(state, memory, len(xb), max_len)
            else:
                o, m = self._beam(state, memory, len(xb), max_len, beam_size,
                                  float(length_penalty))
            outs += o
            maps += [None if a is None else a[:, :n] for a, n in zip(m, lsb)]
        return (outs, maps) if return_attention else outs

    predict = decode

    def _greedy(self, state, memory, B, max_len):
        tokens = np.full(B, self.bos, np.int64)
        out = np.zeros((B, max_len), np.int64)
        steps = np.full(B, max_len)  # decoder steps each target ran (eos included)
        done = np.zeros(B, bool)
        maps = []
        for t in range(max_len):
            logp, state, weights = self.decode_step(tokens, state, memory)
            tokens = logp.argmax(axis=1)
            out[:, t] = tokens
            maps.append(weights)
            ended = ~done & (tokens == self.eos)
            steps[ended] = t + 1
            done |= ended
            if done.all():
                break
        ids = [out[b, :steps[b] - (out[b, steps[b] - 1] == self.eos)] for b in range(B)]
        if memory is None:
            return ids, [None] * B
        maps = np.stack(maps, axis=1)
        return ids, [maps[b, :steps[b]] for b in range(B)]

    def _beam(self, state, memory, B, max_len, K, alpha):
        """Beam search over B sources at once (B*K rows). Each step extends every
        live hypothesis by every token and keeps the K best extensions: those that
        end (eos, or any token at max_len) are finished, the others stay live. So
        beam_size=1 is greedy decoding, and a beam as wide as all extensions is
        exhaustive search. A source is done when its best finished hypothesis
        beats what any live one could still reach (log-probabilities only fall:
        a live score s ends at best s / max_len**alpha)."""
        rows = np.repeat(np.arange(B), K)
        state = _take_state(state, rows)
        memory = None if memory is None else take(memory, rows)
        scores = np.full((B, K), -np.inf)
        scores[:, 0] = 0.0  # one live hypothesis (bos) per source at first
        tokens = np.full(B * K, self.bos, np.int64)
        hist = np.zeros((B * K, 0), np.int64)
        maps = None if memory is None else np.zeros((B * K, 0, memory.keys.shape[1]))
        best = np.full(B, -np.inf)
        best_ids, best_maps = [None] * B, [None] * B
        ar = np.arange(B)
        for t in range(max_len):
            logp, state, weights = self.decode_step(tokens, state, memory)
            V = logp.shape[1]
            flat = (scores.reshape(-1, 1) + logp).reshape(B, K * V)
            top = np.argpartition(-flat, K - 1, axis=1)[:, :K]
            top = np.take_along_axis(top, np.argsort(
                -np.take_along_axis(flat, top, axis=1), axis=1, kind="stable"), axis=1)
            kept = np.take_along_axis(flat, top, axis=1)         # [B,K], best first
            parent, token = (ar[:, None] * K + top // V), top % V
            ends = (token == self.eos) | (t == max_len - 1)
            if maps is not None:
                maps = np.concatenate([maps, weights[:, None]], axis=1)
            done = np.where(ends, kept / (t + 1) ** alpha, -np.inf)
            k = done.argmax(axis=1)
            for b in np.flatnonzero(done[ar, k] > best):
                row, tok = parent[b, k[b]], token[b, k[b]]
                best[b] = done[b, k[b]]
                best_ids[b] = hist[row].copy() if tok == self.eos else np.append(hist[row], tok)
                best_maps[b] = None if maps is None else maps[row]
            scores = np.where(ends, -np.inf, kept)
            if t == max_len - 1 or np.all(scores.max(axis=1) / max_len ** alpha <= best):
                break
            parent, tokens = parent.ravel(), token.ravel()
            hist = np.concatenate([hist[parent], tokens[:, None]], axis=1)
            if maps is not None:
                maps = maps[parent]
            state = _take_state(state, parent)
        return best_ids, best_maps


def _take_state(state, rows):
    """A decoder state ([L,B,Hd] parts) for the batch rows `rows`, in that order."""
    if isinstance(state, tuple):
        return tuple(np.ascontiguousarray(p[:, rows]) for p in state)
    return np.ascontiguousarray(state[:, rows])
