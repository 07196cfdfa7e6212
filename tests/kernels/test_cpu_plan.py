"""The CPU kernels' plan (kernels/cpu/plan.py): which variant of the time loops a
call runs, made from the shapes and the threads, printable."""
import numpy as np
import pytest

from numlstm.kernels.cpu import plan_for
from numlstm.kernels.cpu.plan import (INFERENCE_CHUNK_BYTES, PARALLEL_MIN_FLOPS, Plan, make_plan,
                                      split_rows)


def test_work_that_fits_one_thread_plans_no_parallel_region():
    """A step under 256 units and 2 MFLOP, all steps under 2 MFLOP: one thread."""
    p = make_plan(100, 1, 64, 64, 4, False, threads=2)
    assert p.threads == 1 and not p.rows and not p.fused
    assert str(p) == "one thread, 100 steps a chunk"
    # a step's product of 2 * B * Hp * 4 * Hp FLOP at or past the limit: two threads
    B = -(-PARALLEL_MIN_FLOPS // (2 * 128 * 4 * 128))
    assert make_plan(1, B, 8, 128, 4, False, plain=False, threads=2).threads == 2


def test_the_batch_split_for_the_plain_layer_only_and_fused_for_the_lstm_only():
    lstm = make_plan(64, 32, 64, 128, 4, True, threads=2)
    assert lstm.rows and lstm.fused and lstm.threads == 2
    assert str(lstm) == "rows x2 fused, 64 steps a chunk"
    options = make_plan(64, 32, 64, 128, 4, True, plain=False, threads=2)
    assert not options.rows and options.threads == 2 and str(options).startswith("units x2")
    gru = make_plan(64, 32, 64, 128, 3, True, threads=2)
    assert gru.rows and not gru.fused
    assert not make_plan(64, 32, 64, 128, 4, True, threads=1).rows  # one thread: no split


@pytest.mark.parametrize("B, Hp, gates, rows", [(16, 128, 4, True), (8, 128, 4, True),
                                                (4, 128, 4, True), (3, 128, 4, False),
                                                (16, 256, 4, True), (8, 256, 4, False),
                                                (16, 512, 4, False), (4, 256, 3, False)])
def test_split_rows_follows_the_cache_limits(B, Hp, gates, rows):
    """From 8 rows a thread while W_hh fits in L2 (1 MiB), from 2 while it is under
    256 KiB (H <= 128 for the LSTM)."""
    assert split_rows(B, Hp, 2, gates) == rows


def test_inference_chunks_and_training_runs_every_step():
    T, B, Hp = 4096, 64, 256
    steps = INFERENCE_CHUNK_BYTES // (B * 4 * Hp * 4)
    assert make_plan(T, B, 8, Hp, 4, False, threads=2).chunk == steps < T
    assert make_plan(T, B, 8, Hp, 4, True, threads=2).chunk == T
    assert make_plan(3, B, 8, Hp, 4, False, threads=2).chunk == 3


def test_units_threads_never_exceed_the_blocks():
    p = make_plan(64, 64, 64, 512, 4, True, plain=False, threads=8)
    assert p.threads == 8 and p.units_threads(3) == 3 and p.units_threads(0) == 1


def test_plans_are_values_a_test_can_change():
    p = make_plan(8, 4, 4, 64, 4, False, threads=2)
    forced = p._replace(threads=2, rows=True, fused=True)
    assert isinstance(forced, Plan) and forced.gate is p.gate and p.threads == 1
    assert str(forced) == "rows x2 fused, 8 steps a chunk"


def test_plan_for_pads_each_cell_as_its_kernels_do():
    """plan_for (what numlstm bench prints) plans the padded units the cell's kernels
    run: H=96 pads to 128, so B=8 takes the batch split as H=128 does."""
    assert str(plan_for("lstm", 200, 8, 40, 96, False)) == str(
        make_plan(200, 8, 40, 128, 4, False))
    assert not plan_for("rnn", 64, 64, 64, 128, True).rows  # (no batch split for the RNN)
    assert plan_for("gru", 64, 64, 64, 128, True).fused is False


def test_into_route_is_the_plans_answer_memoised_until_a_limit_changes(monkeypatch):
    """plan.into_route, memoised, answers what the plan's functions answer, over
    uneven shapes, the cells' gate counts and 1 or 2 threads: SPLIT for a streamed
    step that step_splits shares (where the cell has step_split), the inference
    chunk of a call that runs alone (runs_alone), else 0; and a changed limit
    (PARALLEL_MIN_FLOPS) changes the answers at once."""
    from numba import get_num_threads, set_num_threads

    from numlstm.kernels.cpu import plan
    before = get_num_threads()

    def want(T, B, I, Hp, gates, plain, splits):
        if T == 1 and splits and plan.step_splits(B, I, Hp, gates):
            return plan.SPLIT
        return plan.inference_chunk(T, B, Hp, gates) if plan.runs_alone(
            T, B, Hp, gates, plain) else 0

    shapes = [(T, B, I, Hp) for T in (1, 3, 100, 5000) for B in (1, 7, 64)
              for I, Hp in ((5, 32), (40, 128), (256, 1024))]
    try:
        for limit in (plan.PARALLEL_MIN_FLOPS, 1):
            monkeypatch.setattr(plan, "PARALLEL_MIN_FLOPS", limit)
            answers = set()
            for threads in sorted({1, min(2, before)}):
                set_num_threads(threads)
                for shape in shapes:
                    for gates, plain, splits in ((4, True, True), (3, True, True),
                                                 (1, False, False)):
                        args = shape + (gates, plain, splits)
                        for _ in range(2):  # (the second from the memo)
                            got = plan.into_route(*args)
                            assert got == want(*args), args
                            answers.add(got)
            assert plan.SPLIT in answers and 0 in answers and 1 in answers
            # (limit 1: nothing but T=1 runs alone)
            assert limit != 1 or answers <= {plan.SPLIT, 0, 1}
    finally:
        set_num_threads(before)


def test_the_duet_runs_small_batches_of_four_blocks_or_more_on_two_threads(monkeypatch):
    """plan.duet_runs and into_route's DUET: an LSTM call of 2 steps or more, at most
    DUET_MAX_ROWS rows, DUET_MIN_BLOCKS blocks of units or more, its input product
    within INFERENCE_CHUNK_BYTES, on two threads or more; not a step (T=1), not
    the GRU's 3 gates, not one thread."""
    from numlstm.kernels.cpu import plan
    assert plan.duet_runs(100, 1, 64, 4, 4, 2)  # T=100, B=1, H=64
    assert plan.duet_runs(200, 4, 128, 4, 6, 2)  # H=96
    assert plan.duet_runs(30, 1, 1024, 4, 64, 16)
    assert not plan.duet_runs(100, 1, 64, 4, 4, 1)  # one thread
    assert not plan.duet_runs(1, 1, 64, 4, 4, 2)  # a step
    assert not plan.duet_runs(100, 5, 64, 4, 4, 2)  # 5 rows
    assert not plan.duet_runs(100, 1, 64, 4, 3, 2)  # H <= 48: 3 blocks
    assert not plan.duet_runs(100, 1, 64, 3, 4, 2)  # the GRU
    steps = plan.INFERENCE_CHUNK_BYTES // (4 * 4 * 128 * 4)
    assert plan.duet_runs(steps, 4, 128, 4, 8, 2)
    assert not plan.duet_runs(steps + 1, 4, 128, 4, 8, 2)
    from numba import get_num_threads
    many = get_num_threads() > 1
    monkeypatch.setattr(plan, "_routes", {})  # (a fresh Trial: its first calls are duets)
    assert (plan.into_route(100, 1, 64, 64, 4, blocks=4) == plan.DUET) == many
    route, trial = plan.into_route(100, 1, 64, 64, 4, blocks=4, trial=True)
    assert (trial.routes == (plan.DUET, 100)) if many else (route, trial) == (100, None)
    # a step too large for one thread is a duet without a trial
    route, trial = plan.into_route(30, 1, 256, 1024, 4, blocks=64, trial=True)
    assert (route, trial) == ((plan.DUET, None) if many else (0, None))
    assert plan.into_route(100, 1, 64, 64, 4) != plan.DUET  # (a cell without one)


def test_a_trial_times_a_run_of_each_route_then_runs_the_faster_and_times_them_again(
        monkeypatch):
    """plan.Trial: TRIAL_CALLS + 1 calls of the first route, as many of the second,
    the first call of each run untimed; then the route of the shorter best time,
    for TRIAL_AGAIN calls, then the trial again. A time noted for a route the
    trial did not answer (another thread's call) counts for nothing."""
    from numlstm.kernels.cpu import plan
    monkeypatch.setattr(plan, "TRIAL_CALLS", 3)
    monkeypatch.setattr(plan, "TRIAL_AGAIN", 10)

    def run(trial, times):
        """Call the trial as forward_into does, each route taking times[route] ns
        (a list: the calls' times in turn); the routes taken."""
        taken = []
        for _ in range(sum(len(v) for v in times.values())):
            route = trial.route()
            taken.append(route)
            trial.note(route, times[route].pop(0))
        return taken

    trial = plan.Trial(plan.DUET, 100)
    # the duet's first call is slow (it compiles) and untimed; its best is 50, the
    # one thread's 60: the duet wins
    taken = run(trial, {plan.DUET: [10**9, 70, 50, 80], 100: [10**9, 60, 65, 61]})
    assert taken == [plan.DUET] * 4 + [100] * 4
    assert trial.best == [50, 60] and trial.chosen == plan.DUET
    assert [trial.route() for _ in range(10)] == [plan.DUET] * 10
    # then both are timed again: now the one thread is faster (a first call of a
    # run is not timed, however fast)
    taken = run(trial, {plan.DUET: [1, 90, 95, 99], 100: [10**9, 70, 75, 71]})
    assert taken == [plan.DUET] * 4 + [100] * 4 and trial.chosen == 100
    assert trial.best == [90, 70]
    assert [trial.route() for _ in range(10)] == [100] * 10
    # a time for the route not answered is not taken
    trial = plan.Trial(plan.DUET, 100)
    trial.note(100, 1)
    assert trial.route() == plan.DUET and trial.best == [np.inf, np.inf]
    # a tie goes to the first route
    trial = plan.Trial(plan.DUET, 100)
    run(trial, {plan.DUET: [9, 5, 5, 5], 100: [9, 5, 5, 5]})
    assert trial.chosen == plan.DUET
