"""Data-parallel training over MPI (numlstm.distributed): two ranks under mpiexec end
where one process does, only rank 0 writes, and a rank that fails stops the job.

The pieces that need no MPI (shards, losses split by count, dropout masks of a part,
thread shares, the message without mpi4py) are tested in this process; the rest
launches `mpiexec -n 2` (the MPICH that the test extra installs next to Python),
with a timeout so that a hang fails the test instead of hanging CI. Those tests skip
without mpi4py and mpiexec, unless NUMLSTM_REQUIRE_MPI=1 (set by .ci/run): in CI
they must run.
"""
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import time

import numpy as np
import pytest

import numlstm
from numlstm import distributed
from numlstm.cli import main
from numlstm.layers import keep_mask
from numlstm.losses import CrossEntropyLoss, MSELoss


def _find_mpiexec():
    """The mpiexec installed beside this Python (the mpich wheel's, which matches the
    MPI library mpi4py loads), else the first on PATH."""
    folders = [os.path.dirname(sys.executable), sysconfig.get_path("scripts"),
               sysconfig.get_path("scripts", f"{os.name}_user")]
    for folder in folders:
        path = os.path.join(folder, "mpiexec")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("mpiexec")


MPIEXEC = _find_mpiexec()
HAVE_MPI = importlib.util.find_spec("mpi4py") is not None and MPIEXEC is not None
REQUIRED = os.environ.get("NUMLSTM_REQUIRE_MPI") == "1"
needs_mpi = pytest.mark.skipif(not (HAVE_MPI or REQUIRED),
                               reason="needs mpi4py and mpiexec: pip install 'numlstm[mpi]'")
TIMEOUT = 60  # seconds a job may take; a rank left waiting would take for ever

TEXT_ARGS = ["--steps", "10", "--seq-len", "16", "--batch-size", "7", "--hidden", "16",
             "--embed", "8", "--layers", "2", "--dropout", "0.2", "--schedule", "constant",
             "--checkpoint-every", "0", "--quiet"]

# Runs `numlstm train` on every rank. GUARD: a folder under which no rank but 0 may
# create or write anything. FAIL_AT=rank:step: that rank raises in its part of that
# training step.
DRIVER = r'''
import builtins, os, sys
from mpi4py import MPI
import numlstm.model

rank = MPI.COMM_WORLD.Get_rank()
guard = os.environ.get("GUARD")
if guard and rank != 0:
    real_open, real_makedirs = builtins.open, os.makedirs

    def check(path):
        if os.path.abspath(os.fsdecode(path)).startswith(guard):
            raise RuntimeError(f"rank {rank} wrote {path}")

    def guarded_open(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and any(c in mode for c in "wax+"):
            check(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_makedirs(name, *args, **kwargs):
        check(name)
        return real_makedirs(name, *args, **kwargs)

    builtins.open, os.makedirs = guarded_open, guarded_makedirs
if os.environ.get("FAIL_AT"):
    fail_rank, fail_step = map(int, os.environ["FAIL_AT"].split(":"))
    real_part = numlstm.model.Sequential._loss_and_grads
    steps = []

    def failing(self, *args, **kwargs):
        steps.append(1)
        if rank == fail_rank and len(steps) == fail_step:
            raise RuntimeError(f"injected failure at step {fail_step}")
        return real_part(self, *args, **kwargs)

    numlstm.model.Sequential._loss_and_grads = failing
from numlstm.cli import main
sys.exit(main(sys.argv[1:]))
'''

# The Python API's case: token ids with ignored targets, dropout in the LSTM and after
# it, 37 samples in batches of 10 (the last of 7), so the ranks' parts are uneven.
FIT_CASE = r'''
import numpy as np
import numlstm

def fit_case():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 11, (46, 12))
    y = rng.integers(0, 11, (46, 12))
    y[rng.random(y.shape) < 0.2] = -100
    model = numlstm.Sequential([numlstm.Embedding(11, 6, seed=0),
                                numlstm.LSTM(6, 8, num_layers=2, dropout=0.3,
                                             recurrent_dropout=0.25, seed=1),
                                numlstm.Dropout(0.2, seed=2), numlstm.Dense(8, 11, seed=3)],
                               seed=4)
    model.compile("adam", "cross_entropy", lr=1e-2, clip_norm=1.0)
    return model, (x[:37], y[:37]), (x[37:], y[37:])
'''

FIT_SCRIPT = FIT_CASE + r'''
import json, sys
import numba
from numlstm.distributed import mpi

group = mpi()
model, train, val = fit_case()
history = model.fit(*train, epochs=2, batch_size=10, validation_data=val, verbose=0,
                    distributed="mpi")
# layers with no seed draw different weights on each rank: the first step makes them
# rank 0's
free = numlstm.Sequential([numlstm.Dense(3, 2)])
free.compile("sgd", "mse", lr=0.1)
free.train_step(np.ones((5, 3), np.float32), np.zeros((5, 2), np.float32), distributed=group)
same = len(set(group.allgather(free.get_weights()["dense/weight"].tobytes()))) == 1
if group.root:
    np.savez(sys.argv[1] + "/weights.npz", **model.get_weights())
    with open(sys.argv[1] + "/fit.json", "w") as f:
        json.dump({"history": history, "ranks": group.size, "same": same,
                   "threads": numba.get_num_threads()}, f)
if sys.argv[2:] == ["fail"]:  # user code that fails on rank 1 alone, between two fits
    if group.rank == 1:
        raise ValueError("user code failed on rank 1")
    model.fit(*train, epochs=1, batch_size=10, verbose=0, distributed=group)
'''


def _mpiexec(args, cwd, env=None, timeout=TIMEOUT):
    """Run mpiexec with args -> (CompletedProcess, seconds); a job that takes longer
    than timeout fails the test."""
    if not HAVE_MPI:
        pytest.fail("NUMLSTM_REQUIRE_MPI=1 but mpi4py or mpiexec is missing: the test "
                    "extra installs them (pip install -e '.[test]')")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([MPIEXEC] + args, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"mpiexec {' '.join(args)} still ran after {timeout} s: a rank was "
                    f"left waiting\nstderr: {err.stderr}")
    return proc, time.perf_counter() - t0


def _train_command(tmp_path, argv):
    """The command that runs `numlstm train argv --distributed mpi` through the driver."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return [sys.executable, str(driver), "train"] + argv + ["--distributed", "mpi"]


def _train_ranks(tmp_path, argv, env=None):
    """`numlstm train argv --distributed mpi` on 2 ranks, in tmp_path."""
    return _mpiexec(["-n", "2"] + _train_command(tmp_path, argv), tmp_path, env)


def _metrics(folder):
    with open(os.path.join(folder, "metrics.json")) as f:
        return json.load(f)


def _assert_same_run(got, want):
    """Two text runs (folders) ending alike, up to float summation order."""
    a, b = numlstm.load_checkpoint(got), numlstm.load_checkpoint(want)
    assert a.step == b.step
    wa, wb = a.model.get_weights(), b.model.get_weights()
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=0, atol=2e-6, err_msg=k)
    la, lb = np.array(a.extra["losses"]), np.array(b.extra["losses"])
    np.testing.assert_allclose(la, lb, rtol=1e-6)
    assert a.extra["data_rng"] == b.extra["data_rng"]
    assert abs(_metrics(got)["val_bpc"] - _metrics(want)["val_bpc"]) <= 1e-4


# -- without MPI -------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_shards_cover_the_batch_in_order(size):
    for n in range(0, 12):
        parts = [distributed.shard(n, size, r) for r in range(size)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        lengths = [stop - start for start, stop in parts]
        assert max(lengths) - min(lengths) <= 1


@pytest.mark.parametrize("mine,others,want", [
    ({0, 1}, [{0, 1}, {0, 1}], 1),            # 2 cores shared by 2 ranks
    ({0, 1, 2, 3}, [{0, 1, 2, 3}] * 2, 2),
    ({0, 1, 2, 3}, [{0, 1, 2, 3}] * 3, 1),
    ({0, 1}, [{0, 1}, {2, 3}], 2),            # a launcher bound each rank to its own cores
    ({0}, [{0}] * 4, 1),                      # never fewer than one
])
def test_threads_per_rank_share_the_cores(mine, others, want):
    assert distributed.threads_per_rank(mine, others) == want


@pytest.mark.parametrize("loss,target_of", [
    (MSELoss(), lambda rng: rng.standard_normal((7, 5, 3)).astype(np.float32)),
    (CrossEntropyLoss(), lambda rng: np.where(rng.random((7, 5)) < 0.3, -100,
                                              rng.integers(0, 3, (7, 5)))),
])
def test_parts_of_a_loss_sum_to_the_whole(rng, loss, target_of):
    pred = rng.standard_normal((7, 5, 3)).astype(np.float32)
    target = target_of(rng)
    value, grad = loss.value_and_grad(pred, target)
    count = loss.terms(target)
    parts = [loss.value_and_grad(pred[a:b], target[a:b], count=count)
             for a, b in ((0, 3), (3, 4), (4, 7))]
    assert sum(v for v, _ in parts) == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(np.concatenate([g for _, g in parts]), grad, rtol=1e-6)
    with pytest.raises(ValueError, match="count: expected an integer >= "):
        loss.value_and_grad(pred, target, count=loss.terms(target) - 1)


def test_cross_entropy_counts_the_targets_not_ignored():
    assert CrossEntropyLoss().terms(np.array([[1, -100], [0, 2]])) == 3
    assert CrossEntropyLoss(ignore_index=2).terms(np.array([2, 2, 1])) == 1
    assert MSELoss().terms(np.zeros((4, 3))) == 12


@pytest.mark.parametrize("axis", [0, 1])
def test_dropout_mask_of_a_part_is_the_whole_batch_mask_rows(axis):
    shape = [5, 6, 4]
    whole = keep_mask(np.random.default_rng(3), tuple(shape), 0.4)
    shape[axis] = 2
    part = keep_mask(np.random.default_rng(3), tuple(shape), 0.4, (6 if axis else 5, 3),
                      axis)
    np.testing.assert_array_equal(part, np.take(whole, [3, 4], axis=axis))


def test_parts_of_a_step_sum_to_one_process_step():
    """Each rank's part (its rows, the whole batch's count and dropout masks) sums to
    the gradient of the whole batch: what the Allreduce relies on."""
    namespace = {}
    exec(FIT_CASE, namespace)
    whole, (x, y), _ = namespace["fit_case"]()
    x, y = x[:9], y[:9]
    value = whole._loss_and_grads(x, y)
    want = {k: g.copy() for k, _, g in whole.parameters()}
    total, got = 0.0, None
    for rows in ((0, 4), (4, 9), (9, 9)):
        part = namespace["fit_case"]()[0]
        total += part._loss_and_grads(x, y, rows=rows)
        grads = {k: g for k, _, g in part.parameters()}
        got = grads if got is None else {k: got[k] + grads[k] for k in got}
        assert all(layer.batch_rows is None for layer in part.layers)
    assert total == pytest.approx(value, rel=1e-12)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_without_mpi4py_the_error_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # `import mpi4py` now fails
    with pytest.raises(distributed.MPIUnavailable, match=r'pip install "numlstm\[mpi\]"') \
            as err:
        distributed.resolve("mpi")
    assert isinstance(err.value, RuntimeError) and isinstance(err.value, ImportError)
    model = numlstm.Sequential([numlstm.Dense(2, 1)]).compile("sgd", "mse", lr=0.1)
    with pytest.raises(ImportError, match="mpi4py"):
        model.fit(np.ones((4, 2)), np.ones((4, 1)), distributed="mpi", verbose=0)
    (tmp_path / "a.txt").write_text("hello world " * 20)
    capsys.readouterr()
    assert main(["train", "--text", str(tmp_path / "a.txt"), "--distributed", "mpi",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("numlstm train: --distributed mpi: training over MPI needs "
                               "mpi4py") and 'pip install "numlstm[mpi]"' in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["tcp", 2, True])
def test_distributed_names_mpi_or_a_group(value):
    model = numlstm.Sequential([numlstm.Dense(2, 1)]).compile("sgd", "mse", lr=0.1)
    with pytest.raises(ValueError, match="distributed: expected None, 'mpi' or a "
                                         "numlstm.distributed.Group, got"):
        model.train_step(np.ones((4, 2)), np.ones((4, 1)), distributed=value)


def test_train_help_describes_distributed(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--distributed {mpi}" in out and "mpiexec -n N numlstm train" in out
    assert 'pip install "numlstm[mpi]"' in out
    with pytest.raises(SystemExit):
        main(["train", "--distributed", "tcp"])
    assert "argument --distributed: invalid choice: 'tcp'" in capsys.readouterr().err


# -- under mpiexec ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The character model trained by one process, plain (no MPI): 10 steps, and 5
    steps to resume from. Every test under mpiexec asks for it, so that the kernels
    are compiled and cached here first and the ranks load them rather than compile
    them both at once."""
    base = tmp_path_factory.mktemp("one")
    rng = np.random.default_rng(2024)
    words = ["lstm", "gate", "cell", "state", "hidden", "forget", "of", "the", "Numba"]
    (base / "text.txt").write_text(" ".join(rng.choice(words, 700)) + ".\n")
    argv = ["train", "--text", str(base / "text.txt")] + TEXT_ARGS
    assert main(argv + ["--out", str(base / "ten")]) == 0
    assert main(argv + ["--out", str(base / "five"), "--steps", "5"]) == 0
    return base


@needs_mpi
def test_two_ranks_end_where_one_process_does(one_process, tmp_path):
    """Batches of 7 (parts of 4 and 3), dropout in and after the LSTM: the same
    weights, losses and val_bpc as one process; rank 0 alone chose the run folder and
    wrote into it (rank 1 is stopped if it writes anything under tmp_path)."""
    proc, _ = _train_ranks(tmp_path, ["--text", str(one_process / "text.txt")] + TEXT_ARGS,
                           env={"GUARD": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    runs = os.listdir(tmp_path / "runs")
    assert len(runs) == 1 and runs[0].startswith("text-"), runs
    out = tmp_path / "runs" / runs[0]
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "loss.png", "metrics.json"]
    _assert_same_run(out, one_process / "ten")
    m = _metrics(out)
    assert m["ranks"] == 2
    if "NUMBA_NUM_THREADS" not in os.environ:  # each rank took half the cores
        assert m["threads_per_rank"] == max(1, len(os.sched_getaffinity(0)) // 2)
    assert proc.stdout.count("val_bpc") == 1  # rank 0 alone prints


@needs_mpi
def test_two_ranks_resume_a_one_process_checkpoint(one_process, tmp_path):
    shutil.copytree(one_process / "five", tmp_path / "five")
    proc, _ = _train_ranks(tmp_path, ["--text", str(one_process / "text.txt"), "--resume",
                                      str(tmp_path / "five"), "--out",
                                      str(tmp_path / "resumed")] + TEXT_ARGS,
                           env={"GUARD": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    _assert_same_run(tmp_path / "resumed", one_process / "ten")


@needs_mpi
def test_a_rank_that_fails_in_a_step_stops_the_job(one_process, tmp_path):
    proc, _ = _train_ranks(tmp_path, ["--text", str(one_process / "text.txt"), "--out",
                                      str(tmp_path / "run")] + TEXT_ARGS,
                           env={"FAIL_AT": "1:3"})
    assert proc.returncode != 0
    assert "numlstm: rank 1 of 2 failed: RuntimeError: injected failure at step 3; " \
           "stopping all 2 ranks" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@needs_mpi
def test_a_file_missing_on_one_rank_stops_the_job(one_process, tmp_path):
    """Two machines, as far as the file is concerned: each rank starts in its own folder
    and only rank 0's holds the text."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(one_process / "text.txt", tmp_path / "a" / "book.txt")
    command = _train_command(tmp_path, ["--text", "book.txt", "--out", str(tmp_path / "run")]
                             + TEXT_ARGS)
    proc, _ = _mpiexec(["-n", "1", "-wdir", str(tmp_path / "a")] + command +
                       [":", "-n", "1", "-wdir", str(tmp_path / "b")] + command, tmp_path)
    assert proc.returncode == 2
    assert "numlstm: rank 1 of 2 failed: --text book.txt: cannot read it" in proc.stderr
    assert "Traceback" not in proc.stderr


@needs_mpi
def test_ranks_started_with_different_options_are_refused(one_process, tmp_path):
    argv = ["--text", str(one_process / "text.txt"), "--out", str(tmp_path / "run")] + \
        TEXT_ARGS
    command = _train_command(tmp_path, argv)
    proc, _ = _mpiexec(["-n", "1"] + command + [":", "-n", "1"] + command + ["--steps", "4"],
                       tmp_path)
    assert proc.returncode == 2
    assert "the command line differs between ranks: rank 1's is not rank 0's" in proc.stderr


@needs_mpi
def test_fit_on_two_ranks_matches_one_process(one_process, tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(FIT_SCRIPT)
    proc, _ = _mpiexec(["-n", "2", sys.executable, str(script), str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "fit.json") as f:
        got = json.load(f)
    assert got["ranks"] == 2 and got["same"] and got["threads"] >= 1
    namespace = {}
    exec(FIT_CASE, namespace)
    model, train, val = namespace["fit_case"]()
    want = model.fit(*train, epochs=2, batch_size=10, validation_data=val, verbose=0)
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(got["history"][key], want[key], rtol=1e-6, err_msg=key)
    weights = np.load(tmp_path / "weights.npz")
    for k, w in model.get_weights().items():
        np.testing.assert_allclose(weights[k], w, rtol=0, atol=2e-6, err_msg=k)


@needs_mpi
def test_user_code_that_fails_on_one_rank_stops_the_job(one_process, tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(FIT_SCRIPT)
    proc, _ = _mpiexec(["-n", "2", sys.executable, str(script), str(tmp_path), "fail"],
                       tmp_path)
    assert proc.returncode != 0
    assert "ValueError: user code failed on rank 1" in proc.stderr  # the traceback
    assert "numlstm: rank 1 of 2 failed: ValueError: user code failed on rank 1; stopping " \
           "all 2 ranks" in proc.stderr


@needs_mpi
def test_the_guide_script_runs_on_two_ranks(one_process, tmp_path):
    """The guide's MPI example (a ```py block, which tests/test_docs.py leaves to this
    file), as its comment says to run it."""
    guide = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "guide.md").read_text()
    blocks = re.findall(r"```py\n(.*?)```", guide, flags=re.S)
    assert len(blocks) == 1 and "distributed=" in blocks[0]
    (tmp_path / "train_mpi.py").write_text(blocks[0])
    proc, _ = _mpiexec(["-n", "2", sys.executable, "train_mpi.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("2 ranks: loss ") == 1, proc.stdout  # rank 0 alone prints
    assert numlstm.load_checkpoint(tmp_path / "model.npz").model.count_params() > 0


@needs_mpi
def test_another_mpis_launcher_is_refused(tmp_path):
    """A process that its launcher counts as one of 2 (MPICH's PMI_SIZE) while MPI sees
    it alone: started by another MPI's mpiexec, it would train alone and overwrite the
    others' files."""
    (tmp_path / "a.txt").write_text("hello world " * 20)
    if not HAVE_MPI:
        pytest.fail("NUMLSTM_REQUIRE_MPI=1 but mpi4py or mpiexec is missing")
    proc = subprocess.run([sys.executable, "-m", "numlstm", "train", "--text", "a.txt",
                           "--distributed", "mpi", "--quiet"], cwd=tmp_path, timeout=TIMEOUT,
                          capture_output=True, text=True, env={**os.environ, "PMI_SIZE": "2"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("numlstm train: --distributed mpi: the launcher started 2 "
                                "processes (PMI_SIZE=2) but the MPI library"), proc.stderr
    assert not (tmp_path / "runs").exists()
