"""numlstm.Seq2Seq: gradients against finite differences (float64 reference
backend), the CPU kernels against the reference, padding that changes nothing,
teacher forcing against step-by-step decoding, beam search against exhaustive
search, checkpoints and exact resume, and bad input."""
import itertools

import numpy as np
import pytest

import numlstm
from helpers import assert_close, numeric_gradient

CASES = {  # Seq2Seq options; each case has lengths on both sides
    "lstm-bi-concat-luong": dict(cell="lstm", bidirectional=True, bridge="concat",
                                 attention="luong"),
    "gru-bi-sum-bahdanau": dict(cell="gru", bidirectional=True, bridge="sum",
                                attention="bahdanau", attention_units=3),
    "rnn-2layers-plain": dict(cell="rnn", num_layers=2),
    "lstm-luong-dropout": dict(cell="lstm", attention="luong", dropout=0.3),
}


def batch(rng, B=4, S=5, T=4, src_vocab=7, tgt_vocab=6):
    x = rng.integers(0, src_vocab, (B, S))
    y = rng.integers(3, tgt_vocab, (B, T))
    ls, lt = rng.integers(1, S + 1, B), rng.integers(1, T + 1, B)
    ls[0], lt[1] = S, T
    y[np.arange(B), lt - 1] = 2  # each target ends with eos
    return x, y, ls, lt


def model(options, dtype=np.float64, backend="numpy", seed=0, **more):
    return numlstm.Seq2Seq(7, 6, embed=3, hidden=4, dtype=dtype, backend=backend, seed=seed,
                           **{**options, **more})


def grads_of(m, x, y, ls, lt):
    """The model's loss on a batch and its gradients {key: array}, one training step's."""
    value, _ = m.gradients(x, y, (ls, lt))
    return value, {k: gr.copy() for k, _, gr in m.parameters()}


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_seq2seq_gradients_match_finite_differences(rng, options):
    m = model(options).compile("sgd", lr=0.1)
    x, y, ls, lt = batch(rng)
    seed_state = [layer.rng_state() for layer in m.layers]

    def same_masks():
        for layer, state in zip(m.layers, seed_state):
            layer.set_rng_state(state)

    def loss():  # the same dropout masks at every evaluation
        same_masks()
        logits, _ = m._forward(x, y, ls, lt, True)
        return m.loss(logits, m._targets(y, lt))

    same_masks()
    _, grads = grads_of(m, x, y, ls, lt)
    for key, p, _ in m.parameters():
        layer, name = key.split("/")
        layer = next(one for one in m.layers if one.name == layer)
        with layer.updating() as params:
            numeric = numeric_gradient(loss, params[name])
        assert_close(grads[key], numeric, 1e-6, key, atol=1e-9)


@pytest.mark.parametrize("options", [CASES["lstm-bi-concat-luong"],
                                     CASES["gru-bi-sum-bahdanau"]], ids=["luong", "bahdanau"])
def test_seq2seq_cpu_kernels_match_the_reference(rng, options):
    ref = model(options).compile("sgd", lr=0.1)
    cpu = model(options, dtype=np.float32, backend="cpu").compile("sgd", lr=0.1)
    x, y, ls, lt = batch(rng, B=5, S=7, T=6)
    want_logits, want_a = ref.forward(x, y, (ls, lt))
    got_logits, got_a = cpu.forward(x, y, (ls, lt))
    assert got_logits.dtype == np.float32
    assert_close(got_logits, want_logits, 1e-5, "logits")
    assert_close(got_a, want_a, 1e-5, "attention weights")
    want_loss, want = grads_of(ref, x, y, ls, lt)
    got_loss, got = grads_of(cpu, x, y, ls, lt)
    assert abs(got_loss - want_loss) < 1e-5 * abs(want_loss)
    for key in want:
        assert_close(got[key], want[key], 1e-4, key)


NO_DROPOUT = {k: v for k, v in CASES.items() if not v.get("dropout")}


@pytest.mark.parametrize("options", NO_DROPOUT.values(), ids=NO_DROPOUT.keys())
def test_padding_changes_nothing(rng, options):
    """More padding (with arbitrary ids in it) gives the same loss, gradients and
    decoded outputs. (Not with dropout: its masks are drawn for the padded shape.)"""
    x, y, ls, lt = batch(rng)
    xp = np.concatenate([x, rng.integers(0, 7, (4, 3))], axis=1)
    yp = np.concatenate([y, rng.integers(0, 6, (4, 2))], axis=1)
    for b in range(4):  # junk past each length, not only in the new columns
        xp[b, ls[b]:] = rng.integers(0, 7, xp.shape[1] - ls[b])
        yp[b, lt[b]:] = rng.integers(0, 6, yp.shape[1] - lt[b])
    m1 = model(options, dtype=np.float32, backend="cpu").compile("sgd", lr=0.1)
    m2 = model(options, dtype=np.float32, backend="cpu").compile("sgd", lr=0.1)
    value1, g1 = grads_of(m1, x, y, ls, lt)
    value2, g2 = grads_of(m2, xp, yp, ls, lt)
    assert value1 == pytest.approx(value2, rel=1e-6)
    for key in g1:
        assert_close(g2[key], g1[key], 1e-5, key)
    for a, b in zip(m1.decode(x, ls, max_len=5), m2.decode(xp, ls, max_len=5)):
        assert np.array_equal(a, b)


def log_softmax_without_pad_bos(logits):
    z = logits.astype(np.float64).copy()
    z[..., :2] = -np.inf
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_teacher_forcing_matches_step_by_step_decoding(rng, options):
    m = model(options, dtype=np.float32, backend="cpu")
    x, y, ls, lt = batch(rng, T=5)
    logits, weights = m.forward(x, y, (ls, np.full(4, 5)))
    state, memory = m.encode(x, ls)
    prev = np.full(4, m.bos)
    for t in range(y.shape[1]):
        logp, state, a = m.decode_step(prev, state, memory)
        assert np.all(logp[:, :2] == -np.inf)  # pad and bos are never emitted
        assert_close(logp[:, 2:], log_softmax_without_pad_bos(logits[:, t])[:, 2:], 1e-5,
                     f"step {t}")
        if weights is not None:
            assert_close(a, weights[:, t], 1e-5, f"weights at step {t}")
        prev = y[:, t]


def sequence_log_prob(m, x, out):
    """log P(out + eos | x) under teacher forcing (out may be cut at max_len: no eos)."""
    y = np.array([list(out)], np.int64)
    logits, _ = m.forward(x[None], y)
    logp = log_softmax_without_pad_bos(logits[0])
    return logp[np.arange(len(out)), y[0]].sum()


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("options", [CASES["lstm-bi-concat-luong"], CASES["rnn-2layers-plain"]],
                         ids=["luong", "plain"])
def test_beam_search_equals_exhaustive_search(rng, options, alpha):
    """Tokens 3 and 4 and eos (5 ids: pad, bos, eos, 3, 4), max_len 4: at most 8 live
    hypotheses make 24 extensions, so a beam of 24 keeps every one and must find
    the exhaustive search's best."""
    m = numlstm.Seq2Seq(7, 5, embed=3, hidden=4, backend="numpy", dtype=np.float64, seed=3,
                        **options)
    max_len = 4
    for b in range(3):
        x = rng.integers(0, 7, 5)
        candidates = [c + (2,) for n in range(max_len) for c in
                      itertools.product((3, 4), repeat=n)]
        candidates += list(itertools.product((3, 4), repeat=max_len))  # cut without eos
        scored = [(sequence_log_prob(m, x, c) / len(c) ** alpha, c) for c in candidates]
        best = max(scored)[1]
        best = best[:-1] if best[-1] == 2 else best
        got = m.decode(x[None], max_len=max_len, beam_size=24, length_penalty=alpha)[0]
        assert tuple(got) == best


def test_beam_of_one_is_greedy_and_attention_maps_have_their_shapes(rng):
    m = model(CASES["lstm-bi-concat-luong"], dtype=np.float32, backend="cpu")
    x, _, ls, _ = batch(rng, B=6)
    greedy, maps = m.decode(x, ls, max_len=6, return_attention=True)
    beam1 = m._beam(*m.encode(x, ls), 6, 6, 1, 0.0)[0]
    for g, b in zip(greedy, beam1):
        assert np.array_equal(g, b)
    for out, a, n in zip(greedy, maps, ls):
        assert a.shape[1] == n and a.shape[0] in (len(out), len(out) + 1)
        assert_close(a.sum(axis=1), np.ones(len(a)), 1e-5, "rows sum to 1")


def test_checkpoint_round_trip_and_exact_resume(rng, tmp_path):
    options = dict(CASES["lstm-luong-dropout"], bidirectional=True)
    x, y, ls, lt = batch(rng, B=8)
    a = model(options, dtype=np.float32, backend="cpu", seed=5).compile("adam", lr=1e-2)
    b = model(options, dtype=np.float32, backend="cpu", seed=5).compile("adam", lr=1e-2)
    for _ in range(2):
        a.fit(x, y, lengths=(ls, lt), batch_size=3, verbose=0)
        b.fit(x, y, lengths=(ls, lt), batch_size=3, verbose=0)
    b.save(tmp_path / "ck.npz", step=2)
    ckpt = numlstm.load_checkpoint(tmp_path / "ck.npz")
    c = ckpt.model
    assert isinstance(c, numlstm.Seq2Seq) and c.get_config() == b.get_config()
    c.compile(ckpt.optimizer)
    for m in (a, c):  # one more epoch each, shuffled and masked by the restored state
        m.fit(x, y, lengths=(ls, lt), batch_size=3, verbose=0)
    for (k, p, _), (_, q, _) in zip(a.parameters(), c.parameters()):
        assert np.array_equal(p, q), k
    assert all(np.array_equal(u, v) for u, v in zip(a.decode(x, ls, beam_size=2),
                                                    c.decode(x, ls, beam_size=2)))


def test_learns_to_reverse(rng):
    """A real task, small: reverse strings of 2..5 symbols; attention makes it easy."""
    n, S = 512, 5
    lengths = rng.integers(2, S + 1, n)
    x = rng.integers(1, 5, (n, S))
    y = np.zeros((n, S + 1), np.int64)
    for i, k in enumerate(lengths):
        y[i, :k] = x[i, :k][::-1] + 2  # source ids 1..4 -> target ids 3..6
        y[i, k] = 2
    m = numlstm.Seq2Seq(5, 7, embed=8, hidden=16, bidirectional=True, attention="luong",
                        seed=0).compile("adam", lr=2e-2, clip_norm=1.0)
    m.fit(x, y, lengths=(lengths, lengths + 1), epochs=12, batch_size=32, verbose=0)
    out = m.decode(x[:100], lengths[:100])
    exact = np.mean([np.array_equal(o, y[i, :lengths[i]]) for i, o in enumerate(out)])
    assert exact > 0.9


def test_bad_input_is_refused_before_anything_runs(rng):
    m = model(CASES["lstm-bi-concat-luong"], dtype=np.float32, backend="cpu").compile("adam")
    x, y, ls, lt = batch(rng)
    before = m.get_weights()
    with pytest.raises(TypeError, match="integer token ids"):
        m.train_step(x.astype(float), y)
    with pytest.raises(ValueError, match=r"x: expected ids in \[0, 7\)"):
        m.train_step(x + 7, y)
    with pytest.raises(ValueError, match="same number of sequences"):
        m.train_step(x, y[:3])
    with pytest.raises(TypeError, match="a pair"):
        m.train_step(x, y, ls)
    with pytest.raises(ValueError, match=r"tgt_lengths: expected values in \[1, 4\]"):
        m.train_step(x, y, (ls, lt + 4))
    with pytest.raises(ValueError, match="length_penalty"):
        m.decode(x, beam_size=2, length_penalty=-1)
    with pytest.raises(ValueError, match="beam_size"):
        m.decode(x, beam_size=0)
    with pytest.raises(ValueError, match="three different ids"):
        numlstm.Seq2Seq(5, 5, bos=0)
    with pytest.raises(ValueError, match="attention"):
        numlstm.Seq2Seq(5, 5, attention="dot")
    with pytest.raises(ValueError, match="backend"):
        numlstm.Seq2Seq(5, 5, backend="cuda")
    with pytest.raises(ValueError, match="attention_units"):
        numlstm.Seq2Seq(5, 5, attention="luong", attention_units=8)
    with pytest.raises(ValueError, match="loss"):
        m.compile("adam", loss="mse")
    after = m.get_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)
