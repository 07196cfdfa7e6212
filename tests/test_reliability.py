"""Training that survives faults: damaged checkpoints, NaNs, runs killed and resumed."""
import os
import signal
import time
import zipfile

import numpy as np
import pytest

import numlstm
from numlstm import Dense, Embedding, LSTM, NonFiniteError, Sequential
from numlstm.checkpoint import previous_path
from numlstm.cli import main
from helpers import checkpoint_step, run_numlstm


def _model(seed=0):
    model = Sequential([Embedding(7, 4, seed=seed), LSTM(4, 6, seed=seed + 1),
                        Dense(6, 7, seed=seed + 2)], seed=seed + 3)
    return model.compile("adam", "cross_entropy", lr=0.01)


def _data(rng, B=4, T=5):
    return rng.integers(0, 7, (B, T)), rng.integers(0, 7, (B, T))


def _weights_equal(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


# -- checkpoints -----------------------------------------------------------------------
def test_saving_keeps_the_previous_checkpoint(rng, tmp_path):
    model = _model()
    x, y = _data(rng)
    path = tmp_path / "checkpoint.npz"
    numlstm.save_checkpoint(path, model, model.optimizer, step=1)
    model.train_step(x, y)
    numlstm.save_checkpoint(path, model, model.optimizer, step=2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.npz", "checkpoint.prev.npz"]
    assert numlstm.load_checkpoint(path).step == 2
    assert numlstm.load_checkpoint(previous_path(str(path))).step == 1


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        del data[len(data) // 2:]
    elif how == "empty":
        data = bytearray()
    else:  # one flipped bit inside an array's payload
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("model/lstm/weight_hh_l0.npy")
        data[info.header_offset + 30 + len(info.filename) + info.file_size - 3] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "flipped bit", "empty"])
def test_a_damaged_checkpoint_is_detected_and_the_previous_one_used(rng, tmp_path, how):
    model = _model()
    x, y = _data(rng)
    path = tmp_path / "checkpoint.npz"
    numlstm.save_checkpoint(path, model, model.optimizer, step=1)
    good = model.get_weights()
    model.train_step(x, y)
    numlstm.save_checkpoint(path, model, model.optimizer, step=2)
    _damage(path, how)
    with pytest.raises(ValueError, match="checkpoint.npz: (corrupted|not a numlstm "
                                         "checkpoint, or a damaged one)"):
        numlstm.load_checkpoint(path)
    ck = numlstm.load_checkpoint(path, fallback=True)
    assert ck.step == 1 and ck.path.endswith("checkpoint.prev.npz")
    assert "read the previous checkpoint" in ck.note
    for k, v in good.items():
        np.testing.assert_array_equal(ck.model.get_weights()[k], v)


def test_the_checksum_catches_what_zip_does_not_check(rng, tmp_path):
    """An array rewritten with a valid CRC (a bad copy, not a flipped bit) is still
    caught: the SHA-256 covers every array file."""
    model = _model()
    path = tmp_path / "c.npz"
    numlstm.save_checkpoint(path, model)
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    import io
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros((7, 4), np.float32))
    files["model/embedding/weight.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    with pytest.raises(ValueError, match="corrupted"):
        numlstm.load_checkpoint(path)


def _rewrite(path, edit, keep_checksum=True):
    import json
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(files["meta.json"])
    edit(meta)
    files["meta.json"] = json.dumps(meta).encode()
    if not keep_checksum:
        del files["sha256"]
    with zipfile.ZipFile(path, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)


@pytest.mark.parametrize("edit", [
    lambda m: m["model"]["layers"][1]["config"].update(hidden_size=7),
    lambda m: m.pop("rng"), lambda m: m["optimizer"].update(type=5),
    lambda m: m.update(extra=[1]), lambda m: m["model"].pop("layers"),
    lambda m: m["optimizer"].pop("config"), lambda m: m.update(step="abc")],
    ids=["shapes", "no rng", "optimizer type", "extra list", "no layers", "no config",
         "step"])
def test_an_edited_meta_json_is_caught(rng, tmp_path, edit):
    model = _model()
    model.train_step(*_data(rng))
    for keep, match in ((True, "corrupted"),  # the checksum covers meta.json
                        (False, "do not fit together as a numlstm checkpoint")):
        path = tmp_path / f"keep-{keep}" / "checkpoint.npz"
        path.parent.mkdir()
        numlstm.save_checkpoint(path, model, model.optimizer, step=1)
        numlstm.save_checkpoint(path, model, model.optimizer, step=2)
        _rewrite(path, edit, keep_checksum=keep)
        with pytest.raises(ValueError, match=match):
            numlstm.load_checkpoint(path)
        assert numlstm.load_checkpoint(path, fallback=True).step == 1  # the .prev file


def test_non_finite_weights_are_never_written(rng, tmp_path):
    model = _model()
    path = tmp_path / "checkpoint.npz"
    numlstm.save_checkpoint(path, model, step=1)
    before = path.read_bytes()
    with model.layers[2].updating() as p:
        p["bias"][0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite weights \(NaN or inf in dense/bias\)"):
        numlstm.save_checkpoint(path, model, step=2)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["checkpoint.npz"]


# -- NaN and inf -----------------------------------------------------------------------
def test_a_nan_loss_stops_training_before_any_update(rng):
    model = _model()
    x, y = _data(rng)
    model.train_step(x, y)
    before, steps = model.get_weights(), model.optimizer.steps
    with model.layers[0].updating() as p:  # NaN reaches the loss through the lookup
        p["weight"][x[0, 0]] = np.nan
    with pytest.raises(NonFiniteError, match="update 2: the loss is nan; no parameter"):
        model.train_step(x, y)
    assert model.optimizer.steps == steps
    after = model.get_weights()
    assert np.isnan(after["embedding/weight"][x[0, 0]]).all()  # only our own change
    for k in before:
        if k != "embedding/weight":
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)


def test_an_infinite_gradient_stops_or_is_skipped(rng):
    x = rng.standard_normal((4, 2)).astype(np.float32)
    y = np.zeros((4, 1), np.float32)
    for mode in ("raise", "skip"):
        model = Sequential([Dense(2, 3, seed=0), Dense(3, 1, seed=1)])
        model.compile("sgd", "mse", on_nonfinite=mode, lr=0.1)
        before = model.get_weights()
        big = np.full_like(x, 1e20)  # a finite loss (float64) whose float32 gradient is inf
        if mode == "raise":
            with pytest.raises(NonFiniteError, match="update 1: the gradient of dense"):
                model.train_step(big, y)
        else:
            model.train_step(big, y)
            assert model.skipped_steps == 1
        assert model.optimizer.steps == 0
        for k, v in before.items():
            np.testing.assert_array_equal(model.get_weights()[k], v, err_msg=k)
        model.train_step(x, y)  # and training goes on
        assert model.optimizer.steps == 1


def test_the_optimizer_refuses_a_nan_gradient_without_changing_anything():
    opt = numlstm.Adam(lr=0.1, clip_norm=1.0)
    p = np.ones(3, np.float32)
    g = np.array([0.5, np.nan, 0.1], np.float32)
    with pytest.raises(NonFiniteError, match="the gradient of w is not finite"):
        opt.step([("w", p, g)])
    assert opt.steps == 0 and opt.state == {} and (p == 1).all()
    np.testing.assert_array_equal(g[[0, 2]], np.float32([0.5, 0.1]))  # not clipped either


def test_the_command_stops_on_nan_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    args = ["train", "--task", "adding", "--seq-len", "6", "--hidden", "4", "--steps", "30",
            "--batch-size", "4", "--checkpoint-every", "10", "--out", out, "--quiet"]
    real = Sequential.train_step
    calls = []

    def poisoned(self, x, y, lengths=None, **options):
        calls.append(1)
        if len(calls) == 15:
            x = x.copy()
            x[0, 0, 0] = np.nan
        return real(self, x, y, lengths, **options)

    monkeypatch.setattr(Sequential, "train_step", poisoned)
    assert main(args) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stopped: update 15: the loss is nan" in err[0]
    assert numlstm.load_checkpoint(out).step == 10
    calls.clear()
    assert main(args[:-1] + ["--on-nan", "skip", "--quiet"]) == 0
    m = numlstm.load_checkpoint(out)
    assert m.step == 30 and m.optimizer.steps == 29
    assert np.isfinite(list(m.model.get_weights().values())[0]).all()


# -- memory limits -------------------------------------------------------------------------
def test_a_training_cache_that_cannot_fit_is_refused_with_its_size(rng):
    lstm = LSTM(8, 256, num_layers=2, bidirectional=True, seed=0)
    before = lstm.params
    x = np.broadcast_to(np.float32(0), (100_000, 4096, 8))  # 13 GB as an array; no memory
    with pytest.raises(MemoryError, match=r"LSTM: training on T=100000 steps x B=4096 "
                                          r"sequences keeps about [\d,.]+ GiB .* but about "
                                          r"[\d,.]+ [GM]iB of memory is available"):
        lstm(x, training=True)
    assert lstm._cache is None
    for k, v in before.items():
        assert lstm.params[k] is v
    model = Sequential([LSTM(8, 256, seed=0), Dense(256, 1)]).compile("adam", "mse")
    with pytest.raises(MemoryError, match="GiB for the backward pass"):
        model.train_step(np.broadcast_to(np.float32(0), (4096, 100_000, 8)),
                         np.broadcast_to(np.float32(0), (4096, 100_000, 1)))
    lstm(x[:5, :2])  # inference keeps no cache and is not refused


def test_the_estimate_is_close_to_what_a_training_step_takes(rng):
    import gc
    import tracemalloc
    for layer in (LSTM(16, 64, num_layers=2, bidirectional=True, dropout=0.1, seed=0),
                  numlstm.GRU(16, 64, seed=0)):
        x = rng.standard_normal((100, 16, 16)).astype(np.float32)
        y, _ = layer(x[:2], training=True)  # compile and pack first
        layer.backward(np.ones_like(y))
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        y, _ = layer(x, training=True)
        layer.backward(np.ones_like(y))
        del y
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        assert 0.6 < peak / layer.training_bytes(100, 16) < 1.3, type(layer).__name__


def test_the_command_refuses_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(numlstm.layers.recurrent, "available_memory", lambda: 1 << 20)
    assert main(["train", "--task", "adding", "--steps", "3", "--out", str(tmp_path),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "but about 1.0 MiB of memory is available" in err[0]


# -- resuming ------------------------------------------------------------------------------
FORECAST = ["train", "--epochs", "3", "--hidden", "8", "--window", "60", "--horizon", "4",
            "--quiet"]
ADDING = ["train", "--task", "adding", "--seq-len", "8", "--hidden", "6", "--steps", "60",
          "--batch-size", "8", "--checkpoint-every", "20", "--quiet"]


class _Killed(BaseException):
    pass


@pytest.mark.parametrize("args", [FORECAST, ADDING], ids=["forecast", "adding"])
def test_resumed_runs_end_as_uninterrupted_ones(tmp_path, monkeypatch, args):
    """A run that dies right after its first checkpoint, resumed with the same
    arguments (the learning-rate schedule included), ends bitwise as one that did not."""
    from numlstm import train
    straight, part = str(tmp_path / "straight"), str(tmp_path / "part")
    assert main(args + ["--out", straight]) == 0
    real = train.save_checkpoint

    def dying(*a, **kw):
        real(*a, **kw)
        raise _Killed

    monkeypatch.setattr(train, "save_checkpoint", dying)
    with pytest.raises(_Killed):
        main(args + ["--out", part])
    monkeypatch.undo()
    first = numlstm.load_checkpoint(part).step
    assert 0 < first < numlstm.load_checkpoint(straight).step
    assert main(args + ["--resume", part]) == 0  # goes on in its folder
    a, b = numlstm.load_checkpoint(straight), numlstm.load_checkpoint(part)
    assert a.step == b.step and a.optimizer.steps == b.optimizer.steps
    _weights_equal(a.model, b.model)
    assert a.extra.keys() == b.extra.keys()
    for key in a.extra:
        if key != "history":
            assert a.extra[key] == b.extra[key], key
    if "history" in a.extra:
        assert a.extra["history"]["val_loss"] == b.extra["history"]["val_loss"]
        assert a.extra["history"]["loss"] == b.extra["history"]["loss"]


def test_resume_of_a_folder_without_a_checkpoint_starts_over(tmp_path, capsys):
    out = tmp_path / "killed-early"
    out.mkdir()
    assert main(ADDING + ["--steps", "5", "--resume", str(out)]) == 0
    assert "no checkpoint there yet; starting from the beginning" in capsys.readouterr().out
    assert numlstm.load_checkpoint(out).step == 5


def test_training_killed_at_random_moments_ends_as_an_uninterrupted_run(tmp_path):
    """SIGKILL a real training process at random moments (during start-up, training
    or one of its frequent checkpoint writes), resume it each time, and compare the
    end with a run that was never interrupted: the same weights, bit for bit.

    The moments are drawn against the run's progress, not the clock: the first kill
    lands in start-up, each later one a random 0-30 ms after the checkpoint passes a
    random step in the first third of what is left. So all five kills happen however
    fast or slow this shared machine is at the time (drawing them from the clock let
    a quick resumed run finish before its second kill)."""
    total = 2000
    args = ["train", "--task", "adding", "--seq-len", "10", "--hidden", "8", "--steps",
            str(total), "--batch-size", "8", "--checkpoint-every", "7", "--quiet"]
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    assert run_numlstm(args + ["--out", straight]).wait(timeout=600) == 0
    os.makedirs(killed)
    rng = np.random.default_rng()
    at = []
    for kill in range(5):
        start = checkpoint_step(killed)
        proc = run_numlstm(args + ["--resume", killed])
        if kill == 0:
            time.sleep(rng.uniform(0.05, 0.5))  # Python and numlstm still importing
        else:
            target = start + int(rng.integers(1, max(2, (total - start) // 3)))
            deadline = time.perf_counter() + 300
            while checkpoint_step(killed) < target:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.perf_counter() < deadline, f"no checkpoint past step {target}"
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.03))
        assert proc.poll() is None, "the run ended before its kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at.append(checkpoint_step(killed))
    assert at[-1] > 0 and at[-1] < total
    proc = run_numlstm(args + ["--resume", killed])
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()
    a, b = numlstm.load_checkpoint(straight), numlstm.load_checkpoint(killed)
    assert a.step == b.step == total
    _weights_equal(a.model, b.model)
    assert a.extra["curve"] == b.extra["curve"]
    print(f"\n{len(at)} kills (last checkpoint steps {at}); final test MSE "
          f"{b.extra['curve'][-1][2]!r}, uninterrupted {a.extra['curve'][-1][2]!r}")
