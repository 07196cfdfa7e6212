"""`numlstm bench --isolated --cell seq2seq`: numlstm.Seq2Seq against the same model
written in torch, each library in fresh processes of its own (numlstm.bench_isolated's
workers, rounds and --load), after a check that both compute the same thing.

The model is the translate task's (`numlstm train --task translate`): 40 source and
14 target ids, embeddings of 32, a bidirectional LSTM encoder of 64 units a
direction whose states are concatenated into an LSTM decoder of 128, Luong
attention, a dense output layer. A shape is (B, S, T): batch, source and target
steps; the sources have lengths spread over [S/2, S], the targets over [T/2, T].

  numlstm  training: model.train_step(x, y, (src_lengths, tgt_lengths)) after
           compile("adam", lr=1e-3, clip_norm=1.0); inference: greedy decoding of
           the batch, model.decode(x, src_lengths, max_len=T).
  torch    the model as a torch user writes it (TorchSeq2Seq below): nn.Embedding,
           nn.LSTM on pack_padded_sequence (encoder and decoder), the attention as
           batched products with a masked softmax, nn.Linear. Training: zero_grad,
           forward, cross_entropy(ignore_index=-100), backward, clip_grad_norm_(1.0),
           Adam(lr=1e-3).step(); inference: under no_grad, the encoder once, then a
           decoder step (nn.LSTM on [B,1,E] carrying its state) per token, argmax,
           until every sequence said eos or max_len = T. torch.set_num_threads(the
           cores this process may use).

Parity, before any timing: one fresh process builds both from numlstm's weights at
PROBE, compares the teacher-forced logits at every target step within its length,
the loss and every parameter's gradient (|torch - numlstm| <= 1e-4 + 1e-3 *
|numlstm|), and requires the same greedy outputs; ParityError otherwise.

The derived figures: a training step's target tokens a second (the batch's target
lengths summed over its time), greedy decoding's sequences a second.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from . import bench_isolated

LIBRARIES = ("numlstm", "torch")
MODES = ("inference", "training")
GRID = [(1, 30, 12), (16, 30, 12), (64, 30, 12), (64, 60, 24)]
QUICK_GRID = [(4, 10, 6)]
PROBE = (5, 9, 7)
KEYS = ("B", "S", "T")
CONFIG = dict(src_vocab=40, tgt_vocab=14, embed=32, hidden=64, bidirectional=True,
              attention="luong")
MODULE = "numlstm.bench_seq2seq"


class ParityError(RuntimeError):
    """The libraries disagree on the probe: the timing would compare different things."""


def shape3(shape):
    """(B, S, T), integers >= 1 (T >= 2: a target and its eos), as a tuple; ValueError
    otherwise."""
    shape = tuple(shape)
    if len(shape) != 3 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in shape) \
            or shape[2] < 2:
        raise ValueError(f"shapes: expected B,S,T (integers >= 1, T >= 2), got {shape!r}")
    return tuple(int(v) for v in shape)


def _batch(shape):
    """The batch at shape (B, S, T): x [B,S], y [B,T] and their lengths (_problem
    ends each target with the model's eos)."""
    B, S, T = shape
    rng = np.random.default_rng(B * 100 + S)
    x = rng.integers(1, CONFIG["src_vocab"], (B, S))
    y = rng.integers(3, CONFIG["tgt_vocab"], (B, T))
    ls = rng.integers(max(1, S // 2), S + 1, B)
    lt = rng.integers(max(1, T // 2), T + 1, B)
    ls[0], lt[0] = S, T
    return x, y, ls, lt


def _problem(shape):
    """numlstm's model (its weights are everyone's) and _batch(shape)."""
    import numlstm
    model = numlstm.Seq2Seq(**CONFIG, seed=shape[1] + shape[2])
    x, y, ls, lt = _batch(shape)
    y[np.arange(len(y)), lt - 1] = model.eos
    return model, x, y, ls, lt


def _numlstm(model, x, y, ls, lt):
    model.compile("adam", lr=1e-3, clip_norm=1.0)
    T = y.shape[1]

    def infer():
        return model.decode(x, ls, max_len=T)

    def train():
        return model.train_step(x, y, (ls, lt))

    def results():  # (PROBE's longest target is T: the logits are [B,T,V])
        loss, logits = model.gradients(x, y, (ls, lt))
        grads = {k: g.copy() for k, _, g in model.parameters()}
        return dict(logits=logits, loss=np.array(loss), greedy=_padded(infer(), T), **grads)
    return infer, train, results


def _padded(outputs, T):
    """Greedy outputs as one array [B,T] padded with -1 (for comparison)."""
    out = np.full((len(outputs), T), -1)
    for b, o in enumerate(outputs):
        out[b, :len(o)] = o
    return out


def _torch_model(model):
    """TorchSeq2Seq with numlstm model's weights."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class TorchSeq2Seq(nn.Module):
        def __init__(self, c, Hd):
            super().__init__()
            K = 2 * c["hidden"]
            self.src_embed = nn.Embedding(c["src_vocab"], c["embed"])
            self.encoder = nn.LSTM(c["embed"], c["hidden"], batch_first=True,
                                   bidirectional=True)
            self.tgt_embed = nn.Embedding(c["tgt_vocab"], c["embed"])
            self.decoder = nn.LSTM(c["embed"], Hd, batch_first=True)
            self.w_a = nn.Linear(K, Hd, bias=False)
            self.w_c = nn.Linear(K + Hd, Hd)
            self.head = nn.Linear(Hd, c["tgt_vocab"])

        def encode(self, x, ls):
            packed = pack_padded_sequence(self.src_embed(x), ls, batch_first=True,
                                          enforce_sorted=False)
            out, (h, c) = self.encoder(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
            state = tuple(torch.cat([s[0::2], s[1::2]], -1) for s in (h, c))
            mask = torch.arange(x.shape[1])[None, :] < ls[:, None]
            return state, out, self.w_a(out), mask

        def attend(self, h, out, keys, mask):
            e = (h @ keys.transpose(1, 2)).masked_fill(~mask[:, None, :], float("-inf"))
            ctx = torch.softmax(e, -1) @ out
            return torch.tanh(self.w_c(torch.cat([ctx, h], -1)))

        def forward(self, x, ls, dec_in, lt):
            state, out, keys, mask = self.encode(x, ls)
            packed = pack_padded_sequence(self.tgt_embed(dec_in), lt, batch_first=True,
                                          enforce_sorted=False)
            h, _ = self.decoder(packed, state)
            h, _ = pad_packed_sequence(h, batch_first=True, total_length=dec_in.shape[1])
            return self.head(self.attend(h, out, keys, mask))

        def greedy(self, x, ls, max_len, bos, eos, banned):
            with torch.no_grad():
                state, out, keys, mask = self.encode(x, ls)
                tok = torch.full((x.shape[0],), bos, dtype=torch.long)
                done = torch.zeros(x.shape[0], dtype=torch.bool)
                steps = []
                for _ in range(max_len):
                    h, state = self.decoder(self.tgt_embed(tok)[:, None], state)
                    z = self.head(self.attend(h, out, keys, mask))[:, 0]
                    z[:, banned] = float("-inf")
                    tok = z.argmax(1)
                    steps.append(tok)
                    done |= tok == eos
                    if bool(done.all()):
                        break
                return torch.stack(steps, 1)

    net = TorchSeq2Seq(model.config, model.dec_units)
    weights = model.get_weights()
    names = {"w_a.weight": "attention/weight_a", "w_c.weight": "attention/weight_c",
             "w_c.bias": "attention/bias_c"}
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.from_numpy(weights[names.get(name, name.replace(".", "/", 1))]))
    return net, names


def _torch(model, x, y, ls, lt):
    import torch
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count())
    net, names = _torch_model(model)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    T = y.shape[1]
    xt, lst, ltt = torch.from_numpy(x), torch.from_numpy(ls), torch.from_numpy(lt)
    dec_in = np.concatenate([np.full((len(y), 1), model.bos), y[:, :-1]], 1)
    dec_t = torch.from_numpy(dec_in)
    target = torch.from_numpy(np.where(np.arange(T) < lt[:, None], y, -100))

    def loss_of():
        logits = net(xt, lst, dec_t, ltt)
        return logits, torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)

    def infer():
        return net.greedy(xt, lst, T, model.bos, model.eos, [model.pad, model.bos])

    def train():
        opt.zero_grad()
        loss_of()[1].backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    def results():
        net.zero_grad()
        logits, loss = loss_of()
        loss.backward()
        rows = []  # each row up to its first eos, as numlstm's decode returns them
        for row in infer().numpy():
            ends = np.flatnonzero(row == model.eos)
            rows.append(row[:ends[0]] if len(ends) else row)
        return dict(logits=logits.detach().numpy(), loss=np.array(loss.item()),
                    greedy=_padded(rows, T),
                    **{names.get(n, n.replace(".", "/", 1)): p.grad.numpy()
                       for n, p in net.named_parameters()})
    return infer, train, results


_LIBRARY = {"numlstm": _numlstm, "torch": _torch}


def build(lib, shape, mode):
    """A function making one call of `lib` at `shape` in `mode` (the module docstring)."""
    infer, train, _ = _LIBRARY[lib](*_problem(shape))
    return infer if mode == "inference" else train


def check_parity(ref, got, lt, atol=1e-4, rtol=1e-3):
    """ref, got: numlstm's and torch's results at the probe; lt: the target lengths.
    Raise ParityError on the first mismatches; return the worst |torch - numlstm| over
    the logits, the loss and the gradients."""
    if not np.array_equal(ref["greedy"], got["greedy"]):
        raise ParityError(f"greedy outputs differ:\nnumlstm {ref['greedy'].tolist()}\n"
                          f"torch   {got['greedy'].tolist()}")
    valid = np.arange(ref["logits"].shape[1])[None, :] < lt[:, None]
    worst, lines = 0.0, []
    for name, want in ref.items():
        if name == "greedy":
            continue
        have = np.asarray(got[name], np.float64)
        if name == "logits":
            want, have = want[valid], have[valid]
        diff = np.abs(have - want)
        worst = max(worst, float(diff.max()))
        bad = np.argwhere(diff > atol + rtol * np.abs(want))
        if len(bad):
            i = tuple(bad[0])
            lines.append(f"  {name}: {len(bad)} of {diff.size} differ, e.g. at {list(i)}: "
                         f"torch {have[i]:.6g}, numlstm {want[i]:.6g}")
    if lines:
        raise ParityError("torch and numlstm disagree beyond "
                          f"{atol:g} + {rtol:g} * |numlstm|:\n" + "\n".join(lines))
    return worst


def _probe(folder):
    for lib in LIBRARIES:
        np.savez(os.path.join(folder, lib + ".npz"), **_LIBRARY[lib](*_problem(PROBE))[2]())


def parity(env=None):
    """Compare torch with numlstm at PROBE in one fresh process -> the worst |torch -
    numlstm|, or ParityError."""
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run([sys.executable, "-m", MODULE],
                              input=json.dumps(dict(probe=True, folder=folder)),
                              capture_output=True, text=True, env=env)
        if done.returncode:
            raise RuntimeError(f"the parity process ended with status {done.returncode}:\n"
                               f"{done.stderr[-3000:]}")
        ref, got = (dict(np.load(os.path.join(folder, lib + ".npz"))) for lib in LIBRARIES)
    return check_parity(ref, got, _problem(PROBE)[4])


def run(shapes, libraries=LIBRARIES, modes=MODES, load=0, copies=1, rounds=3, repeats=5,
        min_seconds=0.3, env=None):
    """Check parity (with torch among the libraries), then time each library at every
    shape (B,S,T) and mode in its own processes, `rounds` rounds; one row dict per
    (shape, mode): each library's median ms, numlstm's tokens or sequences a second,
    torch's ratio (its ms / numlstm's) and parity."""
    shapes = [shape3(s) for s in shapes]
    bench_isolated.check_run(libraries, LIBRARIES, modes, MODES, copies, load)
    tasks = [(list(shape), mode) for shape in shapes for mode in modes]
    worst = parity(env) if "torch" in libraries else None
    measured = bench_isolated.measure_tasks(libraries, tasks, MODULE, repeats, min_seconds,
                                            load=load, copies=copies, rounds=rounds, env=env)
    rows = []
    for i, (shape, mode) in enumerate(tasks):
        B = shape[0]
        tokens = int(_batch(tuple(shape))[3].sum())
        row = dict(cell="seq2seq", **dict(zip(KEYS, shape)), mode=mode, load=load,
                   copies=copies, rounds=rounds, dtype="float32")
        for lib in libraries:
            row[lib + "_ms"] = 1e3 * float(np.median(measured[lib, i]))
        rate = (B if mode == "inference" else tokens) / row["numlstm_ms"] * 1e3
        row["numlstm_" + ("seq_per_s" if mode == "inference" else "tokens_per_s")] = rate
        if "torch" in libraries:
            row["torch_ratio"] = row["torch_ms"] / row["numlstm_ms"]
            row["torch_parity"] = worst
        rows.append(row)
    return rows


def table(rows, libraries, out=print):
    """Print the rows: numlstm's ms and rate, torch's ms and the ratio."""
    out("inference: greedy decoding of the batch (rate: sequences/s); training: one "
        "optimizer step (rate: target tokens/s); ratio: torch's time / numlstm's "
        "(> 1: numlstm is faster)")
    head = f"{'mode':<9} {'B,S,T':>10} | {'numlstm ms':>10} {'rate':>10}"
    if "torch" in libraries:
        head += f" | {'torch ms':>10} {'ratio':>6}"
    out(head)
    out("-" * len(head))
    for row in rows:
        rate = row.get("numlstm_seq_per_s", row.get("numlstm_tokens_per_s"))
        line = (f"{row['mode']:<9} {','.join(str(row[k]) for k in KEYS):>10} | "
                f"{row['numlstm_ms']:>10.2f} {rate:>10,.0f}")
        if "torch" in libraries:
            line += f" | {row['torch_ms']:>10.2f} {row['torch_ratio']:>5.2f}x"
        out(line)


if __name__ == "__main__":
    _spec = json.loads(sys.stdin.readline())
    if "probe" in _spec:
        _probe(_spec["folder"])
    else:
        bench_isolated._worker(
            _spec, lambda shape, mode, tmpdir: build(_spec["lib"], tuple(shape), mode))
