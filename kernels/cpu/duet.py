"""The duet: a small LSTM inference call's time loop on two threads (steps_duet),
each owning half of every step's blocks of units and taking over a late peer's.
plan.duet_runs says which calls run so (lstm.lstm_forward_into); its docstring
has the measurements. Every half is computed as lstm_tiled.steps_state computes
those blocks, so the result is that loop's, bit for bit.
"""
import numpy as np
from numba import njit, prange

from .jit import BORROW, FAST
from .lstm_tiled import U, step_units, steps_state
from .products import matmul_rows
from .sequence import copy_units
from .threads import (claim, clock_ns, load_slot, parallel_ok, shared_done, store_slot,
                      swap_slot)

DUET_RING = 4  # steps whose halves' claim slots exist at once (reused after)
DUET_SLOT = 8  # int64s between two slots: one a cache line, so two claims never share one
DUET_WAIT_NS = 2_000  # how long a thread that did its half gives its peer to claim the other
DUET_WAIT_SPINS = 1 << 16  # (and at most this many reads: where there is no clock, Windows)
DUET_PIECE = 8  # steps of the input product a thread takes at a time
# A wait this long for a peer's half (which only that peer can finish) means the OS took
# the peer's core with the half in hand: the waiter goes on alone (counters[SOLO]), so a
# call loses that wait once, not a scheduler tick at every step after. Above a half-step
# of the largest duet (B=1, H=1024: 65-130 us), below a 250 Hz tick (4 ms).
DUET_STALL_NS = 500_000
SOLO = 16  # counters[SOLO]: 0, or p + 1 once thread p goes on alone


@njit(inline="always", **BORROW)
def _step_done(slots, r, done):
    """Whether both halves of the step in ring place r are marked `done` or later."""
    return (load_slot(slots, 2 * r * DUET_SLOT) >= done
            and load_slot(slots, (2 * r + 1) * DUET_SLOT) >= done)


@njit(**BORROW)
def _duet_half(xw, w_fwd, h_old, h_new, c, scratch, ones, y_t, t, b0, b1, skip, clip,
               coupled, gclip, acts):
    """Blocks [b0, b1) of step t of steps_duet, as steps_state computes them
    (lstm_tiled.step_units on xw's rows of the step; skip: a zero h), then their
    units of h into y_t."""
    step_units(xw, w_fwd, h_old, h_new, c, scratch, ones, b0, b1, skip, clip, coupled, gclip,
               acts)
    j0 = b0 * U
    copy_units(h_new[:, j0:], y_t[:, j0:], min(b1 * U, y_t.shape[1]) - j0)


@njit(parallel=True, **BORROW)
def _duet_region(x, w_in, bias, w_fwd, hp, cp, xw, y, scratch, ones, slots, counters, work,
                 h_zero, stall, clip, coupled, gclip, acts):
    """steps_duet's parallel region; work [2,4] receives each thread's halves done,
    halves taken from its peer, nanoseconds in the region and nanoseconds of them
    spent waiting (a thread's own half is the first blocks for thread 0, the last
    for thread 1). A thread that waited longer than `stall` ns on its peer goes on
    alone (counters[SOLO]): the peer stops at its next step, holding no half."""
    T, B, I = x.shape
    nblk = w_fwd.shape[0]
    mid, pieces = (nblk + 1) // 2, -(-T // DUET_PIECE)
    rows = x.reshape(T * B, I)
    for p in prange(2):
        began, done, taken, waited = clock_ns(), 0, 0, 0
        alone, gone = False, False
        # the input product of all the steps, DUET_PIECE steps a task
        i = claim(counters[0:1])
        while i < pieces:
            t0, t1 = i * DUET_PIECE, min((i + 1) * DUET_PIECE, T)
            matmul_rows(rows, w_in, xw, bias, False, t0 * B, t1 * B, 0, nblk)
            claim(counters[8:9])  # (a count of the pieces done)
            i = claim(counters[0:1])
        if load_slot(counters, 8) < pieces:
            since = clock_ns()
            while load_slot(counters, 8) < pieces:
                pass
            wait = clock_ns() - since
            waited += wait
            if wait > stall:
                alone = swap_slot(counters, SOLO, 0, p + 1)
        greedy = alone  # (take the peer's half without waiting: after taking one, or alone)
        for t in range(T):
            if not alone and load_slot(counters, SOLO) != 0:
                break  # (the peer goes on alone)
            r, done_t, mine = t % DUET_RING, 3 * t + 2, 3 * t + 1
            if t > 0:  # step t-1 done, both halves (their h is this step's input)
                prev = (t - 1) % DUET_RING
                if not _step_done(slots, prev, done_t - 3):
                    since = clock_ns()
                    while not _step_done(slots, prev, done_t - 3):
                        if not alone and load_slot(counters, SOLO) != 0:
                            gone = True
                            break
                    wait = clock_ns() - since
                    waited += wait
                    if gone:
                        break
                    if wait > stall and not alone:
                        alone = swap_slot(counters, SOLO, 0, p + 1)
                        greedy = greedy or alone
            h_old, h_new = hp[t & 1], hp[1 - (t & 1)]
            for k in range(2):
                q = p if k == 0 else 1 - p
                at = (2 * r + q) * DUET_SLOT
                if k == 1 and not greedy and load_slot(slots, at) < mine:
                    since, spins = clock_ns(), 0
                    while (load_slot(slots, at) < mine and clock_ns() - since < DUET_WAIT_NS
                           and spins < DUET_WAIT_SPINS):
                        spins += 1
                    waited += clock_ns() - since
                if swap_slot(slots, at, 3 * (t - DUET_RING) + 2, mine):
                    b0, b1 = (0, mid) if q == 0 else (mid, nblk)
                    _duet_half(xw[t * B:(t + 1) * B], w_fwd, h_old, h_new, cp, scratch,
                               ones, y[t], t, b0, b1, h_zero and t == 0, clip, coupled,
                               gclip, acts)
                    store_slot(slots, at, done_t)
                    done += 1
                    if k == 1:
                        taken += 1
                        greedy = True
                elif k == 1 and not alone:
                    greedy = False
        work[p, 0], work[p, 1], work[p, 2], work[p, 3] = done, taken, clock_ns() - began, waited


@njit(**FAST)
def steps_duet(x, w_in, bias, w_fwd, h, c, y, h_out, c_out, Hp, P, clip, coupled, gclip,
               acts, gate, stall=DUET_STALL_NS):
    """steps_state on two threads, for a small call that one thread's cache holds
    badly (plan.into_route's DUET): each step's units in two halves, each thread
    the owner of one, so that each reads half of W_hh a step (at B=1, H=64, 32 KiB,
    which its L1 keeps), in one parallel region for all the steps: first the input
    product of all the steps, shared (DUET_PIECE steps a task), then the steps.
    A thread claims a half (an atomic swap on the half's slot), computes it and
    marks it done; it starts a step when both halves of the last are done; and
    after its own half it gives its peer DUET_WAIT_NS to claim the other, then
    claims that one itself, and keeps claiming both until its peer claims one
    again. So a peer that the OS runs late (or that wakes late) costs the call
    about one wait, not a tick, and never a deadlock: every half is claimed by
    exactly one thread, which finishes it; such a call costs about what one
    thread would have taken. A peer that lost its core with a half in hand costs
    the other a wait, up to a scheduler tick: a thread that waited more than
    `stall` ns (DUET_STALL_NS) for its peer's half goes on alone, and the peer
    stops at its next step, so a call loses such a wait once. A call that went on
    alone, or lasted longer than its threads' work together, counts as lagged
    (threads.shared_done), and the next calls keep to one thread for the hold.
    Returns (the halves a thread took over from its peer, whether one went on
    alone). Each half is computed as steps_state computes those blocks: bitwise
    its result, whoever claims it. x [T,B,I] with T * B * 4Hp floats of input
    product (the whole call's, at once); P: Numba's threads (the region asks for
    two); the rest as steps_state. gate: the thread policy's; on a hold, or with
    P = 1, this is steps_state."""
    T, B = x.shape[:2]
    H = c.shape[1]
    if P < 2 or not parallel_ok(gate):
        steps_state(x, w_in, bias, w_fwd, h, c, y, h_out, c_out, Hp, T, clip, coupled, gclip,
                    acts)
        return 0, False
    hp, cp = np.zeros((2, B, Hp), np.float32), np.zeros((B, Hp), np.float32)
    copy_units(h, hp[0], H)
    copy_units(c, cp, H)
    scratch, ones = np.empty((B, Hp), np.float32), np.ones(B, np.int64)
    xw = np.empty((T * B, 4 * Hp), np.float32)
    slots = np.empty(2 * DUET_RING * DUET_SLOT, np.int64)
    for r in range(DUET_RING):  # free for step r: "done" for step r - DUET_RING
        slots[2 * r * DUET_SLOT] = slots[(2 * r + 1) * DUET_SLOT] = 3 * (r - DUET_RING) + 2
    counters, work = np.zeros(SOLO + 8, np.int64), np.zeros((2, 4), np.int64)
    start = clock_ns()
    _duet_region(x, w_in, bias, w_fwd, hp, cp, xw, y, scratch, ones, slots, counters, work,
                 not np.any(h), stall, clip, coupled, gclip, acts)
    alone = counters[SOLO] != 0
    shared_done(gate, start, work[0, 2] - work[0, 3] + work[1, 2] - work[1, 3], alone)
    copy_units(y[T - 1], h_out, H)
    copy_units(cp, c_out, H)
    return work[0, 1] + work[1, 1], alone
