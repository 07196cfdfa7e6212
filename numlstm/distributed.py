"""Data-parallel training over MPI, through mpi4py.

mpi4py is optional (pip install "numlstm[mpi]" brings it and MPICH); this module
imports it only when a Group is made, so numlstm works without it.

An MPI launcher (`mpiexec -n N python script.py`, `mpiexec -n N numlstm train ...`)
starts N processes, the ranks, which run the same program on the same data. A
training step with distributed="mpi" (Sequential.fit, train_step, evaluate):

    every rank holds the same global batch of B rows: the same draw or shuffle,
        since the data's generators are seeded alike and the model's are rank 0's
    rank r runs forward and backward on rows [r*B//N, (r+1)*B//N) only; a part's
        loss is divided by the whole batch's count of terms (loss.terms: elements
        for MSE, targets not ignored for cross-entropy) and its dropout masks are
        the whole batch's rows, so the parts' gradients sum to the whole batch's
    one Allreduce sums the gradients and the loss over the ranks, in float64
    every rank clips and steps its optimizer on that same sum

So N ranks compute what one process computes, up to the order in which floats
are summed. Shards are uneven when N does not divide B (each row still weighs what
it weighs in one process); a rank with no rows adds zeros. The first distributed
step of a model (and fit) makes every rank's weights, optimizer state and random
generators rank 0's and checks that every rank was given the same data; fit ends
by checking that every rank holds the same weights, bit for bit.

Failure: a rank that raises between collective calls would leave the others
waiting in the next one for ever. Work that runs on one rank alone is wrapped
(Group.alone) so that an exception prints "numlstm: rank K of N failed: ..." to
stderr and aborts the job (MPI_Abort); exceptions nobody catches in a script do
the same, through sys.excepthook. Errors that every rank meets together, after a
collective (a non-finite loss, different data on two ranks), are raised on every
rank as usual.

Threads: N ranks on one machine would each start a Numba worker per core. Unless
NUMBA_NUM_THREADS is set, each rank takes its share of the cores it may run on:
its cores divided by the ranks on this machine that may run on them too (a
launcher that binds each rank to its own cores gives each rank all of those).
"""
import contextlib
import hashlib
import os
import sys
import time
import weakref

import numpy as np

INSTALL = 'pip install "numlstm[mpi]"'


class MPIUnavailable(RuntimeError, ImportError):
    """distributed="mpi" without mpi4py or an MPI library to load (an ImportError
    too, so that `except ImportError` catches it)."""


class RanksDiffer(ValueError):
    """Ranks that should hold the same thing (data, arguments, a checkpoint) do not;
    raised on every rank alike."""


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise MPIUnavailable(f"training over MPI needs mpi4py and an MPI library ({err}); "
                             f"install them with: {INSTALL}") from None
    return MPI


def shard(n, size, rank):
    """Rank `rank` of `size` takes rows [start, stop) of a batch of n:
    start = rank * n // size. Parts differ by at most one row; with n < size some
    ranks get none."""
    return rank * n // size, (rank + 1) * n // size


def threads_per_rank(mine, others):
    """Numba threads for a rank that may run on the cores `mine` (a set) when the
    ranks on its machine may run on `others` (a list of sets, its own included):
    its cores divided by the ranks that share any of them, at least 1."""
    sharing = sum(1 for cores in others if cores & mine)
    return max(1, len(mine) // max(sharing, 1))


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()


# Seconds between printing why a rank fails and aborting: the launcher forwards each
# rank's output on its own time, and MPICH's dropped the end of a traceback printed
# just before MPI_Abort in 3 of 15 runs of a test (2 ranks on 2 busy cores); with
# this pause, in none of 100.
_ABORT_DELAY = 0.2


def describe(err):
    """An exception as one line: its type and message."""
    text = " ".join(str(err).split()) or "(no message)"
    return f"{type(err).__name__}: {text}"


class Group:
    """The ranks of an MPI communicator that train one model together.

    Args:
        comm: an mpi4py communicator (default: MPI.COMM_WORLD, every rank the
            launcher started).

    Attributes: rank, size, local_size (ranks on this machine), root (rank 0).
    Pass the group, or "mpi" for the world's, as `distributed=` to Sequential.fit,
    train_step and evaluate.
    """

    def __init__(self, comm=None):
        MPI = _mpi()
        if comm is None:
            comm = MPI.COMM_WORLD
        if not isinstance(comm, MPI.Comm):
            raise TypeError(f"comm: expected an mpi4py communicator, got "
                            f"{type(comm).__name__}")
        self._MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.root = self.rank == 0
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = local.Get_size()
        cores = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            set(range(os.cpu_count() or 1))
        self._local_cores = local.allgather(cores)
        local.Free()
        self._cores = cores
        self._started = weakref.WeakKeyDictionary()  # model -> the optimizer it began with

    def __repr__(self):
        return f"Group(rank={self.rank}, size={self.size}, local_size={self.local_size})"

    # -- failure -------------------------------------------------------------------------
    def fail(self, message, code=1):
        """Print "numlstm: rank K of N failed: message" to stderr and abort every rank
        with exit status `code` (MPI_Abort); with one rank, SystemExit(code)."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        print(f"numlstm: rank {self.rank} of {self.size} failed: {message}; stopping all "
              f"{self.size} ranks", file=sys.stderr, flush=True)
        if self.size == 1:
            raise SystemExit(code)
        time.sleep(_ABORT_DELAY)
        self.comm.Abort(code)
        os._exit(code)  # MPICH's MPI_Abort may return before the launcher ends this rank

    @contextlib.contextmanager
    def alone(self):
        """Work this rank does between collective calls: with other ranks waiting,
        an exception in it fails the whole job (see fail) instead of leaving them
        hanging; with one rank it is raised as usual."""
        try:
            yield
        except BaseException as err:
            if self.size == 1:
                raise
            self.fail(describe(err))

    # -- collectives ---------------------------------------------------------------------
    def bcast(self, obj):
        """Rank 0's obj, on every rank."""
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj):
        """[every rank's obj] in rank order, on every rank."""
        return self.comm.allgather(obj)

    def sum(self, value):
        """The sum of a float over the ranks, on every rank."""
        return float(self.comm.allreduce(float(value), op=self._MPI.SUM))

    def check_same(self, what, value, hint="every rank must be started alike"):
        """RanksDiffer (a ValueError) on every rank unless every rank passed an equal
        `value`; `what` names it in the message, `hint` says what to do."""
        values = self.allgather(value)
        odd = [r for r, v in enumerate(values) if v != values[0]]
        if odd:
            raise RanksDiffer(f"{what} differs between ranks: rank {odd[0]}'s is not rank "
                              f"0's; {hint}")

    def shard(self, n):
        """(start, stop): this rank's rows of a batch of n."""
        return shard(n, self.size, self.rank)

    def threads(self):
        """Numba threads this rank should use (see the module's note)."""
        return threads_per_rank(self._cores, self._local_cores)

    # -- a model -------------------------------------------------------------------------
    def start(self, model, x=None, y=None, lengths=None):
        """Make every rank's model rank 0's (weights, optimizer state, random
        generators) and check that every rank holds the same data (x, y, lengths),
        once per model and optimizer: the first distributed fit, train_step or
        evaluate of a model does this (with its data: fit's whole training set,
        train_step's first batch), and again after compile gives it a new optimizer."""
        if model in self._started and self._started[model] is model.optimizer:
            return
        with self.alone():
            stateful = [l.name for l in model.layers if getattr(l, "stateful", False)]
            if stateful:
                raise ValueError(f"distributed training: stateful layers ({stateful[0]}) "
                                 f"carry each batch row's state into the next batch, and "
                                 f"the ranks split the rows; use stateful=False")
            digest = _digest(x, y, lengths)
        self.check_same("the data (x, y, lengths)", digest,
                        "every rank passes the same data and takes its own rows of it")
        state = None
        if self.root:
            opt = model.optimizer.state_dict() if model.optimizer is not None else None
            state = (model.get_weights(), model.rng_states(), opt)
        weights, rngs, opt = self.bcast(state)
        with self.alone():
            if not self.root:
                model.set_weights(weights)
                model.set_rng_states(rngs)
                if opt is not None:
                    model.optimizer.load_state_dict(opt)
        self._started[model] = model.optimizer

    def gradients(self, model, x, y, lengths=None):
        """This rank's part of one training step on the global batch (x, y): forward
        and backward of its rows, then the gradients and loss summed over the ranks
        into each layer's `grads` -> the whole batch's loss."""
        with self.alone():
            x, y, lengths = model._check_data(x, y, lengths)
        self.start(model, x, y, lengths)
        with self.alone():
            model.zero_grad()
            value = model._loss_and_grads(x, y, lengths, rows=self.shard(len(x)))
            grads = [g for _, _, g in model.parameters()]
            buf = np.empty(sum(g.size for g in grads) + 1)
            at = 0
            for g in grads:
                buf[at:at + g.size] = g.reshape(-1)
                at += g.size
            buf[-1] = value
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        at = 0
        for g in grads:
            np.copyto(g, buf[at:at + g.size].reshape(g.shape))
            at += g.size
        return float(buf[-1])

    def check_weights(self, model):
        """RuntimeError on every rank unless every rank holds the same weights, bit for
        bit (what the identical updates must give)."""
        weights = model.get_weights()
        digests = self.allgather(_digest(*(weights[k] for k in sorted(weights))))
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if odd:
            root = self.bcast(weights if self.root else None)
            diff = max(float(np.abs(weights[k].astype(np.float64) - root[k]).max())
                       for k in weights)
            worst = max(self.allgather(diff))
            raise RuntimeError(f"after training, rank {odd[0]}'s weights differ from rank "
                               f"0's (largest difference on any rank: {worst:.3g}); the "
                               f"MPI library summed differently on different ranks")


_WORLD = None
# How many processes MPICH's launcher (PMI) and Open MPI's say they started: a process
# that MPI calls the only rank while its launcher started more was launched by
# another MPI's mpiexec, and would train alone and write over the others' files.
_LAUNCHER_SIZES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


def mpi():
    """The Group of every rank the launcher started (MPI.COMM_WORLD), made once per
    process. Making it sets this rank's Numba threads (unless NUMBA_NUM_THREADS is
    set) and, with more than one rank, makes an exception that nobody catches abort
    the whole job with a one-line message after its traceback."""
    global _WORLD
    if _WORLD is None:
        group = Group()
        launched = {v: os.environ[v] for v in _LAUNCHER_SIZES if v in os.environ}
        if group.size == 1 and any(n != "1" for n in launched.values()):
            var, n = next(iter(launched.items()))
            raise MPIUnavailable(f"the launcher started {n} processes ({var}={n}) but the "
                                 f"MPI library that mpi4py loaded sees this one alone: "
                                 f"that mpiexec belongs to another MPI; launch with the one "
                                 f"installed beside this Python "
                                 f"({os.path.join(os.path.dirname(sys.executable), 'mpiexec')})")
        if "NUMBA_NUM_THREADS" not in os.environ:
            import numba
            numba.set_num_threads(min(group.threads(), numba.config.NUMBA_NUM_THREADS))
        if group.size > 1:
            previous = sys.excepthook

            def hook(kind, value, tb):
                previous(kind, value, tb)
                group.fail(describe(value))

            sys.excepthook = hook
        _WORLD = group
    return _WORLD


def resolve(distributed):
    """None, "mpi" (the world's Group) or a Group -> None or a Group."""
    if distributed is None or isinstance(distributed, Group):
        return distributed
    if isinstance(distributed, str) and distributed.lower() == "mpi":
        return mpi()
    raise ValueError(f"distributed: expected None, 'mpi' or a numlstm.distributed.Group, "
                     f"got {distributed!r}")
