"""Several Python threads calling layers at once, and bitwise determinism (run to run,
and thread count to thread count) on the CPU."""
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest

import numlstm

# H=300 takes the multi-threaded path of the kernels (small steps run on one thread).
LAYERS = [("LSTM", 300, np.float32), ("GRU", 300, np.float32), ("RNN", 40, np.float32),
          ("LSTM", 24, np.float64), ("GRU", 24, np.float64)]


def _layers():
    return [getattr(numlstm, cell)(8, H, num_layers=2, bidirectional=True, dtype=dtype,
                                   seed=k) for k, (cell, H, dtype) in enumerate(LAYERS)]


def _inputs(rng, dtype):
    return rng.standard_normal((12, 3, 8)).astype(dtype), np.array([12, 5, 9])


def _train(layer, x, lengths):
    """Forward and backward of one layer -> (y, dx, grads)."""
    layer.zero_grad()
    y, _ = layer(x, training=True, lengths=lengths)
    dx, _ = layer.backward(np.cos(y))
    return y, dx, {k: g.copy() for k, g in layer.grads.items()}


def _same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    elif isinstance(a, tuple):
        for u, v in zip(a, b):
            _same(u, v)
    else:
        np.testing.assert_array_equal(a, b)


def test_threads_calling_the_same_and_different_layers(rng):
    layers = _layers()
    inputs = [_inputs(rng, dtype) for _, _, dtype in LAYERS for _ in range(2)]
    jobs = [(i, 2 * i + j) for i in range(len(LAYERS)) for j in range(2)] * 6
    want = {job: layers[job[0]](inputs[job[1]][0], lengths=inputs[job[1]][1])[0]
            for job in set(jobs)}

    def run(job):
        i, k = job
        return job, layers[i](inputs[k][0], lengths=inputs[k][1])[0]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, jobs))
    assert len(results) == len(jobs)
    for job, y in results:
        np.testing.assert_array_equal(y, want[job], err_msg=str(job))


def test_threads_training_different_layers(rng):
    """Each thread trains its own layer; gradients are what a lone call gives."""
    data = [_inputs(rng, dtype) for _, _, dtype in LAYERS]
    want = [_train(layer, *d) for layer, d in zip(_layers(), data)]
    layers = _layers()
    with ThreadPoolExecutor(len(layers)) as pool:
        got = list(pool.map(lambda k: [_train(layers[k], *data[k]) for _ in range(3)][-1],
                            range(len(layers))))
    for g, w in zip(got, want):
        _same(g, w)


def test_the_workqueue_threading_layer_is_serialised():
    """Numba's workqueue layer aborts the process on concurrent calls; numlstm holds
    a lock for it, so the same threads finish with the right answers: whole
    sequences, streaming steps large enough to be split among the threads (B=64,
    H=300: plan.step_splits), which without the lock aborted, and the small calls
    that run as duets (B=2, H=64: plan.duet_runs)."""
    code = textwrap.dedent("""
        import numpy as np, numba, numlstm
        from concurrent.futures import ThreadPoolExecutor
        from numlstm.kernels.cpu.plan import step_splits
        assert step_splits(64, 8, 320, 4) and step_splits(64, 8, 320, 3)
        rng = np.random.default_rng(0)
        layers = [numlstm.LSTM(8, 300, seed=1), numlstm.GRU(8, 300, seed=2)]
        xs = [rng.standard_normal((10, 4, 8)).astype(np.float32) for _ in range(4)]
        steps = [rng.standard_normal((64, 8)).astype(np.float32) for _ in range(4)]
        want = {(i, j): layers[i](xs[j])[0] for i in range(2) for j in range(4)}
        want_steps = {(i, j): layers[i].step(steps[j])[0] for i in range(2) for j in range(4)}
        small = numlstm.LSTM(8, 64, seed=3)
        duets = [rng.standard_normal((12, 2, 8)).astype(np.float32) for _ in range(4)]
        want_duets = [small(x)[0] for x in duets]
        with ThreadPoolExecutor(8) as ex:
            res = list(ex.map(lambda k: ((k % 2, k % 4), layers[k % 2](xs[k % 4])[0]),
                              range(64)))
            res_steps = list(ex.map(
                lambda k: ((k % 2, k % 4), layers[k % 2].step(steps[k % 4])[0]), range(200)))
            res_duets = list(ex.map(lambda k: (k % 4, small(duets[k % 4])[0]), range(200)))
        assert all(np.array_equal(want_duets[j], y) for j, y in res_duets)
        assert all(np.array_equal(want[key], y) for key, y in res)
        assert all(np.array_equal(want_steps[key], y) for key, y in res_steps)
        print(numba.threading_layer())
    """)
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "workqueue"


def test_the_same_seed_gives_bitwise_the_same_training_step(rng):
    data = [_inputs(rng, dtype) for _, _, dtype in LAYERS]
    first = [_train(layer, *d) for layer, d in zip(_layers(), data)]
    again = [_train(layer, *d) for layer, d in zip(_layers(), data)]
    for a, b in zip(first, again):
        _same(a, b)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 threads")
def test_thread_count_does_not_change_a_bit(rng):
    """Each thread owns whole hidden units and whole output tiles, and every sum
    runs in a fixed order, so the thread count changes no result."""
    data = [_inputs(rng, dtype) for _, _, dtype in LAYERS]
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = [_train(layer, *d) for layer, d in zip(_layers(), data)]
        numba.set_num_threads(2)
        two = [_train(layer, *d) for layer, d in zip(_layers(), data)]
    finally:
        numba.set_num_threads(saved)
    for a, b in zip(one, two):
        _same(a, b)


def test_a_seeded_model_trains_bitwise_the_same(rng):
    ids = rng.integers(0, 9, (6, 7))

    def run():
        model = numlstm.Sequential([numlstm.Embedding(9, 5, seed=1),
                                    numlstm.LSTM(5, 16, dropout=0.2, num_layers=2, seed=2),
                                    numlstm.Dropout(0.3, seed=3), numlstm.Dense(16, 9, seed=4)],
                                   seed=5)
        model.compile("adam", "cross_entropy", lr=0.01)
        history = model.fit(ids, ids, epochs=3, batch_size=2, verbose=0)
        return model.get_weights(), history["loss"]

    (w1, l1), (w2, l2) = run(), run()
    _same(w1, w2)
    assert l1 == l2
