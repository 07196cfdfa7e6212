"""The comparison command and the memory count of the training cache."""
import numpy as np
import pytest

import numlstm
from numlstm import bench, cli


def test_training_cache_holds_gates_c_and_h_and_nothing_else():
    m = bench.training_memory(T=96, B=5, H=64)
    assert m["expected"] == 96 * 5 * 6 * 64 * 4
    assert m["expected"] <= m["retained"] <= 1.02 * m["expected"] + 65536
    # The peak adds the output handed to the caller, not another cache.
    assert m["peak"] <= m["retained"] + 96 * 5 * 64 * 4 * 1.1 + 262144


def test_compare_alternates_with_torch_and_derives_figures():
    lines = []
    rows = bench.compare([(4, 2, 8)], repeats=2, out=lines.append)
    assert [r["mode"] for r in rows] == ["inference", "training"]
    for r in rows:
        flops = bench.lstm_flops(4, 2, 8, 8, r["mode"] == "training")
        for lib in ("numlstm", "torch"):
            assert np.isclose(r[f"{lib}_gflops"], flops / r[f"{lib}_ms"] / 1e6)
            assert np.isclose(r[f"{lib}_tokens_per_s"], 8 / (r[f"{lib}_ms"] / 1e3))
        assert np.isclose(r["ratio"], r["torch_ms"] / r["numlstm_ms"])
    assert lines[0].startswith("roof: float32 FMA peak")
    assert any("%roof: that as a share of the roof above" in line for line in lines[:5])
    assert any(line.startswith("training      4    2     8 |") for line in lines)


def test_bench_command_writes_json(tmp_path, capsys):
    path = tmp_path / "rows.json"
    assert cli.main(["bench", "--shapes", "3,2,8", "--repeats", "1", "--json",
                     str(path)]) == 0
    assert "ratio = torch time / numlstm time" in capsys.readouterr().out
    import json
    assert len(json.loads(path.read_text())) == 2


def test_memory_command(capsys):
    assert cli.main(["bench", "--memory", "16", "2", "8"]) == 0
    assert "the cache must hold gates, c and h" in capsys.readouterr().out


def test_compare_runs_the_gru_against_torch_gru():
    rows = bench.compare([(3, 2, 8)], repeats=1, cell="gru", out=lambda line: None)
    assert {r["cell"] for r in rows} == {"gru"}
    r = rows[1]
    flops = bench.lstm_flops(3, 2, 8, 8, True, "gru")
    assert flops == 3 * 2 * 3 * 2 * 8 * 16 * 3
    assert np.isclose(r["numlstm_gflops"], flops / r["numlstm_ms"] / 1e6)


def test_step_cost_counts_microseconds_per_step():
    costs = bench.step_cost("gru", steps=20, blocks=1)
    assert set(costs) == {"numlstm", "torch"}
    assert all(0 < v < 1e5 for v in costs.values())


def test_parity_reports_small_errors_and_sees_a_wrong_weight(monkeypatch):
    good = bench.parity("gru", np.float64, seed=1)
    assert set(good) == {"y", "h_n", "dh0", "dx", "weight grads"}
    assert max(good.values()) < 1e-10
    # The same comparison notices a layer that is off: the check can fail.
    import numlstm
    original = numlstm.GRU.load_weights

    def perturbed(self, weights, layout="torch"):
        original(self, weights, layout)
        with self.updating() as p:
            p["bias_hh_l0"][0] += 0.1
    monkeypatch.setattr(numlstm.GRU, "load_weights", perturbed)
    bad = bench.parity("gru", np.float64, seed=1)
    assert bad["y"] > 1e-4


@pytest.mark.parametrize("cell,names", [("lstm", ("all three", "zoneout=0.1")),
                                        ("gru", ("reset_after=False",))])
def test_option_costs_rows(cell, names):
    """The table's rows for some variants (each pair of activations compiles every
    kernel again, about 40 s a cell: the layers' own tests run those), and every
    variant of the full table makes its layer."""
    from numlstm import bench
    lines = []
    rows = bench.option_costs(shapes=((4, 2, 8),), repeats=1, out=lines.append, cell=cell,
                              names=names)
    assert {r["option"] for r in rows} == {"plain", *names}
    assert len(rows) == 2 * (1 + len(names))  # (inference and training)
    assert all(r["ratio"] == 1.0 for r in rows if r["option"] == "plain")
    assert all(r["ms"] > 0 for r in rows) and len(lines) == 2 + len(names)
    layers = bench.option_layers(8, cell)
    assert list(layers) == list(bench.VARIANTS[cell])
    assert all(layer.hidden_size == 8 for layer in layers.values())
    with pytest.raises(ValueError, match="no lstm variant named 'zonout'"):
        bench.option_layers(8, "lstm", ["zonout"])


def test_a_busy_process_ends_when_the_bench_that_started_it_is_killed():
    """--load's busy processes end with the bench's process, even when it is killed
    before its cleanup runs (SIGTERM, SIGKILL): none keeps a core busy after it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    parent = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom numlstm.bench_isolated import _busy_loop\n"
         "print(_busy_loop().pid, flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())

    def state():  # the busy process's state: R running, Z a zombie, None gone
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return None
    time.sleep(0.2)
    assert state() in ("R", "S")
    os.kill(parent.pid, signal.SIGTERM)
    parent.wait()
    deadline = time.monotonic() + 10
    while state() not in (None, "Z", "X") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state() in (None, "Z", "X")


def test_isolated_bench_times_each_library_in_its_own_process_under_load():
    """One round at two tiny shapes: numlstm (two copies at once), torch and
    onnxruntime each in fresh processes, one busy process meanwhile; the figures
    derive from the times as the table says."""
    from numlstm import bench_isolated as iso
    shapes = [(2, 1, 3, 4), (3, 2, 5, 8)]
    rows = iso.run(shapes, ["numlstm", "torch", "onnxruntime"], ["inference", "training",
                                                                 "step"],
                   load=1, copies=2, rounds=1, repeats=3, min_seconds=0.0)
    assert [(r["T"], r["mode"]) for r in rows] == [
        (T, m) for T, *_ in shapes for m in ("inference", "training", "step")]
    for r in rows:
        assert r["load"] == 1 and r["copies"] == 2
        flops = iso.flops(r["T"], r["B"], r["I"], r["H"], r["mode"])
        for lib in ("numlstm", "torch") + (() if r["mode"] == "training" else ("onnxruntime",)):
            assert 0 < r[lib + "_ms"] < 1e4
            assert np.isclose(r[lib + "_gflops"], flops / r[lib + "_ms"] / 1e6)
            if lib != "numlstm":
                assert np.isclose(r[lib + "_ratio"], r[lib + "_ms"] / r["numlstm_ms"])
        assert ("onnxruntime_ms" in r) == (r["mode"] != "training")
    assert iso.flops(5, 2, 3, 4, "step") == 2 * 2 * 16 * 7
    lines = []
    iso.table(rows, ["numlstm", "torch", "onnxruntime"], 100.0, out=lines.append)
    assert "%roof:" in lines[0] and "ratio:" in lines[0]  # the columns explained first
    assert lines[1].split()[:4] == ["mode", "T,B,I,H", "|", "numlstm"]
    assert any(line.startswith(f"{'training':<9} {'3,2,5,8':>16} |") for line in lines)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_isolated_bench_times_the_cell_asked_for(tmp_path, cell):
    """--cell gru, rnn: each library's call is of that cell (numlstm's layer, torch's
    module, the ONNX file's operator), at every mode; the FLOPs count its gates."""
    from numlstm import bench_isolated as iso
    name, gates = iso.CELLS[cell]
    for lib in ("numlstm", "torch", "onnxruntime"):
        for mode in ("inference", "training", "step"):
            if iso.supports(lib, mode):
                call = iso._build(lib, 3, 2, 5, 8, mode, str(tmp_path), cell=cell)
                call()
                call()
    import onnx
    (path,) = [p for p in tmp_path.iterdir() if p.name.endswith("_inference.onnx")]
    assert path.name.startswith(cell) and name.upper() in {
        n.op_type.upper() for n in onnx.load(str(path)).graph.node}
    assert iso.flops(5, 2, 3, 4, "inference", cell) == 2 * 5 * 2 * gates * 4 * 7
    if cell == "rnn":
        with pytest.raises(ValueError, match="the LSTM and the GRU"):
            iso.run([(1, 1, 1, 1)], ["numlstm"], dtype="int8", cell="rnn")
    else:  # (the quantized GRU: the call's outputs are its outputs)
        out = iso._build("numlstm", 3, 2, 5, 8, "inference", str(tmp_path), "int8", cell)()
        layer = numlstm.quantize_dynamic(numlstm.GRU(5, 8, seed=3 + 2 + 5 + 8), "int8")
        x = np.random.default_rng(3 * 7 + 2).standard_normal((3, 2, 5)).astype(np.float32)
        np.testing.assert_array_equal(out[0], layer(x)[0])


def test_isolated_bench_refuses_what_it_cannot_time():
    from numlstm import bench_isolated as iso
    with pytest.raises(ValueError, match="libraries"):
        iso.run([(1, 1, 1, 1)], ["numlstm", "tensorflow"])
    with pytest.raises(ValueError, match="modes"):
        iso.run([(1, 1, 1, 1)], ["numlstm"], ["backward"])
    with pytest.raises(ValueError, match="copies"):
        iso.run([(1, 1, 1, 1)], ["numlstm"], copies=0)


def test_bench_command_isolated_writes_json(tmp_path, capsys):
    path = tmp_path / "rows.json"
    assert cli.main(["bench", "--isolated", "--shapes", "2,1,3,4", "--rounds", "1",
                     "--repeats", "2", "--peer", "onnxruntime", "--modes", "inference",
                     "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("roof: float32 FMA peak")
    assert "onnxruntime ms" in out and "torch ms" not in out
    import json
    (row,) = json.loads(path.read_text())
    assert row["I"] == 3 and row["H"] == 4 and row["fma_peak"] > 0
    assert row["onnxruntime_ratio"] > 0


def test_bench_command_int8_against_torchs_int8(tmp_path, capsys):
    """--dtype int8: numlstm's quantized layer, its float32 layer and torch's
    quantize_dynamic int8 LSTM, each timed in its own process; training refused."""
    path = tmp_path / "rows.json"
    assert cli.main(["bench", "--isolated", "--dtype", "int8", "--peer", "torch", "--shapes",
                     "2,1,3,4", "--rounds", "1", "--repeats", "2", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "quantize_dynamic(lstm, 'int8')" in out and "numlstm_f32 ms" in out
    import json
    rows = json.loads(path.read_text())
    assert [r["mode"] for r in rows] == ["inference", "step"]
    for r in rows:
        assert r["dtype"] == "int8" and r["torch_ratio"] > 0 and r["numlstm_f32_ratio"] > 0
    assert cli.main(["bench", "--isolated", "--dtype", "int8", "--modes", "training",
                     "--shapes", "2,1,3,4"]) == 2
    assert "inference-only" in capsys.readouterr().err
    assert cli.main(["bench", "--dtype", "bfloat16", "--shapes", "2,1,4"]) == 2
    assert "add --isolated" in capsys.readouterr().err
    from numlstm import bench_isolated as iso
    with pytest.raises(ValueError, match="onnxruntime runs the float32 file"):
        iso.run([(1, 1, 1, 1)], ["numlstm", "onnxruntime"], dtype="int8")


def test_bench_options_of_isolation_need_isolated(capsys):
    assert cli.main(["bench", "--load", "1", "--shapes", "2,1,4"]) == 2
    assert "add --isolated" in capsys.readouterr().err
    assert cli.main(["bench", "--shapes", "2,1,3,4"]) == 2
    assert "give T,B,I,H with --isolated" in capsys.readouterr().err


def _fixed_roof(monkeypatch):
    """Skip measuring the roof (a 2048^3 product): these tests check the figures'
    arithmetic, not the machine."""
    monkeypatch.setattr(bench, "roofs", lambda: dict(
        fma_peak=100.0, fma_peak_1thread=50.0, numpy_matmul=80.0, numlstm_matmul=90.0,
        best_matmul=90.0))


def test_convlstm_bench_against_torch_and_keras_writes_json(tmp_path, capsys, monkeypatch):
    """--cell convlstm2d at one tiny uneven shape: parity of the three first, then each
    library timed in its own process; the rows' figures derive from the times."""
    from numlstm import bench_convlstm as conv
    _fixed_roof(monkeypatch)
    path = tmp_path / "rows.json"
    assert cli.main(["bench", "--isolated", "--cell", "convlstm2d", "--shapes", "2,1,5,6,2,3",
                     "--peer", "torch", "--peer", "keras", "--rounds", "1", "--repeats", "2",
                     "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "parity before timing" in out and "keras ms" in out and "T,B,R,C,I,F,k" in out
    assert any(line.startswith("training") and "2,1,5,6,2,3,3 |" in line
               for line in out.splitlines())
    import json
    rows = json.loads(path.read_text())
    assert [r["mode"] for r in rows] == ["inference", "training"]
    for r in rows:
        shape = tuple(r[k] for k in conv.KEYS)
        assert shape == (2, 1, 5, 6, 2, 3, 3) and r["cell"] == "convlstm2d"
        assert np.isclose(r["gflop"], conv.flops(*shape, r["mode"]) / 1e9)
        for lib in conv.LIBRARIES:
            assert 0 < r[lib + "_ms"] < 1e4
            assert np.isclose(r[lib + "_gflops"], r["gflop"] / (r[lib + "_ms"] / 1e3))
        for lib in ("torch", "keras"):
            assert np.isclose(r[lib + "_ratio"], r[lib + "_ms"] / r["numlstm_ms"])
            assert 0 <= r[lib + "_parity"] < 1e-4
        assert r["fma_peak"] == 100.0 and r["load"] == 0 and r["rounds"] == 1
    assert conv.flops(10, 4, 64, 64, 1, 16, 3, "inference") == 2 * 10 * 4 * 64 * 64 * 9 * 17 * 64


def test_convlstm_parity_fails_loudly_on_a_disagreement():
    from numlstm import bench_convlstm as conv
    rng = np.random.default_rng(0)
    ref = {"y": rng.standard_normal((2, 3, 4)), "bias": rng.standard_normal(8)}
    good = {k: v + 1e-6 for k, v in ref.items()}
    assert conv.check_parity({"numlstm": ref, "torch": good}) == {
        "torch": pytest.approx(1e-6)}
    bad = dict(good, y=good["y"].copy())
    bad["y"][1, 2, 3] += 1e-3
    with pytest.raises(conv.ParityError, match=r"keras y: 1 of 24 entries differ\n"
                                               r"    y\[1, 2, 3\]: keras"):
        conv.check_parity({"numlstm": ref, "torch": good, "keras": bad})


def test_convlstm_bench_refuses_what_it_cannot_time(capsys):
    from numlstm import bench_convlstm as conv
    with pytest.raises(ValueError, match="k must be odd"):
        conv.shape7((2, 1, 5, 6, 2, 3, 4))
    with pytest.raises(ValueError, match="libraries"):
        conv.run([(2, 1, 5, 6, 2, 3)], ["numlstm", "onnxruntime"])
    for argv, message in ((["--shapes", "2,1,5,6,2,3"], "add --isolated"),
                          (["--isolated", "--shapes", "2,1,4"], "T,B,R,C,I,F"),
                          (["--isolated", "--modes", "step"], "--modes inference training"),
                          (["--isolated", "--peer", "onnxruntime"], "torch and keras")):
        assert cli.main(["bench", "--cell", "convlstm2d"] + argv) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["bench", "--isolated", "--peer", "keras", "--shapes", "2,1,4"]) == 2
    assert "--cell convlstm2d only" in capsys.readouterr().err


def test_seq2seq_bench_against_torch_writes_json(tmp_path, capsys, monkeypatch):
    """--cell seq2seq at one tiny shape: parity with torch first (logits, loss,
    gradients, greedy outputs), then each library timed in its own processes; the
    rows' rates derive from the times."""
    from numlstm import bench_seq2seq as s2s
    _fixed_roof(monkeypatch)
    path = tmp_path / "rows.json"
    assert cli.main(["bench", "--isolated", "--cell", "seq2seq", "--shapes", "3,5,4",
                     "--rounds", "1", "--repeats", "2", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "parity before timing" in out and "the same greedy outputs" in out
    assert any(line.startswith("training") and "3,5,4 |" in line for line in out.splitlines())
    import json
    rows = json.loads(path.read_text())
    assert [r["mode"] for r in rows] == ["inference", "training"]
    tokens = int(s2s._problem((3, 5, 4))[4].sum())
    for r in rows:
        assert (r["B"], r["S"], r["T"]) == (3, 5, 4) and r["cell"] == "seq2seq"
        assert 0 < r["numlstm_ms"] < 1e4 and 0 < r["torch_ms"] < 1e4
        assert np.isclose(r["torch_ratio"], r["torch_ms"] / r["numlstm_ms"])
        assert 0 <= r["torch_parity"] < 1e-4
        rate = r["numlstm_seq_per_s"] if r["mode"] == "inference" else r["numlstm_tokens_per_s"]
        assert np.isclose(rate, (3 if r["mode"] == "inference" else tokens)
                          / (r["numlstm_ms"] / 1e3))


def test_seq2seq_parity_fails_loudly_and_the_bench_refuses_what_it_cannot_time(capsys):
    from numlstm import bench_seq2seq as s2s
    rng = np.random.default_rng(0)
    ref = {"logits": rng.standard_normal((2, 3, 4)), "loss": np.array(1.5),
           "greedy": np.array([[3, -1], [4, 5]])}
    lt = np.array([3, 2])
    good = {k: v + (1e-6 if k != "greedy" else 0) for k, v in ref.items()}
    assert s2s.check_parity(ref, good, lt) == pytest.approx(1e-6)
    junk = dict(good, logits=good["logits"].copy())
    junk["logits"][1, 2] += 1.0  # past the second target's length: not compared
    assert s2s.check_parity(ref, junk, lt) == pytest.approx(1e-6)
    bad = dict(good, logits=good["logits"].copy())
    bad["logits"][0, 2, 1] += 1e-2
    with pytest.raises(s2s.ParityError, match=r"logits: 1 of 20 differ"):
        s2s.check_parity(ref, bad, lt)
    with pytest.raises(s2s.ParityError, match="greedy outputs differ"):
        s2s.check_parity(ref, dict(good, greedy=np.array([[3, -1], [4, 6]])), lt)
    with pytest.raises(ValueError, match="T >= 2"):
        s2s.shape3((2, 5, 1))
    for argv, message in ((["--shapes", "2,5,4"], "add --isolated"),
                          (["--isolated", "--modes", "step"], "--modes inference training"),
                          (["--isolated", "--peer", "onnxruntime"], "the peer is torch"),
                          (["--isolated", "--shapes", "2,5,1"], "T >= 2")):
        assert cli.main(["bench", "--cell", "seq2seq"] + argv) == 2
        assert message in capsys.readouterr().err


def test_asv_convlstm_benchmarks_run():
    import importlib.util
    import pathlib
    path = (pathlib.Path(__file__).resolve().parent.parent / "asv_bench" / "benchmarks"
            / "convlstm.py")
    spec = importlib.util.spec_from_file_location("asv_convlstm_suite", path)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    assert suite.ConvLSTM2D.param_names == ["T", "F", "B"]
    b = suite.ConvLSTM2D()
    b.setup(2, 3, 1)
    b.time_inference(2, 3, 1)
    b.time_training(2, 3, 1)
    assert b.track_gflops_training(2, 3, 1) > 0
