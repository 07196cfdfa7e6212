"""How many threads a CPU kernel call uses, and how the parallel loops stop waiting
for a thread that the operating system has descheduled.

A laptop is never idle. When another process takes a core, a parallel region
whose work is split evenly ends only when its slowest thread does, and a thread
that lost its core waits for the scheduler's next tick (4 ms here) before it runs
again: a time loop with one region per step then loses a tick per step (measured
on 2 cores: 1.5 ms calls took 8 ms, and two copies of one call 65-320x as long).
Three defences, from the cheapest:

1. Work that fits one thread enters no parallel region at all (the kernels
   decide per product and per step from their FLOPs; see plan.py).
2. A call runs on at most `limit()` threads: Numba's own setting (the user's
   NUMBA_NUM_THREADS or numba.set_num_threads stays the upper bound), the CPUs
   this process may run on (its affinity mask) and its cgroup's CPU quota.
3. Every parallel loop that matters reports lag into a gate, a small int64 array
   passed to the kernels: each thread notes when it finished its share of a
   region, and a region whose last thread finished well after its first (more
   than LAG_MIN_NS, a quarter of a 250 Hz tick, and more than LAG_RATIO times the
   first thread's own time in the region: a wait longer than the work) counts
   as lagged. A lagged region sends the rest of the call's parallel work to one
   thread for a hold time (HOLD_MIN_NS, doubling while lags follow, up to
   HOLD_MAX_NS), after which the loops try two threads again; the time loops check the gate every
   step, so a long call recovers its threads when the other process stops.
   Between calls, `call_threads()` returns 1 while the gate's hold lasts, so a
   busy machine costs a probe every hold time, not a tick every step.

The one-thread and many-thread paths compute every value the same way (each
hidden unit, row and block is computed by one thread, whatever their number), so
results are bitwise the same whatever this module decides.

The gate: int64[GATE_SIZE]; its slots are named below. The clock is
CLOCK_MONOTONIC in nanoseconds, read from compiled code (clock_ns).
"""
import math
import os
import sys
import threading
import time

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic
from numba.np.ufunc import parallel as _parallel

# Slots of the gate array.
SERIAL_UNTIL = 0   # clock_ns before which parallel work runs on one thread
HOLD = 1           # the next hold's length, ns
LAGGED = 2         # regions found lagged since the gate was made (a count)
REGIONS = 3        # regions timed since the gate was made
FINISH = 4         # FINISH + p: when thread p finished its share of the current region
MAX_THREADS = 64
GATE_SIZE = FINISH + MAX_THREADS

# A millisecond: far above a region's join on an idle machine (microseconds), and above
# the wake-up of an idle virtual CPU (some hundreds of microseconds on the 2-core VMs
# measured: at 250 us, idle calls of 100 ms met a hold now and then and ran on one
# thread, twice as long), below a scheduler tick (4 ms at 250 Hz).
LAG_MIN_NS = 1_000_000
# Only a wait longer than the work itself is worth a hold: a long region (a rows loop
# of 18 ms) that met one late tick loses less to it than one thread would lose to the
# next calls (measured on 2 cores: a hold on such a tick doubled the next call's time).
LAG_RATIO = 1.0
# A region whose threads take tasks as they come lagged when it lasted this many times what
# its busiest thread would have taken for all the tasks alone (split_done). Measured on 2
# cores, streamed steps of 64 tasks (LSTM B=1, H=1024) and 4 (GRU B=32, H=256): idle, the
# regions took 0.55-0.58x that time (median), and of 2,900 only 1 and 28 went over 1x, by
# at most 7% with the tasks shared evenly, but for stalls of 0.6-0.7 ms; with a core busy,
# the late thread found nothing left in most regions, and they took 1.12-1.21x (median).
SPLIT_LOSS = 1.1
HOLD_MIN_NS = 20_000_000  # 20 ms of one-thread work after a lag, doubling while lags follow
HOLD_MAX_NS = 1_000_000_000

_CLOCK = getattr(time, "CLOCK_MONOTONIC", 1)
_HAS_CLOCK_GETTIME = sys.platform != "win32"


@intrinsic
def _clock_gettime_ns(typingctx, clock_id):
    """clock_gettime(clock_id) in nanoseconds (libc's, through the vDSO on Linux:
    some 20 ns); 0 where there is none (Windows: lag is then never seen)."""
    def codegen(context, builder, signature, args):
        i64, i32 = ir.IntType(64), ir.IntType(32)
        if not _HAS_CLOCK_GETTIME:
            return ir.Constant(i64, 0)
        spec = ir.LiteralStructType([i64, i64])
        fn = numba.core.cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i32, [i32, spec.as_pointer()]), "clock_gettime")
        ts = numba.core.cgutils.alloca_once(builder, spec)
        builder.call(fn, [builder.trunc(args[0], i32), ts])
        sec = builder.load(builder.gep(ts, [ir.Constant(i32, 0), ir.Constant(i32, 0)]))
        nsec = builder.load(builder.gep(ts, [ir.Constant(i32, 0), ir.Constant(i32, 1)]))
        return builder.add(builder.mul(sec, ir.Constant(i64, 1_000_000_000)), nsec)
    return types.int64(types.int64), codegen


@njit(cache=True)
def clock_ns():
    """The monotonic clock in nanoseconds, as time.monotonic_ns() reads it."""
    return _clock_gettime_ns(_CLOCK)


@intrinsic
def _fetch_add(typingctx, counter, value):
    """counter[0] += value as one atomic operation (sequentially consistent); the value
    before. counter: a C-contiguous int64 array."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", arr.data, args[1], "seq_cst")
    return types.int64(counter, types.int64), codegen


def _slot(context, builder, sig, args):
    """A pointer to element args[1] of the int64 array args[0]."""
    arr = context.make_array(sig.args[0])(context, builder, args[0])
    return builder.gep(arr.data, [args[1]])


def _int64_array(a):
    return isinstance(a, types.Array) and a.dtype == types.int64 and a.layout == "C"


@intrinsic
def load_slot(typingctx, slots, i):
    """slots[i], read as one atomic load (acquire): what another thread stored there,
    and what it wrote before, seen in full; a spin loop rereads it each time."""
    if not _int64_array(slots):
        return None

    def codegen(context, builder, signature, args):
        return builder.load_atomic(_slot(context, builder, signature, args), "acquire", 8)
    return types.int64(slots, types.intp), codegen


@intrinsic
def store_slot(typingctx, slots, i, value):
    """slots[i] = value as one atomic store (release): a thread that reads the value
    (load_slot) sees what this one wrote before it."""
    if not _int64_array(slots):
        return None

    def codegen(context, builder, signature, args):
        builder.store_atomic(args[2], _slot(context, builder, signature, args), "release", 8)
        return context.get_dummy_value()
    return types.void(slots, types.intp, types.int64), codegen


@intrinsic
def swap_slot(typingctx, slots, i, expected, value):
    """slots[i] = value if it held `expected`, as one atomic compare-and-swap
    (sequentially consistent); whether it did. Of threads swapping one slot from
    one value, exactly one does."""
    if not _int64_array(slots):
        return None

    def codegen(context, builder, signature, args):
        pair = builder.cmpxchg(_slot(context, builder, signature, args), args[2], args[3],
                               "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)
    return types.boolean(slots, types.intp, types.int64, types.int64), codegen


@njit(cache=True, _nrt=False)
def claim(counter):
    """The next task of a region whose threads take tasks as they come: counter[0]
    before this call added one (a thread stops when it passes the number of tasks).
    A thread the OS runs late then finds its share taken by the others, rather
    than the others waiting for it to do its share."""
    return _fetch_add(counter, np.int64(1))


@njit(cache=True, _nrt=False)
def parallel_ok(gate):
    """Whether parallel work may use more than one thread now (no hold running)."""
    return gate[SERIAL_UNTIL] == 0 or clock_ns() >= gate[SERIAL_UNTIL]


@njit(cache=True, _nrt=False)
def finished(gate, p):
    """Called by thread p at the end of its share of a region (threads past
    MAX_THREADS go unnoted)."""
    if p < MAX_THREADS:
        gate[FINISH + p] = clock_ns()


@njit(cache=True, _nrt=False)
def _spread_lagged(gate, start):
    """Whether the threads of a region begun at `start` finished far apart (region_done's
    test), from their finished() notes, which this clears."""
    first, last = np.int64(0), np.int64(0)
    for p in range(MAX_THREADS):  # (all: on TBB a thread's id may exceed the team's size)
        at = gate[FINISH + p]
        if at == 0:  # a thread with no share of this region
            continue
        first = at if first == 0 else min(first, at)
        last = max(last, at)
        gate[FINISH + p] = 0
    spread = last - first
    return spread > LAG_MIN_NS and spread > LAG_RATIO * (first - start)


@njit(cache=True, _nrt=False)
def _note_region(gate, start, lagged):
    """Count a region begun at `start`; when it lagged start a hold (doubling while lags
    follow), else end a hold that has run out. Returns lagged."""
    gate[REGIONS] += 1
    if lagged:
        now = clock_ns()
        hold = gate[HOLD] if gate[HOLD] > 0 else HOLD_MIN_NS
        gate[SERIAL_UNTIL] = now + hold
        gate[HOLD] = min(2 * hold, HOLD_MAX_NS)
        gate[LAGGED] += 1
        return True
    until = gate[SERIAL_UNTIL]
    if (until != 0 and start >= until) or (until == 0 and gate[HOLD] != 0):
        # a clean region after the hold (or after the probe that ended it, split_done):
        # the next hold starts short again
        gate[HOLD] = 0
        gate[SERIAL_UNTIL] = 0
    return False


@njit(cache=True, _nrt=False)
def region_done(gate, start):
    """After a parallel region begun at `start` (clock_ns) whose threads called
    finished() (those without a share need not): count it, and when it lagged,
    start a hold. Returns whether it lagged."""
    return _note_region(gate, start, _spread_lagged(gate, start))


@njit(cache=True, _nrt=False)
def split_done(gate, start, work):
    """region_done for a region whose threads took its tasks as they came (claim) and
    noted in work [P,2] how many each did and the nanoseconds they took. Such a
    region also counts as lagged when it lasted longer than its busiest thread
    would have taken for all the tasks alone (by SPLIT_LOSS): a thread came so
    late that the others waited for it at the join with nothing left to do, and
    one thread would have been faster. (A short region, such as a streamed step's
    100-400 us, loses that way to a thread late by less than LAG_MIN_NS.) The first
    region after a hold is judged by region_done's test alone, as its threads wake
    from sleep."""
    region = clock_ns() - start
    best, tasks = 0, np.int64(0)
    for p in range(work.shape[0]):
        tasks += work[p, 0]
        if work[p, 0] > work[best, 0]:
            best = p
    alone = work[best, 1] * tasks // max(work[best, 0], 1)
    return _taken_done(gate, start, region > SPLIT_LOSS * alone, False)


@njit(cache=True, _nrt=False)
def _taken_done(gate, start, late, stalled):
    """split_done and shared_done's end: count the region; lagged if a thread lagged
    by region_done's test or `stalled` (a thread waited on a descheduled peer), or
    `late` (their own test), but in the first region after a hold, where `late`
    does not count: its other threads had slept through the hold, and waking them
    (some hundreds of microseconds on a virtual machine) is no sign of a busy
    core. That region ends the hold, which keeps its length, so that a lag in the
    next region doubles it."""
    lagged = _spread_lagged(gate, start) or stalled
    if not lagged and gate[SERIAL_UNTIL] != 0 and start >= gate[SERIAL_UNTIL]:
        gate[REGIONS] += 1
        gate[SERIAL_UNTIL] = 0
        return False
    return _note_region(gate, start, lagged or late)


@njit(cache=True, _nrt=False)
def shared_done(gate, start, busy, stalled):
    """region_done for a region whose threads share every step and wait on each other
    (duet.steps_duet); busy: the nanoseconds its threads spent not waiting, all
    together; stalled: whether one waited long on a peer that the OS had
    descheduled with its share of a step in hand (and went on alone). Lagged
    when stalled, or when the region lasted more than SPLIT_LOSS times `busy`,
    longer than one thread would have taken for all the work. A peer that only
    came late, its shares taken over by the other, costs about one thread's
    time, and is no lag."""
    return _taken_done(gate, start, clock_ns() - start > SPLIT_LOSS * busy, stalled)


def new_gate():
    return np.zeros(GATE_SIZE, np.int64)


def numba_threads():
    """numba.get_num_threads(), this Python thread's setting, without the launch
    check and locks it takes on every call (4 us of a 25 us call at B=1)."""
    if not _parallel._is_initialized:
        _parallel._launch_threads()
    return _parallel._get_num_threads()


def set_numba_threads(n):
    """numba.set_num_threads(n) for an n known to be valid (1 to NUMBA_NUM_THREADS)."""
    _parallel._set_num_threads(n)


# -- the CPUs this process may use --------------------------------------------------------
def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cgroup_quota(root, proc_cgroup):
    """The CPUs a cgroup quota allows (quota / period, rounded up), the smallest along
    this process's cgroup path and its parents; None when no quota is set. root: the
    cgroup mount (/sys/fs/cgroup); proc_cgroup: /proc/self/cgroup's text."""
    best = None
    for line in (proc_cgroup or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2: cpu.max holds "quota period" or "max period"
            files = [("cpu.max", None)]
            base = root
        elif "cpu" in controllers.split(","):  # cgroup v1
            files = [("cpu.cfs_quota_us", "cpu.cfs_period_us")]
            base = os.path.join(root, controllers)
            if not os.path.isdir(base):
                base = os.path.join(root, "cpu")
        else:
            continue
        path = path.strip("/")
        while True:
            folder = os.path.join(base, path) if path else base
            for quota_file, period_file in files:
                if period_file is None:
                    text = _read(os.path.join(folder, quota_file))
                    fields = text.split() if text else []
                    quota = fields[0] if fields else "max"
                    period = fields[1] if len(fields) > 1 else "100000"
                else:
                    quota = _read(os.path.join(folder, quota_file)) or "-1"
                    period = _read(os.path.join(folder, period_file)) or "100000"
                try:
                    q, per = int(quota), int(period)
                except ValueError:
                    q, per = -1, 1
                if q > 0 and per > 0:
                    cpus = max(1, math.ceil(q / per))
                    best = cpus if best is None else min(best, cpus)
            if not path:
                break
            path = os.path.dirname(path)
    return best


def cores_available(affinity=None, cgroup_root="/sys/fs/cgroup", proc_cgroup=None):
    """The CPUs this process may use: its affinity mask (os.sched_getaffinity where
    there is one, else os.cpu_count()), capped by its cgroup's CPU quota. The
    arguments exist for tests: an affinity set, another cgroup mount, another
    /proc/self/cgroup text."""
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            affinity = range(os.cpu_count() or 1)
    n = max(1, len(affinity))
    if proc_cgroup is None:
        proc_cgroup = _read("/proc/self/cgroup")
    quota = _cgroup_quota(cgroup_root, proc_cgroup)
    return n if quota is None else max(1, min(n, quota))


class Policy:
    """The threads of each kernel call in this process, and its gates (one per Python
    thread, since a hold is about the threads a call runs on).

    limit(): min(Numba's thread count, cores_available()), the latter read again at
    most every `refresh` seconds (affinity and quotas can change while a process
    runs). call_threads(): limit(), or 1 while this Python thread's gate holds."""

    def __init__(self, refresh=1.0, cores=cores_available, clock=time.monotonic):
        self._refresh, self._cores, self._clock = refresh, cores, clock
        self._checked, self._cached = -math.inf, 1
        self._local = threading.local()

    def gate(self):
        g = getattr(self._local, "gate", None)
        if g is None:
            g = self._local.gate = new_gate()
        return g

    def cores(self):
        now = self._clock()
        if now - self._checked > self._refresh:
            self._cached, self._checked = self._cores(), now
        return self._cached

    def limit(self):
        return max(1, min(numba_threads(), self.cores()))

    def call_threads(self):
        g = self.gate()
        if g[SERIAL_UNTIL] and time.monotonic_ns() < g[SERIAL_UNTIL]:
            return 1
        return self.limit()


POLICY = Policy()


# Elements: layout passes (transposes, blocking) and reductions below this run on one
# thread, some tens of microseconds (a weight of H=128, 4H x H, is 65,536).
SMALL_REGION = 1 << 17


def _on_threads(n, fn, *args, **kwargs):
    """fn(*args, **kwargs) with Numba's thread count n for the call, set back after."""
    before = numba_threads()
    if n == before:
        return fn(*args, **kwargs)
    set_numba_threads(n)
    try:
        return fn(*args, **kwargs)
    finally:
        set_numba_threads(before)


def serial_if(small, fn, *args):
    """fn(*args), on one thread (no parallel region to wake and join) when `small`:
    for the layout passes and reductions around the time loops, a few
    microseconds of work at small sizes."""
    if small:
        return _on_threads(1, fn, *args)
    if numba_threads() > 1:
        POLICY.gate()[REGIONS] += 1  # (counted as the timed regions are)
    return fn(*args)


def run(fn, *args, **kwargs):
    """fn(*args, **kwargs) with Numba's thread count set to POLICY.call_threads()
    for the call (and set back after it)."""
    return _on_threads(POLICY.call_threads(), fn, *args, **kwargs)


# Numba's workqueue threading layer aborts the process when two Python threads launch
# parallel regions at once. The calls that may launch one hold this lock until the
# layer is known to take concurrent calls (omp or tbb): the table's calls
# (kernels/cpu/__init__.py's _serialised) and the split streaming steps, which a
# serialised call may itself make (so the lock is re-entrant).
_LOCK = threading.RLock()
_threadsafe = False


def serialised(run_fn, fn, *args, **kwargs):
    """run_fn(fn, *args, **kwargs) (run_fn: run, or a plain call), under _LOCK
    unless Numba's threading layer takes concurrent calls."""
    global _threadsafe
    if _threadsafe:
        return run_fn(fn, *args, **kwargs)
    with _LOCK:
        out = run_fn(fn, *args, **kwargs)
        try:
            _threadsafe = numba.threading_layer() in ("omp", "tbb")
        except ValueError:  # no parallel region has run yet
            pass
    return out
