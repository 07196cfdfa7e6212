"""How one call of a recurrent layer runs on the CPU: the plan, and the measured
limits it is made from.

A Plan says which variant of the time loops runs: on how many threads, whether
the threads share out the batch or the hidden units, whether the LSTM projects
the inputs inside its loop, how many steps an inference call projects at a
time, below what size layout copies stay in NumPy, and the thread policy's gate
(threads.py) that the loops check. make_plan() makes one from the shapes, the cell,
the options and the machine (Numba's thread count, which the thread policy has
set for the call: at most the CPUs this process may use). The kernels take it
as an argument, so a test or a benchmark picks a variant by passing a plan
(make_plan(...)._replace(rows=True)), and str(plan) says which one ran.

Dimensions: T steps, B batch, I input features, Hp hidden units (padded); gates:
gate rows per hidden unit (LSTM 4, GRU 3, RNN 1).
"""
from typing import NamedTuple

import numpy as np

from .threads import POLICY, numba_threads

# A step runs on one thread when it is small on both counts: two threads win from
# 256 hidden units (W_hh is then too large for one core's caches, even at B=1) or
# from 2 MFLOP a step (measured on 2 cores; below, the barrier costs more).
PARALLEL_MIN_UNITS = 256
PARALLEL_MIN_FLOPS = 2_000_000
STEP_SPLIT_MIN_FLOPS = 12_000_000  # (step_splits)
STEP_SPLIT_MIN_BYTES = 4 << 20  # (step_splits)
ROW_SPLIT_MAX_BYTES = 1 << 20  # the largest W_hh (float32) the rows split runs
ROW_SPLIT_SMALL_BYTES = 1 << 18  # a W_hh this small takes the rows split from 2 rows a thread
FUSED_MIN_ROWS = 32  # (fuse_input)
# The duet (duet_runs): at most this many rows, and from this many blocks of 16 units.
DUET_MAX_ROWS = 4
DUET_MIN_BLOCKS = 4
# Inference projects and runs this many bytes of steps at a time, so the
# projected inputs stay in cache instead of making a T*B*4H buffer (512 MiB at
# T=1024, B=128, H=256).
INFERENCE_CHUNK_BYTES = 4 << 20
# Layout copies (transposes, blocks) of at most this many elements use NumPy: no
# parallel region's few microseconds.
SMALL_COPY = 1 << 15


class Plan(NamedTuple):
    """How one call runs: make_plan() makes it, the kernels read it.

    threads: the time loop's threads. With rows, each runs its rows of the batch
        through all the steps, in one parallel region; else each step's hidden
        units are shared among units_threads(blocks) threads, one parallel
        region a step (one thread: no parallel region at all).
    rows: the batch split (forward_rows, backward_rows) rather than the units
        split; the plain layer's only (no projection, recurrent dropout,
        zoneout or peepholes).
    fused: with rows, the LSTM projects x[t] inside the loop, with the recurrent
        product (lstm_tiled._matmul_xh), instead of in one product before it.
    chunk: the steps an inference call projects and runs at a time (training:
        all T), so that the projected inputs stay in cache.
    small_copy: layout copies of at most this many elements use NumPy.
    gate: the thread policy's gate (threads.py), in which the parallel loops note
        their threads' finishing times and which they check before each region.
    """
    threads: int
    rows: bool
    fused: bool
    chunk: int
    small_copy: int
    gate: np.ndarray

    def units_threads(self, blocks):
        """The units split's threads for a loop over `blocks` blocks of units."""
        return max(1, min(self.threads, blocks))

    def __str__(self):
        if self.rows:
            split = f"rows x{self.threads}" + (" fused" if self.fused else "")
        else:
            split = f"units x{self.threads}" if self.threads > 1 else "one thread"
        return f"{split}, {self.chunk} steps a chunk"


def make_plan(T, B, I, Hp, gates, training, plain=True, threads=None):
    """The plan of a call of T steps, B rows, I inputs and Hp hidden units of a cell
    of `gates` gate rows a unit. plain: no option that the batch split lacks;
    threads: the threads to plan for (default Numba's, as the thread policy set
    them for the call).

    A step runs on one thread when it is small on both counts (PARALLEL_MIN_UNITS,
    PARALLEL_MIN_FLOPS). The batch split, where split_rows allows it, runs on all
    the threads whatever the size of a step, as it pays one parallel region for
    all the steps rather than a barrier per step (T=1024, B=16, H=64 inference:
    15.7 ms on one thread, 6.1 on two), unless all the steps' recurrent products
    together are under PARALLEL_MIN_FLOPS: work that fits one thread enters no
    parallel region."""
    pool = numba_threads() if threads is None else threads
    rows = batch_split(T, B, Hp, gates, plain, pool)
    n = pool if rows or not step_is_small(B, Hp, gates) else 1
    chunk = T if training else inference_chunk(T, B, Hp, gates)
    fused = rows and gates == 4 and fuse_input(B, I, Hp, n)  # (the LSTM's loop has it)
    return Plan(n, rows, bool(fused), chunk, SMALL_COPY, POLICY.gate())


def batch_split(T, B, Hp, gates, plain, pool):
    """Whether the plan of a call shares the batch among the pool's threads
    (make_plan's docstring says when)."""
    return bool(plain and split_rows(B, Hp, pool, gates)
                and 2 * T * B * gates * Hp * Hp >= PARALLEL_MIN_FLOPS)


def inference_chunk(T, B, Hp, gates):
    """The steps whose input product inference computes at once (INFERENCE_CHUNK_BYTES
    of it)."""
    return max(1, min(T, INFERENCE_CHUNK_BYTES // (B * gates * Hp * 4)))


def step_is_small(B, Hp, gates):
    """Whether a step of B rows and Hp hidden units of a time loop runs on one
    thread: small on both counts, PARALLEL_MIN_UNITS and PARALLEL_MIN_FLOPS."""
    return Hp < PARALLEL_MIN_UNITS and 2 * B * Hp * gates * Hp < PARALLEL_MIN_FLOPS


def step_splits(B, I, Hp, gates):
    """Whether a streamed step (T=1) of the plain LSTM or the GRU shares its units
    among the threads in one parallel region (lstm_tiled.step_split,
    gru_tiled.step_split) rather than running on one: from STEP_SPLIT_MIN_FLOPS of
    input and recurrent product, or from STEP_SPLIT_MIN_BYTES of weights (W_ih and
    W_hh together), which one core streams from beyond its L2 at half the rate two
    do. Below, a step is too short for the wake-up of a sleeping worker (20-70 us
    once the pool has been idle for some 30 us) to pay. The LSTM on 2 Zen 4 cores,
    one thread -> two, mean us of back-to-back steps / with 100 us between steps:
    B=32, I=128, H=256 (25 MFLOP) 248 -> 138 / 248 -> 208; B=16, I=128, H=256 (13
    MFLOP) 126 -> 73 / 126 -> 126; B=1, I=256, H=1024 (10 MFLOP, 20 MiB) 396 -> 166
    / 354 -> 241; B=1, I=256, H=512 (6 MiB) 77 -> 43 / 77 -> 70; B=8, I=128, H=256
    (6 MFLOP) 65 -> 40 / 66 -> 95."""
    weights = gates * Hp * (I + Hp)  # (a multiply-add each, for each row of the batch)
    return 2 * B * weights >= STEP_SPLIT_MIN_FLOPS or 4 * weights >= STEP_SPLIT_MIN_BYTES


def runs_alone(T, B, Hp, gates, plain=True):
    """Whether an inference call of T steps of B rows runs from Python as one
    compiled call on one thread (the kernel tables' forward_into): where make_plan
    would plan one thread anyway (a small step, and no batch split; plain as
    make_plan's). At T=100, B=1, H=64 the general path's Python took about 55 us
    around 170 us of loop. A streamed step (T=1) is always one compiled call: the
    LSTM and the GRU share a large one among the threads first (step_splits),
    which leaves this one thread."""
    if T == 1:
        return True
    return step_is_small(B, Hp, gates) and not batch_split(T, B, Hp, gates, plain,
                                                           numba_threads())


SPLIT = -1  # (into_route: a streamed step shared among the threads)
DUET = -2  # (into_route: the steps on two threads, each with half of the units)
_routes = {}  # (into_route's memo: a route, or the Trial of two)
_routes_limits = [None]  # (the limits above when it was filled)
# A duet is timed against one thread (Trial): runs of TRIAL_CALLS + 1 calls of each,
# the first of a run untimed, then the faster runs; after TRIAL_AGAIN calls of it the
# two are timed again.
TRIAL_CALLS = 4
TRIAL_AGAIN = 2000


class Trial:
    """The faster of two routes of the same call, found by timing both: the duet
    and one thread, whose results are the same to the bit (so the choice changes
    nothing but time). Whether two cores exchanging half a state every step beat
    one core doing it all depends on the machine: on 2 Zen 4 cores the duet ran
    T=100, B=1, H=64 in 100 us against 135 alone; on 2 Emerald Rapids cores, where
    a cache line takes longer between cores, in 219 us against 184 alone (medians
    of 8 processes each, alternating). (into_route times only steps small enough
    for one thread: at T=30, B=1, H=1024 one thread takes twice the duet's time,
    and the trial's calls of it cost 12% of the first 40 calls.) route() answers
    which route the next call takes: a run of TRIAL_CALLS + 1 calls of each in
    turn, then the one of the shorter best time, for TRIAL_AGAIN calls, then the
    trial again (a machine's load changes).
    note() takes a call's time. The first call of a run is not timed: it may
    compile, fill the caches, or wake the thread pool, which the calls after it
    find awake where they follow each other closely (and asleep where they do
    not, as every call of that route would). The min of a run is the machine's
    noise-free time; a call that a busy core slowed adds nothing to it. Calls
    from several Python threads at once may each note a time: that changes which
    is faster only by the time it measured."""
    __slots__ = ("routes", "best", "calls", "chosen")

    def __init__(self, first, second):
        self.routes = (first, second)
        self.restart()

    def restart(self):
        self.best, self.calls, self.chosen = [np.inf, np.inf], 0, None

    def route(self):
        if self.chosen is not None:
            self.calls += 1
            if self.calls <= TRIAL_AGAIN:
                return self.chosen
            self.restart()
        return self.routes[min(1, self.calls // (TRIAL_CALLS + 1))]

    def note(self, route, ns):
        if self.chosen is not None:
            return
        k, i = divmod(self.calls, TRIAL_CALLS + 1)
        if k > 1 or route != self.routes[k]:
            return  # (a call that another Python thread's calls overtook)
        if i:
            self.best[k] = min(self.best[k], ns)
        self.calls += 1
        if self.calls == 2 * (TRIAL_CALLS + 1):
            self.chosen = self.routes[0] if self.best[0] <= self.best[1] else self.routes[1]
            self.calls = 0


def duet_runs(T, B, Hp, gates, blocks, threads):
    """Whether an inference call of T steps of B rows runs as a duet (the LSTM's
    duet.steps_duet, `blocks` its blocks of units; 0: a cell without one):
    two threads or more, at most DUET_MAX_ROWS rows, DUET_MIN_BLOCKS blocks of
    units or more, and all the steps' input product at once within
    INFERENCE_CHUNK_BYTES. Measured on 2 Zen 4 cores, T=100 and I=H, the duet
    against what ran before (one thread, or the batch or units split): B=1,
    H=64 135 -> 100 us; B=4, H=64 397 -> 262; B=8, H=128 1443 -> 1315; B=1,
    H=256 1620 -> 1150; B=16, H=128 2644 -> 2818; B=1,
    H=32 (2 blocks) 48 -> 55 (so not under 4); at T=30, B=1, H=1024 5506 ->
    5007; at T=10, B=8, H=64 111 -> 88 (one thread alone: 61). With one core
    busy, the duet costs about what one thread does (its peer mostly missing): at
    B <= 4 less than what ran before (T=100, B=4, H=64 0.47 -> 0.33 ms), at
    B=8 more (T=200, B=8, I=40, H=96 2.1-2.2 -> 2.4-2.6 ms, where idle it gained
    5%), so not past 4 rows."""
    return (threads > 1 and T > 1 and gates == 4 and B <= DUET_MAX_ROWS
            and blocks >= DUET_MIN_BLOCKS and T * B * gates * Hp * 4 <= INFERENCE_CHUNK_BYTES)


def _route(T, B, I, Hp, gates, plain, splits, blocks, threads):
    if T == 1 and splits and step_splits(B, I, Hp, gates):
        return SPLIT
    if duet_runs(T, B, Hp, gates, blocks, threads):
        # (a step too large for one thread is left to the duet: one thread would be
        # the trial's slow calls, some twice the duet's time at B=1, H=1024)
        return Trial(DUET, inference_chunk(T, B, Hp, gates)) if step_is_small(
            B, Hp, gates) else DUET
    if T > 1 and not (step_is_small(B, Hp, gates)
                      and not batch_split(T, B, Hp, gates, plain, threads)):
        return 0
    return inference_chunk(T, B, Hp, gates)


def into_route(T, B, I, Hp, gates, plain=True, splits=True, blocks=0, trial=False):
    """How a kernel table's forward_into runs an inference call of T steps of B rows
    (I inputs, Hp padded units, `gates` gate rows a unit) from Python: SPLIT, a
    streamed step whose units the threads share (step_splits; splits: the cell
    has step_split), else DUET, the steps on two threads (duet_runs; blocks: the
    cell's blocks of units where it has the duet, else 0), else the steps
    projected at a time (inference_chunk) of one compiled call on one thread
    (runs_alone), else 0: the call takes the plan's threads, which forward_into
    leaves to the general path. Memoised on its arguments, Numba's thread count
    and this module's limits (which a test may change): about 0.3 us a call,
    where the checks themselves took 1.5 us. A duet of steps small enough for one
    thread (step_is_small) is a Trial of it and one thread (the inference chunk's
    route): the route is the Trial's answer, and with trial=True the return is
    (route, the Trial while it times, else None), for the caller to note() the
    call's time."""
    limits = (STEP_SPLIT_MIN_FLOPS, STEP_SPLIT_MIN_BYTES, PARALLEL_MIN_UNITS,
              PARALLEL_MIN_FLOPS, INFERENCE_CHUNK_BYTES, ROW_SPLIT_MAX_BYTES,
              ROW_SPLIT_SMALL_BYTES, DUET_MAX_ROWS, DUET_MIN_BLOCKS)
    if limits != _routes_limits[0]:
        _routes.clear()
        _routes_limits[0] = limits
    key = (T, B, I, Hp, gates, plain, splits, blocks, numba_threads() if T > 1 else 0)
    route = _routes.get(key)
    if route is None:
        route = _routes[key] = _route(*key)
    if isinstance(route, Trial):
        answer = route.route()
        # (the Trial only while it times: a settled call has nothing to note)
        return (answer, route if route.chosen is None else None) if trial else answer
    return (route, None) if trial else route


def step_threads(B, Hp, nblk):
    """Threads of one step's product in the layer-normalised float32 loops
    (products.step_plan): all of Numba's, at most one per block, unless the
    step is too small to share."""
    if step_is_small(B, Hp, 4):
        return 1
    return max(1, min(numba_threads(), nblk))


def split_rows(B, Hp, P, gates=4):
    """Whether the plain layer's time loops share the batch among the P threads
    (forward_rows) rather than the units (forward_tiled): from 8 rows a thread,
    while W_hh fits in a core's L2 (ROW_SPLIT_MAX_BYTES), and from 2 rows a thread
    while it is small (ROW_SPLIT_SMALL_BYTES: H <= 128), where streaming all of it
    per thread costs less than a barrier per step. Measured on 2 cores, training
    step: B=32, H=128 20% and B=128, H=256 9% faster; B=8 and H >= 512 no
    faster, B=16, H=1024 19% slower (each thread streams all of W_hh). On 2 Zen 3
    cores (AVX2), medians of 3 rounds, units -> rows: T=200, B=8, I=40, H=96
    inference 4.77 -> 3.48 ms, training 16.4 -> 12.7 ms; T=100, B=4, I=64, H=128
    inference 1.41 -> 0.93, training 5.0 -> 3.7; B=8, H=256 training 18.2 ->
    20.9 (so not there). gates: W_hh's rows per hidden unit (4: LSTM, 3: GRU)."""
    w_bytes = Hp * gates * Hp * 4
    return P > 1 and ((B >= 8 * P and w_bytes <= ROW_SPLIT_MAX_BYTES)
                      or (B >= 2 * P and w_bytes <= ROW_SPLIT_SMALL_BYTES))


def fuse_input(B, I, Hp, P):
    """Whether the rows split projects the inputs inside its loop (forward_rows)
    rather than in one product before it: while W_ih and W_hh together fit in L2
    (ROW_SPLIT_MAX_BYTES), or from FUSED_MIN_ROWS rows a thread. Measured on 2
    cores, T=128, median ms, before -> fused: B=32, I=32, H=128 (T=64) training
    9.4 -> 8.2, inference 2.7 -> 1.8; B=128, I=H=64 inference 10.1 -> 5.8;
    B=128, I=H=256 training 330 -> 293; B=16, I=H=128 inference 3.7 -> 3.3. With
    I=H=256 at B=16 and 32 (a 2 MiB W streamed for 8 or 16 rows) inference was
    10-30% slower fused, and at B=64 10% faster."""
    return (I + Hp) * 4 * Hp * 4 <= ROW_SPLIT_MAX_BYTES or B >= FUSED_MIN_ROWS * P
