"""`numlstm train` and `numlstm generate`, in-process: what each task writes, checked
against numbers recomputed here from the data and the saved checkpoint."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import numlstm
from numlstm import train
from numlstm.cli import main
from helpers import one_error_line

PNG = b"\x89PNG\r\n\x1a\n"
TEXT_ARGS = ["--seq-len", "16", "--batch-size", "8", "--hidden", "16", "--embed", "8",
             "--quiet"]


def _metrics(folder):
    with open(os.path.join(folder, "metrics.json")) as f:
        return json.load(f)


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG


# -- forecasting ---------------------------------------------------------------------------
def _check_forecast(folder, series, metrics):
    """Recompute val_rmse from the checkpoint and baseline_rmse from the series."""
    n, window, horizon, season = (metrics[k] for k in ("values", "window", "horizon",
                                                       "season"))
    assert n == len(series)
    count = metrics["validation_origins"]
    origins = np.arange(n - horizon - count, n - horizon)  # the last full horizons
    split = n - round(0.2 * n)  # targets from index `split` on are held out
    assert origins[0] == split - 1
    ck = numlstm.load_checkpoint(os.path.join(folder, "checkpoint.npz"))
    assert ck.extra["task"] == "forecast"
    assert (ck.extra["window"], ck.extra["horizon"]) == (window, horizon)
    scale = ck.extra["scale"]
    x = np.stack([series[o - window + 1:o + 1] - series[o] for o in origins]) / scale
    pred = ck.model.predict(x[:, :, None].astype(np.float32)) * scale + series[origins, None]
    truth = np.stack([series[o + 1:o + horizon + 1] for o in origins])
    rmse = math.sqrt(np.mean((pred - truth) ** 2))
    assert abs(metrics["val_rmse"] - rmse) <= 1e-5 * rmse, (metrics["val_rmse"], rmse)
    for dtype in ("int8", "bfloat16"):  # the same forecasts with the LSTM quantized
        q = numlstm.quantize_dynamic(ck.model, dtype)
        pred_q = q.predict(x[:, :, None].astype(np.float32)) * scale + series[origins, None]
        rmse_q = math.sqrt(np.mean((pred_q - truth) ** 2))
        assert abs(metrics[f"val_rmse_{dtype}"] - rmse_q) <= 1e-5 * rmse_q, dtype
        assert rmse_q != rmse and abs(rmse_q - rmse) < 0.01 * rmse, (dtype, rmse_q, rmse)
    naive = np.array([[series[o + k - season * math.ceil(k / season)]
                       for k in range(1, horizon + 1)] for o in origins])
    base = math.sqrt(np.mean((naive - truth) ** 2))
    assert abs(metrics["baseline_rmse"] - base) <= 1e-12 * base
    return ck


def test_train_default_forecasts_co2(tmp_path):
    out = str(tmp_path / "co2")
    assert main(["train", "--out", out, "--epochs", "2", "--quiet"]) == 0
    # (a checkpoint after each epoch; the one before the last is kept as .prev)
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "checkpoint.prev.npz",
                                       "forecast.png", "loss.png", "metrics.json"]
    m = _metrics(out)
    assert m["task"] == "forecast" and m["epochs"] == 2
    assert (m["window"], m["horizon"], m["season"]) == (104, 52, 52)
    for key in ("val_rmse", "baseline_rmse", "train_seconds"):
        assert math.isfinite(m[key]) and m[key] > 0, key
    assert m["baseline"].startswith("seasonal naive")
    _, series = train.load_co2()
    ck = _check_forecast(out, series, m)
    train_windows = (len(series) - round(0.2 * len(series))) - 52 - 103
    assert ck.step == ck.optimizer.steps == 2 * math.ceil(train_windows / 32)
    assert m["parameters"] == ck.model.count_params()
    # tokens_per_second: every window's 104 steps, both epochs, over the training time
    assert np.isclose(m["tokens_per_second"], 2 * train_windows * 104 / m["train_seconds"])
    assert _is_png(os.path.join(out, "forecast.png")) and _is_png(os.path.join(out, "loss.png"))


def test_load_co2():
    dates, values = train.load_co2()
    assert len(values) == len(dates) == 2284
    assert not np.isnan(values).any()
    assert dates[0] == np.datetime64("1958-03-29") and (np.diff(dates) > 0).all()
    assert 300 < values.min() < values.max() < 400  # ppm over 1958-2001


@pytest.mark.parametrize("season,horizon", [(1, 1), (1, 3), (4, 4), (5, 3), (3, 7)])
def test_seasonal_naive_repeats_the_last_season(rng, season, horizon):
    series = rng.standard_normal(40)
    origin = int(rng.integers(season + 1, 40 - horizon))
    got = train.seasonal_naive(series, origin, horizon, season)
    assert got.shape == (horizon,)
    for k in range(1, horizon + 1):
        if k <= season:
            assert got[k - 1] == series[origin + k - season]
        else:  # past one season the forecast repeats itself
            assert got[k - 1] == got[k - 1 - season]


def _csv_series(rng, n=300, period=20):
    t = np.arange(n)
    return 10 + 0.02 * t + np.sin(2 * np.pi * t / period) + 0.1 * rng.standard_normal(n)


def test_train_forecast_on_a_csv_column(rng, tmp_path, capsys):
    values = _csv_series(rng)
    blank = 137
    path = tmp_path / "series.csv"
    rows = [f"{t},{'' if t == blank else repr(float(v))},{-v}" for t, v in enumerate(values)]
    path.write_text("t,value,other\n" + "\n".join(rows) + "\n")
    out = str(tmp_path / "run")
    assert main(["train", "--csv", str(path), "--column", "value", "--season", "20",
                 "--epochs", "2", "--out", out, "--quiet"]) == 0
    m = _metrics(out)
    assert m["dataset"] == "series.csv:value" and m["values"] == 300
    assert (m["window"], m["horizon"], m["season"]) == (40, 20, 20)
    assert m["baseline"] == "seasonal naive (the value 20 steps earlier)"
    for key in ("val_rmse", "baseline_rmse"):
        assert math.isfinite(m[key]) and m[key] > 0, key
    filled = values.copy()
    filled[blank] = (values[blank - 1] + values[blank + 1]) / 2  # linear interpolation
    _check_forecast(out, filled, m)
    assert _is_png(os.path.join(out, "forecast.png"))
    _check_predict(out, path, filled, capsys)

    capsys.readouterr()
    assert main(["train", "--csv", str(path), "--column", "price", "--out", out,
                 "--quiet"]) == 2
    one_error_line(capsys, "--column 'price'", "['t', 'value', 'other']")


def _check_predict(out, path, series, capsys):
    """`numlstm predict` continues the series: the next horizon values from its last
    window, by the run's model as trained and with its LSTM quantized both ways."""
    ck = numlstm.load_checkpoint(out)
    window, horizon, scale = (ck.extra[k] for k in ("window", "horizon", "scale"))
    x = ((series[-window:] - series[-1]) / scale)[None, :, None].astype(np.float32)
    for quantize in (None, "int8", "bfloat16"):
        model = numlstm.quantize_dynamic(ck.model, quantize) if quantize else ck.model
        want = model.predict(x)[0] * scale + series[-1]
        capsys.readouterr()
        assert main(["predict", "--checkpoint", out, "--csv", str(path), "--column", "value"]
                    + (["--quantize", quantize] if quantize else [])) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"# the next {horizon} values of series.csv:value after")
        assert lines[0].endswith(f" in {quantize}" if quantize else "checkpoint.npz")
        assert lines[1] == "step,forecast" and len(lines) == horizon + 2
        rows = [line.split(",") for line in lines[2:]]
        assert [int(r[0]) for r in rows] == list(range(1, horizon + 1))
        np.testing.assert_allclose([float(r[1]) for r in rows], want, rtol=1e-5)


def test_predict_refuses_what_it_cannot_continue(tmp_path, capsys):
    model = numlstm.Sequential([numlstm.LSTM(1, 4, return_sequences=False, seed=0),
                                numlstm.Dense(4, 2, seed=1)])
    for name, extra in (("f", {"task": "forecast", "window": 60, "horizon": 2, "scale": 1.0}),
                        ("t", {"task": "text"})):
        (tmp_path / name).mkdir()
        numlstm.save_checkpoint(tmp_path / name, model, extra=extra)
    series = tmp_path / "s.csv"
    series.write_text("t,v\n" + "".join(f"{i},{i / 10}\n" for i in range(50)))
    f = str(tmp_path / "f")
    for argv, needle in (
            (["--checkpoint", str(tmp_path / "t")], "a 'text' model, not a forecaster"),
            (["--checkpoint", f, "--csv", str(series)], "--csv needs --column NAME"),
            (["--checkpoint", f, "--column", "v"], "--column goes with --csv FILE"),
            (["--checkpoint", f, "--csv", str(series), "--column", "v"],
             "the series has 50 values; the model reads the last 60"),
            (["--checkpoint", str(tmp_path / "nowhere")], "--checkpoint: no checkpoint at")):
        capsys.readouterr()
        assert main(["predict", *argv]) == 2, argv
        one_error_line(capsys, needle)
    assert main(["predict", "--checkpoint", f]) == 0  # (the CO2 record: a date a week)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "date,forecast" and len(lines) == 4
    assert np.datetime64(lines[3].split(",")[0]) - np.datetime64(lines[2].split(",")[0]) == 7


@pytest.mark.parametrize("body,needle", [
    ("t,v\n0,1.5\n1,abc\n2,3\n", "row 3 of column 'v' is not a finite number: 'abc'"),
    ("t,v\n0,1.5\n1,inf\n2,3\n", "row 3 of column 'v' is not a finite number: 'inf'"),
    ("t,v\n0,\n1,\n", "the series has no numbers"),
])
def test_csv_bad_values(tmp_path, capsys, body, needle):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    assert main(["train", "--csv", str(path), "--column", "v", "--out",
                 str(tmp_path / "run"), "--quiet"]) == 2
    one_error_line(capsys, needle)


def test_csv_row_missing_the_cell(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("t,v\n0,1.0\n1\n2,3.0\n3,4.0\n")
    try:
        _, values = train.load_csv_column(str(path), "v")
    except train.UsageError as err:
        assert "row 3" in str(err)
    else:
        np.testing.assert_array_equal(values, [1.0, 2.0, 3.0, 4.0])


# -- the character model -------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A 30-step character model, checkpointed every 10 steps (constant learning rate,
    so that a resumed run can match an uninterrupted one)."""
    base = tmp_path_factory.mktemp("text")
    rng = np.random.default_rng(2024)
    words = ["lstm", "gate", "cell", "state", "hidden", "forget", "input", "output",
             "sequence", "of", "the", "a", "and", "Numba", "kernel"]
    text = " ".join(rng.choice(words, 700)) + ".\n"
    path = base / "text.txt"
    path.write_text(text)
    out = str(base / "run30")
    saved = []
    real = train.save_checkpoint

    def recording(path, model, optimizer=None, step=0, extra=None):
        saved.append(step)
        return real(path, model, optimizer, step=step, extra=extra)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "save_checkpoint", recording)
        rc = main(["train", "--text", str(path), "--out", out, "--steps", "30",
                   "--checkpoint-every", "10", "--schedule", "constant"] + TEXT_ARGS)
    assert rc == 0
    return dict(base=base, text=text, path=str(path), out=out, saved=saved)


def test_text_training_writes_metrics_and_checkpoints(text_run):
    out, text = text_run["out"], text_run["text"]
    assert text_run["saved"] == [10, 20, 30]
    m = _metrics(out)
    assert m["task"] == "text" and m["steps"] == 30 and m["characters"] == len(text)
    for key in ("val_bpc", "train_seconds", "tokens_per_second"):
        assert math.isfinite(m[key]) and m[key] > 0, key
    ck = numlstm.load_checkpoint(out)
    assert ck.step == ck.optimizer.steps == 30
    assert ck.extra["task"] == "text" and ck.extra["vocab"] == "".join(sorted(set(text)))
    assert [s for s, _ in ck.extra["losses"]] == list(range(1, 31))
    # val_bpc by hand: the mean cross-entropy of consecutive 16-character windows of
    # the last 10% of the text, in bits
    index = {c: i for i, c in enumerate(ck.extra["vocab"])}
    ids = np.array([index[c] for c in text])
    val = ids[-max(len(ids) // 10, 17):]
    n = (len(val) - 1) // 16
    x, y = val[:n * 16].reshape(n, 16), val[1:n * 16 + 1].reshape(n, 16)

    def bits(model):
        z = model.predict(x).astype(np.float64)
        z -= z.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        return -np.take_along_axis(logp, y[..., None], -1).mean() / math.log(2)
    bpc = bits(ck.model)
    assert abs(m["val_bpc"] - bpc) <= 1e-5 * bpc, (m["val_bpc"], bpc)
    for dtype in ("int8", "bfloat16"):  # the model with its LSTM quantized: within 1%
        q = bits(numlstm.quantize_dynamic(ck.model, dtype))
        assert abs(m[f"val_bpc_{dtype}"] - q) <= 1e-5 * q, dtype
        assert abs(q - bpc) < 0.01 * bpc, (dtype, q, bpc)
    assert _is_png(os.path.join(out, "loss.png"))


def test_text_resume_continues_from_step_30(text_run, tmp_path):
    other = str(tmp_path / "other")
    assert main(["train", "--text", text_run["path"], "--resume", text_run["out"],
                 "--steps", "40", "--out", other, "--schedule", "constant"] + TEXT_ARGS) == 0
    ck = numlstm.load_checkpoint(other)
    assert ck.step == ck.optimizer.steps == 40
    assert [s for s, _ in ck.extra["losses"]] == list(range(1, 41))
    assert _metrics(other)["steps"] == 40


def test_text_resume_matches_an_uninterrupted_run(text_run, tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    common = ["--text", text_run["path"], "--steps", "40", "--schedule", "constant",
              "--checkpoint-every", "0"] + TEXT_ARGS
    assert main(["train", "--out", straight] + common) == 0
    assert main(["train", "--out", resumed, "--resume", text_run["out"]] + common) == 0
    a, b = numlstm.load_checkpoint(straight), numlstm.load_checkpoint(resumed)
    assert a.step == b.step == 40
    wa, wb = a.model.get_weights(), b.model.get_weights()
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    assert a.extra["data_rng"] == b.extra["data_rng"]


def _greedy_by_hand(checkpoint, prompt, length, quantize=None):
    """Greedy decoding through model.predict: the whole sequence each time, argmax at
    its last step (generate instead carries each LSTM's state one character at a time);
    quantize: the model's LSTMs quantized first (numlstm.quantize_dynamic)."""
    ck = numlstm.load_checkpoint(checkpoint)
    vocab = ck.extra["vocab"]
    model = numlstm.quantize_dynamic(ck.model, quantize) if quantize else ck.model
    ids = [vocab.index(c) for c in prompt]
    for _ in range(length):
        ids.append(int(np.argmax(model.predict(np.array([ids]))[0, -1])))
    return "".join(vocab[i] for i in ids)


def test_generate_greedy_continues_the_prompt(text_run, tmp_path, capsys):
    prompt = text_run["text"][:7]
    args = ["generate", "--checkpoint", text_run["out"], "--prompt", prompt, "--length",
            "20", "--temperature", "0"]
    capsys.readouterr()
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    generated = first.rstrip("\n")
    assert len(generated) == len(prompt) + 20 and generated.startswith(prompt)
    assert generated == _greedy_by_hand(text_run["out"], prompt, 20)

    # a 30-step model may repeat one character; an untrained one with large LSTM
    # weights varies, so that the order of what generate prints is checked too
    vocab = "".join(sorted(set(text_run["text"])))
    model = train.char_model(len(vocab), 8, 16, 1, 0.0, seed=3)
    model.set_weights({k: (10 * v if k.startswith("lstm/") else v)
                       for k, v in model.get_weights().items()})
    numlstm.save_checkpoint(tmp_path, model, extra={"task": "text", "vocab": vocab})
    assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", prompt, "--length",
                 "20", "--temperature", "0"]) == 0
    generated = capsys.readouterr().out.rstrip("\n")
    assert len(set(generated[len(prompt):])) >= 4, generated
    assert generated == _greedy_by_hand(tmp_path, prompt, 20)
    for dtype in ("int8", "bfloat16"):  # the quantized model, one character at a time
        assert main(["generate", "--checkpoint", str(tmp_path), "--prompt", prompt,
                     "--length", "20", "--temperature", "0", "--quantize", dtype]) == 0
        quantized = capsys.readouterr().out.rstrip("\n")
        assert quantized == _greedy_by_hand(tmp_path, prompt, 20, dtype), dtype


def test_generate_sampling_is_seeded(text_run, capsys):
    def sample(seed):
        capsys.readouterr()
        assert main(["generate", "--checkpoint", os.path.join(text_run["out"],
                                                              "checkpoint.npz"),
                     "--length", "30", "--temperature", "1.5", "--seed", str(seed)]) == 0
        return capsys.readouterr().out.rstrip("\n")

    a, b, c = sample(1), sample(1), sample(2)
    vocab = numlstm.load_checkpoint(text_run["out"]).extra["vocab"]
    assert a == b and len(a) == 31 and a[0] == vocab[0] and set(a) <= set(vocab)
    assert a != c


def test_generate_refuses_unknown_characters_and_other_checkpoints(text_run, tmp_path,
                                                                   capsys):
    capsys.readouterr()
    assert main(["generate", "--checkpoint", text_run["out"], "--prompt", "lstm\u00e9#"]) == 2
    one_error_line(capsys, "--prompt: characters not in the model's vocabulary", "#",
                    "\u00e9")
    other = numlstm.Sequential([numlstm.Dense(2, 2)])
    numlstm.save_checkpoint(tmp_path, other, extra={"task": "forecast"})
    assert main(["generate", "--checkpoint", str(tmp_path)]) == 2
    one_error_line(capsys, "a 'forecast' model, not a character model")
    assert main(["generate", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    one_error_line(capsys, "--checkpoint: no checkpoint at")
    assert main(["train", "--text", text_run["path"], "--resume", str(tmp_path), "--out",
                 str(tmp_path / "r")] + TEXT_ARGS) == 2
    one_error_line(capsys, "--resume", "not a text model's")


# -- the adding problem ----------------------------------------------------------------------
def test_adding_batch_marks_two_values(rng):
    x, y = train.adding_batch(rng, 50, 9)
    assert x.shape == (50, 9, 2) and y.shape == (50, 1)
    marks = x[:, :, 1]
    assert ((marks == 0) | (marks == 1)).all()
    assert (marks[:, :4].sum(axis=1) == 1).all() and (marks[:, 4:].sum(axis=1) == 1).all()
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * marks).sum(axis=1), rtol=1e-6)


def test_train_adding(tmp_path, capsys):
    out = str(tmp_path / "adding")
    assert main(["train", "--task", "adding", "--steps", "20", "--seq-len", "12",
                 "--batch-size", "8", "--hidden", "8", "--out", out, "--quiet"]) == 0
    m = _metrics(out)
    # the same definition as the other tasks': tokens trained over the training time
    assert np.isclose(m["tokens_per_second"], 20 * 8 * 12 / m["train_seconds"])
    # 20 steps learn nothing, and the run says so, with what to change
    said = capsys.readouterr().out
    assert m["test_mse"] >= 0.9 * m["baseline_mse"]
    assert "did not beat always answering 1.0" in said and "--steps" in said
    assert m["task"] == "adding" and m["T"] == 12 and m["steps"] == 20
    # the sum of two uniform values has variance 1/6: always answering 1.0 scores that
    assert abs(m["baseline_mse"] - 1 / 6) < 0.03
    assert math.isfinite(m["test_mse"]) and m["test_mse"] > 0
    ck = numlstm.load_checkpoint(out)
    assert ck.step == ck.optimizer.steps == 20
    assert (ck.extra["task"], ck.extra["T"]) == ("adding", 12)
    assert [s for s, _, _ in ck.extra["curve"]] == [20]
    assert _is_png(os.path.join(out, "loss.png"))


def test_train_forecast_with_a_gru_records_its_quantized_metrics(tmp_path):
    out = str(tmp_path / "gru")
    assert main(["train", "--cell", "gru", "--epochs", "1", "--out", out, "--quiet"]) == 0
    m, ck = _metrics(out), numlstm.load_checkpoint(out)
    series = train.load_co2()[1]
    window, horizon, scale = (ck.extra[k] for k in ("window", "horizon", "scale"))
    origins = np.arange(len(series) - horizon - m["validation_origins"],
                        len(series) - horizon)
    x = np.stack([series[o - window + 1:o + 1] - series[o] for o in origins]) / scale
    truth = np.stack([series[o + 1:o + horizon + 1] for o in origins])
    for dtype in ("int8", "bfloat16"):
        q = numlstm.quantize_dynamic(ck.model, dtype)
        assert type(q.layers[0]).__name__ == "QuantizedGRU"
        pred = q.predict(x[:, :, None].astype(np.float32)) * scale + series[origins, None]
        rmse = math.sqrt(np.mean((pred - truth) ** 2))
        assert abs(m[f"val_rmse_{dtype}"] - rmse) <= 1e-5 * rmse, dtype


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_train_adding_with_another_cell(tmp_path, cell):
    out = str(tmp_path / cell)
    assert main(["train", "--task", "adding", "--cell", cell, "--steps", "5", "--seq-len",
                 "6", "--batch-size", "4", "--hidden", "8", "--out", out, "--quiet"]) == 0
    model = numlstm.load_checkpoint(out).model
    assert type(model.layers[0]).__name__ == cell.upper()
    assert model.name == f"adding_{cell}"


# -- bad arguments -------------------------------------------------------------------------
@pytest.mark.parametrize("argv,needles", [
    (["train", "--text", "{tmp}/missing.txt"], ["--text", "missing.txt: cannot read it"]),
    (["train", "--csv", "{tmp}/a.csv"], ["--csv needs --column NAME"]),
    (["train", "--text", "{tmp}/a.txt", "--csv", "{tmp}/a.csv", "--column", "v"],
     ["give --text or --csv, not both"]),
    (["train", "--task", "adding", "--csv", "{tmp}/a.csv", "--column", "v"],
     ["--csv goes with the forecast task"]),
    (["train", "--task", "text"], ["--task text needs --text FILE"]),
    (["train", "--task", "adding", "--seq-len", "1"], ["needs at least 2 steps, got 1"]),
    (["train", "--text", "{tmp}/short.txt", "--seq-len", "64"], ["too short for --seq-len 64"]),
    (["train", "--out", "{tmp}/a.txt/sub"], ["--out", "cannot create the folder"]),
    (["train", "--text", "{tmp}/a.txt", "--resume", "{tmp}/none"],
     ["--resume: no checkpoint at"]),
])
def test_bad_arguments_print_one_line(tmp_path, capsys, argv, needles):
    (tmp_path / "a.txt").write_text("hello world " * 20)
    (tmp_path / "short.txt").write_text("tiny")
    (tmp_path / "a.csv").write_text("t,v\n0,1\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--quiet"]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    assert main(argv) == 2
    one_error_line(capsys, *needles)
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


@pytest.mark.parametrize("argv,needle", [
    (["train", "--lr", "-1"], "argument --lr: expected a finite number > 0, got -1"),
    (["train", "--lr", "nan"], "argument --lr: expected a finite number > 0, got nan"),
    (["train", "--lr", "inf"], "argument --lr: expected a finite number > 0, got inf"),
    (["train", "--lr", "fast"], "argument --lr: expected a float, got 'fast'"),
    (["train", "--val-fraction", "1.5"],
     "argument --val-fraction: expected a fraction in (0, 1), got 1.5"),
    (["train", "--val-fraction", "nan"], "argument --val-fraction: expected a finite"),
    (["train", "--steps", "0"], "argument --steps: expected a finite number > 0, got 0"),
    (["train", "--dropout", "1"], "--dropout in [0, 1)"),
    (["train", "--dropout", "nan"], "argument --dropout: expected a finite number >= 0"),
    (["train", "--clip-norm", "-1"], "argument --clip-norm: expected a finite number >= 0"),
    (["train", "--clip-norm", "inf"], "argument --clip-norm: expected a finite number"),
    (["train", "--seed", "-1"], "argument --seed: expected a finite number >= 0, got -1"),
    (["train", "--checkpoint-every", "-1"], "argument --checkpoint-every: expected a"),
    (["train", "--task", "poetry"], "argument --task: invalid choice: 'poetry'"),
    (["generate"], "the following arguments are required: --checkpoint"),
    (["generate", "--checkpoint", "x", "--temperature", "-1"],
     "argument --temperature: expected a finite number >= 0, got -1"),
    (["bench", "--shapes", "0,1,8"], "argument --shapes: expected T,B,H or T,B,I,H"),
    (["bench", "--shapes", "4,1"], "argument --shapes: expected T,B,H"),
    (["bench", "--memory", "0", "0", "0"], "argument --memory: expected a finite number > 0"),
    (["bench", "--repeats", "0"], "argument --repeats: expected a finite number > 0"),
    (["demo", "--steps", "0"], "argument --steps: expected a finite number > 0"),
    (["demo", "--hidden-size", "-4"], "argument --hidden-size: expected a finite number"),
])
def test_bad_options_are_one_line_argparse_errors(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert lines[0].endswith("--help)")


def test_command_line_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "numlstm", "train", "--text",
                           str(tmp_path / "missing.txt"), "--quiet"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("numlstm train: --text "), proc.stderr
    assert "cannot read it" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_plots_say_what_they_show(monkeypatch):
    """A loss plot labels its y axis as asked, and its log axis reads 0.6, 3 (not
    6x10^-1, 3x10^0); the forecast plot labels its x axis."""
    from numlstm import plot
    figs = []
    monkeypatch.setattr(plot, "_save", lambda fig, path: figs.append(fig))
    plot.loss_curve("x.png", {"training batches": ([1, 2, 3], [3.0, 1.0, 0.6])}, "step",
                    "character model", ylabel="bits per character")
    ax = figs[-1].axes[0]
    assert ax.get_ylabel() == "bits per character" and ax.get_yscale() == "log"
    figs[-1].canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)
              if t.get_text()]
    assert labels and not any("\\times" in t or "×" in t for t in labels), labels
    plot.forecast("f.png", [0, 1, 2], [1.0, 2.0, 3.0], [], "forecasts", "ppm", xlabel="date")
    assert figs[-1].axes[0].get_xlabel() == "date"


FRAMES_ARGS = ["--task", "frames", "--seq-len", "3", "--batch-size", "4", "--hidden", "4",
               "--quiet"]


def test_train_frames_metrics_match_the_checkpoint(tmp_path):
    """val_mse and copy_last_mse recomputed from the saved model and the same
    validation data; the PNGs written; the step count and throughput as run."""
    from numlstm import frames
    out = str(tmp_path / "frames")
    assert main(["train", *FRAMES_ARGS, "--steps", "12", "--out", out]) == 0
    m = _metrics(out)
    assert m["task"] == "frames" and m["T"] == 3 and m["steps"] == 12
    seeds = np.random.SeedSequence(0).generate_state(2)
    x, y = frames.next_frame_pairs(frames.moving_digits(np.random.default_rng(seeds[1]),
                                                        256, 4, m["frame_size"]))
    assert np.isclose(m["copy_last_mse"], frames.copy_last_mse(x, y))
    model = numlstm.load_checkpoint(out).model
    assert np.isclose(m["val_mse"], frames.mse(model.predict(x), y), rtol=1e-5)
    assert np.isclose(m["change_percent"],
                      100 * (m["val_mse"] - m["copy_last_mse"]) / m["copy_last_mse"])
    assert np.isclose(m["tokens_per_second"], 12 * 4 * 3 / m["train_seconds"])
    for png in ("loss.png", "frames.png"):
        assert _is_png(os.path.join(out, png))


def test_train_frames_resume_ends_as_an_uninterrupted_run(tmp_path):
    """(a constant schedule: the cosine one's shape depends on --steps)"""
    whole, part = str(tmp_path / "whole"), str(tmp_path / "part")
    args = [*FRAMES_ARGS, "--schedule", "constant"]
    assert main(["train", *args, "--steps", "6", "--out", whole]) == 0
    assert main(["train", *args, "--steps", "3", "--out", part]) == 0
    assert main(["train", *args, "--steps", "6", "--resume", part]) == 0
    a, b = numlstm.load_checkpoint(whole), numlstm.load_checkpoint(part)
    assert b.step == 6
    for key, w in a.model.get_weights().items():
        np.testing.assert_array_equal(b.model.get_weights()[key], w)


def test_train_frames_takes_layers_and_dropout(tmp_path):
    """--layers stacks ConvLSTM2D layers (filters -> filters after the first) and
    --dropout puts a Dropout after each; the default is the one-layer model."""
    from numlstm import frames
    out = str(tmp_path / "deep")
    assert main(["train", *FRAMES_ARGS, "--steps", "3", "--layers", "2", "--dropout", "0.25",
                 "--out", out]) == 0
    model = numlstm.load_checkpoint(out).model
    assert [type(l).__name__ for l in model.layers] == [
        "ConvLSTM2D", "Dropout", "ConvLSTM2D", "Dropout", "Dense"]
    assert model.layers[2].in_channels == model.layers[2].filters == 4
    assert model.layers[1].p == 0.25
    assert [type(l).__name__ for l in frames.frames_model(4, 0).layers] == [
        "ConvLSTM2D", "Dense"]


def test_train_frames_refuses_a_single_frame(tmp_path, capsys):
    assert main(["train", "--task", "frames", "--seq-len", "1", "--out",
                 str(tmp_path / "f"), "--quiet"]) != 0
    one_error_line(capsys, "--seq-len", "2 frames")
