"""The thread policy (kernels/cpu/threads.py): how many threads a call takes, the
gate that sends parallel work to one thread after a lagged region, the bounded
OpenMP spin, and the FMA-peak loop that is the benchmarks' roof. Not timed: each
test checks a decision or a count."""
import os
import subprocess
import sys
import textwrap
import time

import numba
import numpy as np
import pytest

import numlstm
from numlstm.kernels.cpu import lstm as cpu_lstm
from numlstm.kernels.cpu import lstm_tiled, products
from numlstm.layers import CELLS
from numlstm.kernels.cpu import peak, threads

from helpers import lstm_weights


def _regions():
    return int(threads.POLICY.gate()[threads.REGIONS])


def _no_hold():
    g = threads.POLICY.gate()
    g[threads.SERIAL_UNTIL] = 0
    g[threads.HOLD] = 0


# -- work that fits one thread ------------------------------------------------------------
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 64, 128), (100, 1, 64, 64), (3, 2, 5, 7)])
def test_a_small_call_enters_no_parallel_region(rng, monkeypatch, cell, T, B, I, H):
    """Inference, a training step and a streaming step at the smallest shapes run
    every loop, product and layout pass on the calling thread: the gate counts
    no region. (On a busy machine a region waits for its slowest thread.) The
    exception by design: an LSTM call that plan.duet_runs takes (here T=100, B=1,
    H=64) is one region for all its steps, whose threads take over a late
    peer's work (duet.steps_duet): a fresh plan.Trial's first calls run it."""
    from numlstm import dispatch
    from numlstm.kernels.cpu import plan
    monkeypatch.setattr(plan, "_routes", {})
    _no_hold()
    layer = CELLS[cell](I, H, seed=0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    layer(x)  # compile first: the count is about the calls themselves
    y, _ = layer(x, training=True)
    layer.backward(np.ones_like(y))
    p = layer._packs.get(dispatch.BACKENDS["cpu"], layer._params, layer.spec)[0]
    _no_hold()  # (the first calls' regions may have lagged)
    duet = (cell == "lstm" and threads.POLICY.call_threads() > 1
            and plan.into_route(T, B, I, p.Hp, 4, blocks=p.w_fwd.shape[0]) == plan.DUET)
    assert duet == (cell == "lstm" and T == 100 and threads.POLICY.call_threads() > 1
                    and numba.get_num_threads() > 1)
    before = _regions()
    layer(x)
    assert _regions() - before == (1 if duet else 0)
    before = _regions()
    y, _ = layer(x, training=True)
    layer.backward(np.ones_like(y))
    layer.step(x[0])
    assert _regions() == before


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2 or threads.cores_available() < 2,
                    reason="needs 2 threads and 2 CPUs")
def test_a_large_call_enters_parallel_regions_and_a_hold_keeps_it_on_one_thread(rng):
    """The count above can fail: a call with 16 MFLOP steps enters regions. With
    the gate holding, the same call enters none, and every value is bitwise the
    same (each unit, row and block is computed by one thread either way)."""
    _no_hold()
    layer = numlstm.LSTM(20, 256, seed=0)
    x = rng.standard_normal((3, 32, 20)).astype(np.float32)
    dy = rng.standard_normal((3, 32, 256)).astype(np.float32)

    def run():
        layer.zero_grad()
        y, state = layer(x, training=True)
        dx, _ = layer.backward(dy)
        return [y, *state, dx, *(g.copy() for g in layer.grads.values())]
    run()
    _no_hold()  # (a busy machine, such as another test process, may have started one)
    before = _regions()
    many = run()
    assert _regions() > before
    g = threads.POLICY.gate()
    g[threads.SERIAL_UNTIL] = time.monotonic_ns() + 60_000_000_000
    try:
        assert threads.POLICY.call_threads() == 1
        before = _regions()
        one = run()
        assert _regions() == before
    finally:
        _no_hold()
    for a, b in zip(many, one):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2 or threads.cores_available() < 2,
                    reason="needs 2 threads and 2 CPUs")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_large_streaming_step_runs_on_the_plans_threads(rng, cell):
    """A streaming step that plan.step_splits shares (B=64, I=24, H=320: 56 MFLOP of
    the LSTM's products, 42 of the GRU's) runs as one parallel region on the
    plan's threads, and gives bitwise what the one-thread step gives (held on one
    thread by the gate); a smaller one (B=2) enters no region."""
    from numlstm.kernels.cpu.plan import step_splits
    gates = {"lstm": 4, "gru": 3}[cell]
    assert step_splits(64, 24, 320, gates) and not step_splits(2, 24, 320, gates)
    layer = CELLS[cell](24, 320, seed=0)
    x = rng.standard_normal((64, 24)).astype(np.float32)
    state = layer.step(x)[1]  # (compiles)
    _no_hold()
    before = _regions()
    many = layer.step(x, state)
    assert _regions() > before
    small = x[:2]
    small_state = layer.step(small)[1]
    before = _regions()
    layer.step(small, small_state)
    assert _regions() == before
    g = threads.POLICY.gate()
    g[threads.SERIAL_UNTIL] = time.monotonic_ns() + 60_000_000_000
    try:
        one = layer.step(x, state)
    finally:
        _no_hold()
    np.testing.assert_array_equal(many[0], one[0])
    pairs = zip(many[1], one[1]) if cell == "lstm" else [(many[1], one[1])]
    for a, b in pairs:
        np.testing.assert_array_equal(a, b)


def test_the_time_loop_checks_the_gate_every_step(rng):
    """forward_tiled with two threads a step: with no hold every step is a timed
    region (until one lags); with a hold running none is; the outputs are bitwise
    the same."""
    T, B, I, H = 5, 3, 4, 128
    w_ih, w_hh, b_ih, b_hh = lstm_weights(rng, I, H, np.float32)
    packed = cpu_lstm.pack_lstm_cpu(w_ih, w_hh, b_ih, b_hh)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    Hp = packed.Hp
    xw = np.empty((T, B, 4 * Hp), np.float32)
    products.matmul_rows(x.reshape(T * B, I), packed.w_in, xw.reshape(T * B, -1),
                         packed.bias, False, 0, T * B, 0, packed.w_in.shape[0])
    outs = []
    for hold in (False, True):
        gate = threads.new_gate()
        if hold:
            gate[threads.SERIAL_UNTIL] = time.monotonic_ns() + 60_000_000_000
        hbuf = np.zeros((2, B, Hp), np.float32)
        c = np.zeros((B, Hp), np.float32)
        y = np.empty((T, B, Hp), np.float32)
        lstm_tiled.forward_tiled(xw.copy(), packed.w_fwd, hbuf, c, y,
                                  np.empty((1, 1, 1), np.float32),
                                  np.empty((B, 4 * Hp), np.float32), np.full(B, T, np.int64),
                                  False, False, 2, packed.clip, packed.coupled,
                                  packed.gclip, packed.acts, gate)
        if hold:
            assert gate[threads.REGIONS] == 0
        else:  # every step, unless a busy machine made one lag (then a hold follows)
            assert gate[threads.REGIONS] == T or 1 <= gate[threads.LAGGED] <= gate[
                threads.REGIONS]
        outs.append((y, c, hbuf))
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


def test_the_products_parallel_tasks_equal_one_thread(rng):
    """matmul_tasks (row chunks x blocks shared among the threads) against the
    one-thread product, bitwise, at uneven shapes above and at the tile edges."""
    for M, K, nblk in [(1, 3, 1), (7, 65, 2), (131, 300, 3), (600, 1030, 2)]:
        A = rng.standard_normal((M, K)).astype(np.float32)
        W = rng.standard_normal((nblk, K, products.CB)).astype(np.float32)
        init = rng.standard_normal((1, nblk * products.CB)).astype(np.float32)
        one = np.empty((M, nblk * products.CB), np.float32)
        products.matmul_rows(A, W, one, init, False, 0, M, 0, nblk)
        rows, chunks = products.row_chunks(M, nblk, 2)
        many = np.empty_like(one)
        gate = threads.new_gate()
        products.matmul_tasks(A, W, many, init, False, rows, chunks, gate)
        np.testing.assert_array_equal(one, many)
        np.testing.assert_allclose(one, init + A @ np.concatenate(list(W), axis=1), rtol=1e-4,
                                   atol=1e-4 * np.sqrt(K))


# -- the gate -----------------------------------------------------------------------------
def test_a_lagged_region_starts_a_hold_that_doubles_and_resets():
    gate = threads.new_gate()
    start = threads.clock_ns()
    gate[threads.FINISH] = start + 20_000
    gate[threads.FINISH + 1] = start + 20_000 + 4_000_000  # a thread a tick late
    assert threads.region_done(gate, start)
    assert not threads.parallel_ok(gate)
    assert gate[threads.LAGGED] == 1 and gate[threads.REGIONS] == 1
    assert gate[threads.FINISH] == gate[threads.FINISH + 1] == 0  # ready for the next
    hold = gate[threads.SERIAL_UNTIL] - threads.clock_ns()
    assert 0 < hold <= threads.HOLD_MIN_NS
    assert gate[threads.HOLD] == 2 * threads.HOLD_MIN_NS
    # lag again: the hold doubles, up to its cap
    gate[threads.FINISH], gate[threads.FINISH + 1] = start, start + 4_000_000
    assert threads.region_done(gate, start)
    assert gate[threads.HOLD] == 4 * threads.HOLD_MIN_NS
    gate[threads.HOLD] = threads.HOLD_MAX_NS
    gate[threads.FINISH], gate[threads.FINISH + 1] = start, start + 4_000_000
    assert threads.region_done(gate, start)
    assert gate[threads.HOLD] == threads.HOLD_MAX_NS
    # once the hold is over, a balanced region ends it, and the next hold starts short
    gate[threads.SERIAL_UNTIL] = threads.clock_ns() - 1
    assert threads.parallel_ok(gate)
    now = threads.clock_ns()
    gate[threads.FINISH], gate[threads.FINISH + 1] = now + 10_000, now + 12_000
    assert not threads.region_done(gate, now)
    assert gate[threads.SERIAL_UNTIL] == 0 and gate[threads.HOLD] == 0


def test_an_uneven_region_under_the_lag_bounds_is_not_lag():
    """A spread below LAG_MIN_NS (a thread with one block more), or shorter than
    the first thread's time in a long region (a tick met once in a long loop), is
    not worth a hold."""
    gate = threads.new_gate()
    start = threads.clock_ns()
    gate[threads.FINISH], gate[threads.FINISH + 1] = start + 100_000, start + 900_000
    assert not threads.region_done(gate, start)
    gate[threads.FINISH], gate[threads.FINISH + 1] = start + 9_000_000, start + 10_000_000
    assert not threads.region_done(gate, start)
    # a thread with no share of the region (no mark) is not a late one
    gate[threads.FINISH + 1] = start + 50_000
    assert not threads.region_done(gate, start)
    assert threads.parallel_ok(gate)


@numba.njit(parallel=True)
def _claim_all(counter, seen, P):
    for p in numba.prange(P):
        task = threads.claim(counter)
        while task < seen.shape[0]:
            seen[task] += 1
            task = threads.claim(counter)


def test_claimed_tasks_go_to_one_thread_each():
    """threads.claim hands out each task once, whatever the threads racing for them."""
    for P in (1, 2, 5):
        counter, seen = np.zeros(1, np.int64), np.zeros(10_007, np.int64)
        _claim_all(counter, seen, P)
        np.testing.assert_array_equal(seen, 1)
        assert counter[0] == seen.shape[0] + P  # (each thread's last claim finds none)


def test_a_split_that_one_thread_would_have_beaten_starts_a_hold():
    """split_done: a region whose threads took tasks as they came lagged when it lasted
    longer than its busiest thread's rate would take for all the tasks alone, by
    SPLIT_LOSS (a thread arrived after the others had done everything), even with
    its threads' finishing times close; a region shorter than that is no lag,
    whatever the share each thread did."""
    gate = threads.new_gate()
    now = threads.clock_ns()
    # 2 ms so far; one thread did all 10 tasks in 0.9 ms, the other came too late
    work = np.array([[10, 900_000], [0, 0]], np.int64)
    gate[threads.FINISH], gate[threads.FINISH + 1] = now - 1_000_000, now - 990_000
    assert threads.split_done(gate, now - 2_000_000, work)
    assert not threads.parallel_ok(gate)
    assert gate[threads.LAGGED] == 1 and gate[threads.REGIONS] == 1
    assert gate[threads.FINISH] == gate[threads.FINISH + 1] == 0
    # (times of tens of ms below, so that this process being descheduled for a few ms
    # between reading the clock and the call, as under a parallel test run, is noise)
    # the same tasks shared evenly: 50 ms of an 80 ms one-thread time is a gain
    gate = threads.new_gate()
    work = np.array([[5, 40_000_000], [5, 40_000_000]], np.int64)
    assert not threads.split_done(gate, threads.clock_ns() - 50_000_000, work)
    # and uneven (a thread a little late took fewer): still shorter than one thread
    work = np.array([[7, 42_000_000], [3, 18_000_000]], np.int64)
    assert not threads.split_done(gate, threads.clock_ns() - 50_000_000, work)
    assert threads.parallel_ok(gate) and gate[threads.REGIONS] == 2
    # a split slower than one thread: 95 ms for 80 ms of one thread's work (more than
    # SPLIT_LOSS times it), and one within the noise (80 ms)
    work = np.array([[6, 48_000_000], [4, 32_000_000]], np.int64)
    assert not threads.split_done(gate, threads.clock_ns() - 80_000_000, work)
    assert threads.split_done(gate, threads.clock_ns() - 95_000_000, work)


def test_the_first_split_after_a_hold_counts_only_a_ticks_lag():
    """The first region after a hold wakes threads that slept through it: a late one
    there is no lag for split_done (the hold ends but keeps its length, so a lost
    region next doubles it, and a clean one resets it); a tick's lag still is."""
    work = np.array([[10, 900_000], [0, 0]], np.int64)  # one thread did everything
    for then in ("lost", "clean"):
        gate = threads.new_gate()
        now = threads.clock_ns()
        gate[threads.SERIAL_UNTIL], gate[threads.HOLD] = now - 3_000_000, 2 * threads.HOLD_MIN_NS
        assert not threads.split_done(gate, now - 2_000_000, work)
        assert gate[threads.SERIAL_UNTIL] == 0 and gate[threads.HOLD] == 2 * threads.HOLD_MIN_NS
        assert threads.parallel_ok(gate)
        if then == "lost":
            assert threads.split_done(gate, threads.clock_ns() - 2_000_000, work)
            assert gate[threads.HOLD] == 4 * threads.HOLD_MIN_NS
        else:
            even = np.array([[5, 45_000_000], [5, 45_000_000]], np.int64)  # (as above)
            assert not threads.split_done(gate, threads.clock_ns() - 50_000_000, even)
            assert gate[threads.HOLD] == 0 and gate[threads.SERIAL_UNTIL] == 0
    gate = threads.new_gate()
    now = threads.clock_ns()
    gate[threads.SERIAL_UNTIL] = now - 10_000_000
    gate[threads.FINISH], gate[threads.FINISH + 1] = now - 5_000_000, now  # a tick late
    assert threads.split_done(gate, now - 6_000_000, work)


def test_a_shared_region_longer_than_its_work_starts_a_hold():
    """shared_done: a region whose threads share every step lagged when it lasted more
    than SPLIT_LOSS times its threads' work together (one waited on a peer the OS
    had taken, longer than the work), or when a thread stalled (and went on
    alone), after a hold too; under that time (a late peer, its shares taken
    over), or by its time in the first region after a hold (its peer slept
    through the hold), it did not. (Times of tens of ms: this process being
    descheduled for a few ms between reading the clock and the call is noise.)"""
    gate = threads.new_gate()
    ms = 1_000_000
    # 50 ms so far, 60 ms of work: two threads sharing it
    assert not threads.shared_done(gate, threads.clock_ns() - 50 * ms, 60 * ms, False)
    # 80 ms so far, 78 ms of work: one thread did nearly all of it, the other came late
    assert not threads.shared_done(gate, threads.clock_ns() - 80 * ms, 78 * ms, False)
    assert threads.parallel_ok(gate) and gate[threads.REGIONS] == 2
    # 90 ms so far for 50 ms of work: a wait longer than the work's tenth
    assert threads.shared_done(gate, threads.clock_ns() - 90 * ms, 50 * ms, False)
    assert not threads.parallel_ok(gate) and gate[threads.LAGGED] == 1
    # the first region after the hold: not lagged by its time; it ends the hold
    gate[threads.SERIAL_UNTIL] = threads.clock_ns() - 1
    assert not threads.shared_done(gate, threads.clock_ns(), 0, False)
    assert threads.parallel_ok(gate) and gate[threads.SERIAL_UNTIL] == 0
    assert gate[threads.LAGGED] == 1 and gate[threads.REGIONS] == 4
    # a stall (a thread went on alone) is a lag, after a hold too, whatever the time
    for hold_before in (False, True):
        if hold_before:
            gate[threads.SERIAL_UNTIL] = threads.clock_ns() - 1
        assert threads.shared_done(gate, threads.clock_ns() - 50 * ms, 60 * ms, True)
        assert not threads.parallel_ok(gate)
        gate[threads.SERIAL_UNTIL] = 0
    assert gate[threads.LAGGED] == 3 and gate[threads.REGIONS] == 6


def test_slots_are_swapped_by_one_thread_each():
    """swap_slot, the duet's claim: of threads swapping slots from the same values at
    once, exactly one wins each slot; load_slot and store_slot read and write
    them (10,007 slots, 2 and 5 threads racing)."""
    from numba import njit, prange

    @njit(parallel=True)
    def race(slots, wins, P):
        for p in prange(P):
            for i in range(slots.shape[0]):
                if threads.swap_slot(slots, i, 0, p + 1):
                    wins[p, i] = 1
                    threads.store_slot(slots, i, threads.load_slot(slots, i) + 100)

    for P in (2, 5):
        slots = np.zeros(10_007, np.int64)
        wins = np.zeros((P, slots.size), np.int64)
        race(slots, wins, P)
        assert (wins.sum(axis=0) == 1).all()
        winner = wins.argmax(axis=0)
        np.testing.assert_array_equal(slots, winner + 101)


def test_the_clock_is_the_monotonic_clock():
    a = time.monotonic_ns()
    b = threads.clock_ns()
    c = time.monotonic_ns()
    assert a <= b <= c


# -- the CPUs a process may use ----------------------------------------------------------
def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_cgroup_v2_quota_caps_the_threads(tmp_path):
    _write(tmp_path / "a" / "cpu.max", "max 100000\n")
    _write(tmp_path / "a" / "b" / "cpu.max", "150000 100000\n")
    proc = "0::/a/b\n"
    assert threads.cores_available({0, 1, 2, 3}, str(tmp_path), proc) == 2  # 1.5 CPUs -> 2
    _write(tmp_path / "a" / "cpu.max", "50000 100000\n")  # a parent's quota binds too
    assert threads.cores_available({0, 1, 2, 3}, str(tmp_path), proc) == 1
    assert threads.cores_available({0, 1, 2, 3}, str(tmp_path / "none"), proc) == 4
    assert threads.cores_available({2}, str(tmp_path / "none"), proc) == 1


def test_a_cgroup_v1_quota_caps_the_threads(tmp_path):
    _write(tmp_path / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "300000\n")
    _write(tmp_path / "cpu,cpuacct" / "job" / "cpu.cfs_period_us", "100000\n")
    proc = "4:memory:/job\n3:cpu,cpuacct:/job\n"
    assert threads.cores_available(range(8), str(tmp_path), proc) == 3
    _write(tmp_path / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "-1\n")  # no quota
    assert threads.cores_available(range(8), str(tmp_path), proc) == 8


def test_the_policy_takes_the_smallest_of_numba_and_the_cores():
    policy = threads.Policy(cores=lambda: 1)
    assert policy.limit() == 1
    policy = threads.Policy(cores=lambda: 64)
    assert policy.limit() == numba.get_num_threads()
    calls = []
    now = [0.0]
    policy = threads.Policy(refresh=1.0, cores=lambda: calls.append(1) or 2,
                            clock=lambda: now[0])
    policy.limit()
    policy.limit()
    assert len(calls) == 1  # read again only after `refresh` seconds
    now[0] = 2.0
    policy.limit()
    assert len(calls) == 2


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or threads.cores_available() < 2,
                    reason="needs sched_setaffinity and 2 CPUs")
def test_a_process_pinned_to_one_cpu_runs_one_thread():
    code = textwrap.dedent("""
        import os
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        import numpy as np, numlstm
        from numlstm.kernels.cpu import threads
        layer = numlstm.LSTM(20, 256, seed=0)
        x = np.zeros((3, 32, 20), np.float32)
        layer(x)
        before = int(threads.POLICY.gate()[threads.REGIONS])
        layer(x)
        print(threads.POLICY.limit(), int(threads.POLICY.gate()[threads.REGIONS]) - before)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "0"]


# -- OpenMP's idle threads ----------------------------------------------------------------
def test_idle_openmp_threads_do_not_keep_a_core():
    """Between calls, Numba's worker threads spin for a bounded time and then sleep
    (GOMP_SPINCOUNT, set as the layer loads): over calls spaced by sleeps, the
    process uses far less CPU than wall time (with libgomp's default spin, the
    worker spins through the sleeps: CPU time about the wall time)."""
    code = textwrap.dedent("""
        import os, time
        import numpy as np
        import numlstm
        from numlstm.kernels.cpu import products as K, sequence
        assert "GOMP_SPINCOUNT" not in os.environ
        a = np.random.rand(2000, 512).astype(np.float32)
        out = np.empty((512, 2000), np.float32)
        K.transpose(a, out, sequence.NO_MASK)
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(50):
            K.transpose(a, out, sequence.NO_MASK)
            time.sleep(0.004)
        print(time.process_time() - c0, time.perf_counter() - w0)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env["NUMBA_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    cpu, wall = map(float, out.stdout.split())
    assert cpu < 0.6 * wall, (cpu, wall)


def test_the_users_openmp_setting_is_left_alone():
    code = ("import os, numlstm; print(os.environ.get('GOMP_SPINCOUNT'), "
            "os.environ.get('OMP_WAIT_POLICY'))")
    env = dict(os.environ, GOMP_SPINCOUNT="12345")
    env.pop("OMP_WAIT_POLICY", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.stdout.split() == ["12345", "None"], out.stderr[-2000:]


# -- the roof -----------------------------------------------------------------------------
def test_the_fma_loop_computes_its_recurrence():
    """n iterations of acc = acc * a + b on each accumulator (start (j+1)/ACC), the
    first lanes summed: the loop does the arithmetic it is counted for."""
    a, b, n = np.float32(0.75), np.float32(0.125), 37
    acc = np.array([(j + 1) / peak.ACC for j in range(peak.ACC)], np.float64)
    for _ in range(n):
        acc = acc * float(a) + float(b)
    assert peak._one_thread(n, a, b) == pytest.approx(acc.sum(), rel=1e-5)
    out = np.empty(2, np.float32)
    peak._all_threads(n, a, b, out)
    np.testing.assert_allclose(out, acc.sum(), rtol=1e-5)


def test_fma_peak_is_a_rate_per_thread_count():
    one = peak.fma_peak(threads=1, seconds=0.01, repeats=2)
    assert np.isfinite(one) and one > 0
    assert peak.FLOPS_PER_ITERATION == 2 * peak.LANES * peak.ACC


def test_thread_ids_past_the_gates_slots_are_ignored():
    gate = threads.new_gate()
    threads.finished(gate, threads.MAX_THREADS + 5)  # (a 100-core machine's thread)
    assert not gate[threads.FINISH:].any()
    start = threads.clock_ns()
    gate[threads.FINISH + 3] = start + 5_000_000  # a thread id above P still counts
    gate[threads.FINISH] = start + 10_000
    assert threads.region_done(gate, start)


def test_the_step_loops_kernels_count_no_references():
    """The kernels a time loop calls every step, and the thread gate's helpers, are
    compiled without Numba's reference counting (jit.BORROW): their callers hold
    the arrays. With it, each call and each view made atomic updates of counters
    that both threads of a parallel region share (jit.py's docstring has the
    cost)."""
    from numlstm.kernels.cpu import duet, gru_tiled, lstm_tiled, microkernel, products
    per_step = [lstm_tiled.fwd_pointwise, lstm_tiled._fwd_step, lstm_tiled.forward_tiled,
                lstm_tiled._matmul_xh, lstm_tiled.forward_rows, lstm_tiled.step_units,
                lstm_tiled._bwd_pointwise, lstm_tiled._bwd_step,
                gru_tiled._fwd_pointwise, gru_tiled.forward_rows, duet._duet_half,
                duet._duet_region, products.matmul_rows, microkernel.tile_block,
                threads.claim, threads.finished, threads.region_done]
    assert [f.py_func.__name__ for f in per_step
            if f.targetoptions.get("_nrt", True)] == []
    # (and the loops that allocate their buffers keep it)
    assert lstm_tiled.steps_state.targetoptions.get("_nrt", True)
