"""LSTM, GRU and RNN layers against torch (with and without lengths), and the
features every recurrent layer shares: masks, streaming steps, stateful layers,
bidirectional merge modes."""
import itertools

import numpy as np
import pytest

import numlstm
from numlstm.bench import parity
from helpers import assert_close, run_steps

pytest.importorskip("torch")

CELLS = {"lstm": ("lstm", {}), "gru": ("gru", {}), "rnn_tanh": ("rnn", {}),
         "rnn_relu": ("rnn", {"nonlinearity": "relu"})}
CLASSES = {"lstm": numlstm.LSTM, "gru": numlstm.GRU, "rnn": numlstm.RNN}
# float32 relative to the largest value, values then gradients; float64 tight.
TOL = {np.float32: (2e-5, 2e-4), np.float64: (1e-10, 1e-10)}
SHAPES = list(itertools.product([1, 2], [False, True], [False, True]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layers,bidirectional,lengths", SHAPES,
                         ids=[f"L{l}-{'bi' if b else 'uni'}-{'lengths' if n else 'full'}"
                              for l, b, n in SHAPES])
@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_layer_matches_torch(backend, name, dtype, layers, bidirectional, lengths):
    cell, options = CELLS[name]
    seed = sum(map(ord, name)) + 10 * layers + 2 * bidirectional + lengths
    errors = parity(cell, dtype, layers, bidirectional, lengths, seed=seed, backend=backend,
                    **options)
    vtol, gtol = TOL[dtype]
    for what, e in errors.items():
        tol = vtol if what in ("y", "h_n", "c_n") else gtol
        assert e <= tol, f"{name} {what}: relative error {e:.2e} against torch > {tol:g}"


def _layer(cell, **kw):
    kw.setdefault("seed", 3)
    return CLASSES[cell](4, 5, **kw)


def _state(cell, h, c=None):
    return (h, c) if cell == "lstm" else h


@pytest.mark.parametrize("cell", sorted(CLASSES))
def test_mask_equals_lengths_and_refuses_left_padding(rng, cell):
    layer = _layer(cell, bidirectional=True, batch_first=True)
    x = rng.standard_normal((3, 6, 4)).astype(np.float32)
    lengths = np.array([6, 2, 4])
    mask = np.arange(6) < lengths[:, None]
    y_l, s_l = layer(x, lengths=lengths)
    y_m, s_m = layer(x, mask=mask)
    np.testing.assert_array_equal(y_l, y_m)
    for a, b in zip(np.atleast_1d(s_l), np.atleast_1d(s_m)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"right padding\); rows \[1\]"):
        layer(x, mask=mask[:, ::-1].copy() | np.array([[1, 1, 1, 1, 1, 1], [0] * 6, [1] * 6],
                                                      bool))
    with pytest.raises(ValueError, match="lengths or mask, not both"):
        layer(x, lengths=lengths, mask=mask)
    with pytest.raises(ValueError, match=r"mask: expected shape \(3, 6\)"):
        layer(x, mask=mask.T)
    with pytest.raises(TypeError, match="boolean"):
        layer(x, mask=mask.astype(np.float32))
    with pytest.raises(ValueError, match=r"mask: expected at least one True \(valid step\) "
                                         r"in every row; rows \[0, 1, 2\] have none"):
        layer(x, mask=np.zeros((3, 6), bool))


@pytest.mark.parametrize("cell", sorted(CLASSES))
def test_steps_equal_the_whole_sequence(rng, cell):
    layer = _layer(cell, num_layers=2)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    h0 = rng.standard_normal((2, 3, 5)).astype(np.float32)
    state = _state(cell, h0, h0 * 0.5)
    y, want = layer(x, state)
    ys, state = run_steps(layer, x, state)
    assert_close(ys, y, 1e-6, "y")
    for a, b in zip(np.atleast_1d(state) if cell != "lstm" else state,
                    np.atleast_1d(want) if cell != "lstm" else want):
        assert_close(a, b, 1e-6, "state")
    y1, _ = layer.step(x[0, 0])  # unbatched, from zeros
    assert_close(y1, layer(x[:1, :1])[0][0, 0], 1e-6, "unbatched step")


@pytest.mark.parametrize("cell", sorted(CLASSES))
def test_stateful_layer_carries_state_until_reset(rng, cell):
    x = rng.standard_normal((2, 8, 4)).astype(np.float32)  # batch first
    whole = _layer(cell, batch_first=True)
    y, _ = whole(x)
    layer = _layer(cell, batch_first=True, stateful=True)
    parts = [layer(x[:, :3])[0], layer(x[:, 3:4])[0], layer(x[:, 4:])[0]]
    assert_close(np.concatenate(parts, axis=1), y, 1e-6, "chunked stateful run")
    state_before = layer._carried
    with pytest.raises(ValueError, match="batch of 2, got a batch of 1.*reset_state"):
        layer(x[:1, :3])
    assert layer._carried is state_before  # a refused call changes nothing
    layer.reset_state()
    assert_close(layer(x[:, :3])[0], y[:, :3], 1e-6, "after reset_state")
    # step() continues the same carried state.
    layer.reset_state()
    steps = [layer.step(x[:, t])[0] for t in range(8)]
    assert_close(np.stack(steps, axis=1), y, 1e-6, "stateful steps")


def _counting_table(monkeypatch, cell):
    """The CPU table's step, forward and forward_into for cell, counting their calls."""
    from numlstm.kernels import cpu
    calls = dict.fromkeys(("step", "forward", "forward_into"), 0)
    table = cpu.KERNELS[cell]

    def counted(name):
        def call(*args, **kwargs):
            calls[name] += 1
            return getattr(table, name)(*args, **kwargs)
        return call
    monkeypatch.setitem(cpu.KERNELS, cell, table._replace(**{n: counted(n) for n in calls}))
    return calls


def _equal(cell, got, want):
    """(y, state) pairs bitwise equal."""
    np.testing.assert_array_equal(got[0], want[0])
    for a, b in zip(*((s,) if cell != "lstm" else s for s in (got[1], want[1]))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", sorted(CLASSES))
def test_small_inference_calls_are_one_kernel_call_a_layer_and_bitwise_the_general_path(
        rng, cell, monkeypatch):
    """A small inference call from NumPy arrays of the layer's dtype (the state None,
    given or carried; no lengths), through step() or the layer, batch-first or
    not, calls the table's forward_into once a layer and nothing else; the same
    call in other forms (float64 x, the state as a list, lengths) takes the
    general path; both give bitwise the same y and state. Uneven H, B=1, T=1,
    unbatched, two layers, the input product a step at a time. Steps too large
    for one thread leave forward_into for the general path, bitwise the same."""
    from numlstm.kernels.cpu import plan
    calls = _counting_table(monkeypatch, cell)
    monkeypatch.setattr(plan, "INFERENCE_CHUNK_BYTES", 1)  # (chunks of one step)
    for T, B, H in ((1, 3, 37), (5, 1, 5), (4, 2, 20)):
        layer = CLASSES[cell](4, H, num_layers=2, seed=B)
        x = rng.standard_normal((T, B, 4)).astype(np.float32)
        h0 = rng.standard_normal((2, B, H)).astype(np.float32)
        state = (h0, h0 * 0.5) if cell == "lstm" else h0
        general = list(state) if cell == "lstm" else h0.astype(np.float64)
        for state_in, general_in in ((None, None), (state, general)):
            calls.update(step=0, forward=0, forward_into=0)
            out = layer(x, state_in)
            step = layer.step(x[0], state_in)
            assert calls == {"step": 0, "forward": 0, "forward_into": 4}
            _equal(cell, out, layer(x.astype(np.float64), general_in))
            _equal(cell, out, layer(x, state_in, lengths=[T] * B))
            _equal(cell, step, layer.step(x[0].astype(np.float64), general_in))
            assert calls == {"step": 2, "forward": 4, "forward_into": 4}
            _equal(cell, (out[0][:1], step[1] if T == 1 else out[1]), (step[0][None], out[1]))
        unbatched = layer(x[:, 0])
        assert unbatched[0].shape == (T, H) and calls["forward_into"] == 6
        _equal(cell, unbatched, layer(x[:, 0].tolist()))
        bf = CLASSES[cell](4, H, num_layers=2, seed=B, batch_first=True)
        y_bf, st_bf = bf(x.swapaxes(0, 1))
        _equal(cell, (y_bf.swapaxes(0, 1), st_bf), layer(x))
        out[0].fill(0)  # (y is an array of its own, not a view of the state)
        _equal(cell, layer(x, out[1]), layer(x, layer(x, state)[1]))
    # a stateful layer carries the state through the short path
    stateful = CLASSES[cell](4, 6, seed=0, stateful=True)
    plain = CLASSES[cell](4, 6, seed=0)
    xs = rng.standard_normal((3, 2, 4)).astype(np.float32)
    calls.update(step=0, forward=0, forward_into=0)
    ys = [stateful.step(x_t)[0] for x_t in xs]
    assert calls == {"step": 0, "forward": 0, "forward_into": 3}
    np.testing.assert_array_equal(np.stack(ys), run_steps(plain, xs.astype(np.float64))[0])
    # calls too large for one thread: steps shared among the threads, still through
    # forward_into (the RNN's single step is always one thread), and longer calls
    # the general path's plan
    monkeypatch.setattr(plan, "STEP_SPLIT_MIN_FLOPS", 0)
    monkeypatch.setattr(plan, "PARALLEL_MIN_FLOPS", 0)
    monkeypatch.setattr(plan, "PARALLEL_MIN_UNITS", 0)
    calls.update(step=0, forward=0, forward_into=0)
    _equal(cell, plain(xs), run_steps(plain, xs.astype(np.float64)))
    np.testing.assert_array_equal(plain.step(xs[0])[0], ys[0])
    # (forward_into declined the 3 steps' call and took the step; the float64 steps
    # took the table's step)
    assert calls == {"step": 3, "forward": 1, "forward_into": 2}


@pytest.mark.parametrize("cell", sorted(CLASSES))
def test_the_short_path_keeps_per_batch_only_what_the_batch_decides(rng, cell, monkeypatch):
    """_host_forward keeps, per batch size, the state's shapes, its zeros and the
    kernel: the same layer called at batch 2, 3, then 2 again, one step and five,
    before and after its weights change (load_weights), from zeros and from a given
    state, gives bitwise what the general path gives (lengths force that one), and
    the zeros it starts from stay zeros."""
    calls = _counting_table(monkeypatch, cell)
    layer = CLASSES[cell](3, 7, num_layers=2, seed=1)
    other = CLASSES[cell](3, 7, num_layers=2, seed=2)
    for weights in (None, other.state_dict()):
        if weights is not None:
            layer.load_weights(weights)
        for B, T in ((2, 1), (3, 5), (2, 5), (3, 1)):
            x = rng.standard_normal((T, B, 3)).astype(np.float32)
            h0 = rng.standard_normal((2, B, 7)).astype(np.float32)
            state = (h0, -h0) if cell == "lstm" else h0
            for given in (None, state):
                before = calls["forward_into"]
                out = layer(x, given)
                assert calls["forward_into"] == before + 2  # (the short path, both layers)
                _equal(cell, out, layer(x, given, lengths=[T] * B))
    assert calls["forward_into"] == 32
    for _, _, _, per_layer in layer._host_batches.values():
        assert not any(np.any(z) for zeros in per_layer for z in zeros)
    _equal(cell, layer(x), other(x))


def test_a_small_lstm_call_runs_as_a_duet_bitwise_the_general_path(rng, monkeypatch):
    """An LSTM inference call that plan.duet_runs takes (B <= 4, H > 48) runs through
    forward_into as a duet, one parallel region a layer on two threads (none on
    one), and gives bitwise what the general path gives (lengths force that one).
    (A fresh plan.Trial's first calls are duets.)"""
    from numba import get_num_threads

    from numlstm.kernels.cpu import plan, threads
    monkeypatch.setattr(plan, "_routes", {})
    calls = _counting_table(monkeypatch, "lstm")
    layer = numlstm.LSTM(6, 70, num_layers=2, seed=3)
    x = rng.standard_normal((9, 3, 6)).astype(np.float32)
    gate = threads.POLICY.gate()
    gate[threads.SERIAL_UNTIL] = gate[threads.HOLD] = 0
    many = threads.POLICY.call_threads() > 1 and get_num_threads() > 1
    regions, lagged = gate[threads.REGIONS], gate[threads.LAGGED]
    out = layer(x)
    assert calls == {"step": 0, "forward": 0, "forward_into": 2}
    # a region a layer; but a first one whose peer came late (a busy machine, or the
    # process's first region) holds the second layer to one thread
    ran = gate[threads.REGIONS] - regions
    assert ran == 2 or (ran == 1 and gate[threads.LAGGED] == lagged + 1) if many else ran == 0
    _equal("lstm", out, layer(x, lengths=[9] * 3))
    assert calls["forward"] == 2


def test_a_duet_is_timed_against_one_thread_and_the_faster_runs(rng, monkeypatch):
    """A call that plan.duet_runs takes is a plan.Trial of the duet and one thread:
    a run of calls of each, then the faster one's (here by a clock that the two
    routes advance by different amounts, one way round and then the other), every
    output bitwise the general path's."""
    from numba import get_num_threads

    from numlstm.kernels.cpu import lstm, plan, threads
    if get_num_threads() < 2 or threads.cores_available() < 2:
        pytest.skip("needs 2 threads and 2 CPUs")
    gate = threads.POLICY.gate()
    gate[threads.SERIAL_UNTIL] = gate[threads.HOLD] = 0  # (a hold changes no route)
    calls, cost, clock = {"duet": 0, "alone": 0}, {}, [0]
    real = {"duet": lstm._duet, "alone": lstm.steps_state}

    def timed(route):
        def call(*args):
            calls[route] += 1
            real[route](*args)
            clock[0] += cost[route]
        return call
    monkeypatch.setattr(lstm, "_duet", timed("duet"))
    monkeypatch.setattr(lstm, "steps_state", timed("alone"))
    monkeypatch.setattr(lstm, "perf_counter_ns", lambda: clock[0])
    layer = numlstm.LSTM(5, 64, seed=1)
    x = rng.standard_normal((20, 2, 5)).astype(np.float32)
    want = layer(x, lengths=[20, 20])
    n = plan.TRIAL_CALLS + 1
    for slower, faster in (("alone", "duet"), ("duet", "alone")):
        monkeypatch.setattr(plan, "_routes", {})
        cost[slower], cost[faster] = 2000, 1000
        calls.update(duet=0, alone=0)
        for _ in range(2 * n):
            _equal("lstm", layer(x), want)
        assert calls == {"duet": n, "alone": n}
        for _ in range(3):
            _equal("lstm", layer(x), want)
        assert calls[faster] == n + 3 and calls[slower] == n


@pytest.mark.parametrize("return_sequences", [True, False])
def test_a_small_sequential_forward_takes_the_short_path_bitwise(rng, monkeypatch,
                                                                 return_sequences):
    """The Sequential protocol's inference forward (batch-first) takes forward_into
    too, bitwise what the general path gives (lengths force that one)."""
    calls = _counting_table(monkeypatch, "lstm")
    layer = numlstm.LSTM(4, 6, num_layers=2, seed=0, return_sequences=return_sequences)
    x = rng.standard_normal((2, 5, 4)).astype(np.float32)
    y = layer.forward(x)
    assert calls == {"step": 0, "forward": 0, "forward_into": 2}
    y_general = layer.forward(x, lengths=[5, 5])
    assert calls == {"step": 0, "forward": 2, "forward_into": 2}
    assert y.shape == ((2, 5, 6) if return_sequences else (2, 6))
    np.testing.assert_array_equal(y, y_general)


def test_step_refuses_bidirectional_and_bad_input(rng):
    with pytest.raises(ValueError, match="bidirectional layer needs the whole sequence"):
        numlstm.GRU(4, 5, bidirectional=True).step(np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"x_t: expected \[B,4\]"):
        numlstm.LSTM(4, 5).step(np.zeros((1, 3)))
    for shape in ((), (2, 1, 4)):  # (arrays of the layer's dtype: the short path's checks)
        with pytest.raises(ValueError, match=r"x_t: expected \[B,4\]"):
            numlstm.LSTM(4, 5).step(np.zeros(shape, np.float32))


MODES = ["sum", "mul", "ave", None]


@pytest.mark.parametrize("mode", MODES, ids=str)
@pytest.mark.parametrize("cell", sorted(CLASSES))
def test_merge_modes_forward_and_backward(rng, cell, mode):
    """Each merge mode against the concatenated output of the same weights: y, and
    dx for the gradient the merge sends to each direction."""
    concat = _layer(cell, num_layers=2, bidirectional=True, dtype=np.float64)
    merged = _layer(cell, num_layers=2, bidirectional=True, dtype=np.float64,
                    merge_mode=mode)
    merged.load_weights(concat.state_dict())
    x = rng.standard_normal((6, 3, 4))
    lengths = np.array([6, 3, 5])
    y, _ = concat(x, training=True, lengths=lengths)
    yf, yb = y[..., :5], y[..., 5:]
    dy = rng.standard_normal(yf.shape)
    want_y, dcat = {
        "sum": (yf + yb, [dy, dy]), "mul": (yf * yb, [dy * yb, dy * yf]),
        "ave": ((yf + yb) / 2, [dy / 2, dy / 2]), None: ((yf, yb), [dy, 2 * dy])}[mode]
    dx_want, _ = concat.backward(np.concatenate(dcat, axis=-1))
    got, _ = merged(x, training=True, lengths=lengths)
    if mode is None:
        assert isinstance(got, tuple) and len(got) == 2
        for a, b in zip(got, want_y):
            assert_close(a, b, 1e-14, "y pair")
        dx, _ = merged.backward((dy, 2 * dy))
    else:
        assert got.shape == (6, 3, 5)
        assert_close(got, want_y, 1e-14, f"y ({mode})")
        dx, _ = merged.backward(dy)
    assert_close(dx, dx_want, 1e-12, f"dx ({mode})")
    for k in concat.grads:
        assert_close(merged.grads[k], concat.grads[k], 1e-12, k)


@pytest.mark.parametrize("cell", sorted(CLASSES))
def test_merge_mode_none_batch_first(rng, cell):
    """The pair of outputs comes back batch-first too, and its gradients go back."""
    time_major = _layer(cell, bidirectional=True, dtype=np.float64, merge_mode=None)
    batch_first = _layer(cell, bidirectional=True, dtype=np.float64, merge_mode=None,
                         batch_first=True)
    batch_first.load_weights(time_major.state_dict())
    x = rng.standard_normal((6, 3, 4))
    for training in (False, True):
        want, _ = time_major(x, training=training)
        got, _ = batch_first(x.transpose(1, 0, 2), training=training)
        assert isinstance(got, tuple) and len(got) == 2
        for a, b in zip(got, want):
            assert_close(a.transpose(1, 0, 2), b, 1e-14, "y pair")
    dy = [rng.standard_normal(want[0].shape) for _ in range(2)]
    dx_want, _ = time_major.backward(tuple(dy))
    dx, _ = batch_first.backward(tuple(d.transpose(1, 0, 2) for d in dy))
    assert_close(dx.transpose(1, 0, 2), dx_want, 1e-13, "dx")


@pytest.mark.parametrize("mode", ["concat", "sum", "mul", "ave"])
def test_merge_modes_in_a_model_match_finite_differences(rng, mode):
    """return_sequences=False with a merge mode: the Sequential path's gradient."""
    layer = numlstm.GRU(3, 4, bidirectional=True, merge_mode=mode, return_sequences=False,
                        dtype=np.float64, seed=1)
    x = rng.standard_normal((2, 5, 3))
    w = rng.standard_normal(layer.output_shape((2, 5, 3)))
    layer.forward(x, training=True)
    dx = layer.backward_output(w)
    eps, num = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        num[idx] = ((layer.forward(xp) * w).sum() - (layer.forward(xm) * w).sum()) / (2 * eps)
    assert_close(dx, num, 1e-7, f"dx ({mode})")


def test_merge_mode_errors():
    with pytest.raises(ValueError, match="merge_mode: expected one of"):
        numlstm.LSTM(3, 4, bidirectional=True, merge_mode="max")
    with pytest.raises(ValueError, match="pass bidirectional=True"):
        numlstm.LSTM(3, 4, merge_mode="sum")
    with pytest.raises(ValueError, match="Sequential model cannot pass on"):
        numlstm.LSTM(3, 4, bidirectional=True, merge_mode=None).output_shape((1, 2, 3))
