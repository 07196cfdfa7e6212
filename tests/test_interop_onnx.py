"""export_onnx / import_onnx: files pass onnx.checker, onnxruntime computes what numlstm
computes at shapes of its choosing (batch and time are dynamic), and import reads
the same layer or model back."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import numlstm
from helpers import assert_close

TOL = 2e-6  # float32, relative to the largest output


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _ops(model):
    return [n.op_type for n in model.graph.node]


LAYERS = [("lstm", {}), ("gru", {}), ("gru", {"reset_after": False}),
          ("rnn", {"nonlinearity": "tanh"}), ("rnn", {"nonlinearity": "relu"}),
          ("lstm", {"peephole": True}),
          ("lstm", {"recurrent_activation": "hard_sigmoid", "activation": "relu"}),
          ("gru", {"recurrent_activation": "hard_sigmoid", "activation": "relu"})]
LAYER_IDS = ["lstm", "gru", "gru-reset-before", "rnn-tanh", "rnn-relu", "lstm-peephole",
             "lstm-hard-sigmoid-relu", "gru-hard-sigmoid-relu"]


@pytest.mark.parametrize("cell,options", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_layer_runs_in_onnxruntime(tmp_path, rng, cell, options, num_layers, bidirectional):
    layer = numlstm.layers.CELLS[cell](3, 5, num_layers=num_layers,
                                       bidirectional=bidirectional, seed=1, **options)
    if options.get("peephole"):  # (they start at zero)
        weights = layer.export_weights("torch")
        for name in weights:
            if name.startswith("weight_peephole"):
                weights[name] = rng.standard_normal(weights[name].shape)
        layer.load_weights(weights, "torch")
    path = tmp_path / "layer.onnx"
    model = numlstm.export_onnx(layer, path, lengths=True, initial_state=True)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    op = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell]
    assert _ops(model).count(op) == num_layers and "Loop" not in _ops(model)
    session = _session(path)
    D = 2 if bidirectional else 1
    for T, B in ((7, 4), (1, 1), (12, 3)):  # none is special to the file
        x = rng.standard_normal((T, B, 3)).astype(np.float32)
        lengths = rng.integers(1, T + 1, B)
        h0 = rng.standard_normal((num_layers * D, B, 5)).astype(np.float32)
        c0 = rng.standard_normal((num_layers * D, B, 5)).astype(np.float32)
        feeds = {"x": x, "lengths": lengths, "h0": h0}
        if cell == "lstm":
            feeds["c0"] = c0
        got = session.run(None, feeds)
        y, state = layer(x, (h0, c0) if cell == "lstm" else h0, lengths=lengths)
        want = [y] + list(state if cell == "lstm" else [state])
        assert len(got) == len(want)
        for name, a, b in zip(["y", "h_n", "c_n"], got, want):
            assert_close(a, b, TOL, f"{name} at T={T} B={B}")
    back = numlstm.import_onnx(path)  # the same layer, options and weights
    assert back.get_config() == layer.get_config()
    for name, w in layer.export_weights("torch").items():
        np.testing.assert_array_equal(back.export_weights("torch")[name], w, err_msg=name)


@pytest.mark.parametrize("merge_mode", ["sum", "mul", "ave", None])
def test_merge_modes_and_batch_first(tmp_path, rng, merge_mode):
    layer = numlstm.LSTM(3, 4, bidirectional=True, batch_first=True, merge_mode=merge_mode,
                         seed=0)
    path = tmp_path / "merge.onnx"
    numlstm.export_onnx(layer, path)
    x = rng.standard_normal((2, 6, 3)).astype(np.float32)
    got = _session(path).run(None, {"x": x})
    y, (h_n, c_n) = layer(x)
    want = (list(y) if merge_mode is None else [y]) + [h_n, c_n]
    for a, b in zip(got, want):
        assert_close(a, b, TOL, f"merge_mode={merge_mode}")


def _models(rng):
    V = 13
    return {
        "embedding-lstm-dense": numlstm.Sequential([
            numlstm.Embedding(V, 6, seed=1), numlstm.LSTM(6, 8, num_layers=2, seed=2),
            numlstm.Dropout(0.2), numlstm.Dense(8, V, seed=3)]),
        "embedding-bigru-last": numlstm.Sequential([
            numlstm.Embedding(V, 5, seed=1),
            numlstm.GRU(5, 4, bidirectional=True, return_sequences=False, seed=2),
            numlstm.Dense(8, 3, activation="relu", seed=3), numlstm.Dense(3, 2, seed=4)]),
        "features-rnn-gru-ave": numlstm.Sequential([
            numlstm.RNN(3, 5, bidirectional=True, seed=2),
            numlstm.GRU(10, 4, bidirectional=True, reset_after=False, merge_mode="ave",
                        return_sequences=False, seed=3),
            numlstm.Dense(4, 1, activation="sigmoid", seed=4)]),
        "features-lstm-sum-seq": numlstm.Sequential([
            numlstm.LSTM(3, 4, bidirectional=True, merge_mode="sum", seed=1),
            numlstm.Dense(4, 2, seed=2)]),
    }


def _inputs(name, rng, B, T):
    if name.startswith("embedding"):
        return rng.integers(0, 13, (B, T))
    return rng.standard_normal((B, T, 3)).astype(np.float32)


@pytest.mark.parametrize("name", list(_models(np.random.default_rng(0))))
def test_sequential_runs_in_onnxruntime_and_imports_back(tmp_path, rng, name):
    model = _models(rng)[name]
    path = tmp_path / f"{name}.onnx"
    numlstm.export_onnx(model, path, lengths=True)
    session = _session(path)
    back = numlstm.import_onnx(path)
    assert back.get_config() == model.get_config()
    for B, T in ((3, 8), (1, 1), (5, 4)):
        x = _inputs(name, rng, B, T)
        lengths = rng.integers(1, T + 1, B)
        want = model.predict(x, lengths=lengths)
        (got,) = session.run(None, {"x": x, "lengths": lengths})
        assert_close(got, want, TOL, f"{name} at B={B} T={T}")
        assert_close(back.predict(x, lengths=lengths), want, 0, "imported model")


def test_operators_of_an_exported_model(tmp_path):
    model = _models(np.random.default_rng(0))["embedding-lstm-dense"]
    exported = numlstm.export_onnx(model, tmp_path / "m.onnx")
    ops = _ops(exported)
    # The recurrence is one LSTM node per layer; nothing is unrolled over time.
    assert sorted(set(ops)) == ["Add", "Gather", "Identity", "LSTM", "MatMul", "Reshape",
                                "Squeeze", "Transpose"]
    assert ops.count("LSTM") == 2
    graph = exported.graph
    assert [i.name for i in graph.input] == ["x"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "time"]


def test_float64_files(tmp_path, rng):
    layer = numlstm.GRU(3, 4, dtype=np.float64, seed=0)
    path = tmp_path / "f64.onnx"
    model = numlstm.export_onnx(layer, path, dtype=np.float64)
    assert model.graph.initializer[0].data_type == onnx.TensorProto.DOUBLE
    back = numlstm.import_onnx(path)
    assert back.dtype == np.float64
    for k, v in layer.params.items():
        np.testing.assert_array_equal(back.params[k], v)
    # float32 is the default, the type onnxruntime runs recurrent operators in.
    numlstm.export_onnx(layer, path)
    assert numlstm.import_onnx(path).dtype == np.float32


def test_export_errors_leave_files_as_they_were(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(TypeError, match="expected an LSTM, GRU or RNN layer or a Sequential"):
        numlstm.export_onnx(numlstm.Dense(2, 3), path)
    with pytest.raises(ValueError, match="initial_state=True is for a single recurrent"):
        numlstm.export_onnx(numlstm.Sequential([numlstm.LSTM(2, 3)]), path,
                            initial_state=True)
    with pytest.raises(TypeError, match="dtype: expected np.float32 or np.float64, got"):
        numlstm.export_onnx(numlstm.LSTM(2, 3), path, dtype=np.int32)
    with pytest.raises(TypeError, match="lengths: expected True or False, got ndarray"):
        numlstm.export_onnx(numlstm.LSTM(2, 3), path, lengths=np.array([3, 4]))
    assert path.read_bytes() == b"previous"


def test_import_refuses_files_it_did_not_write(tmp_path):
    from onnx import helper, TensorProto
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(ValueError, match="was not written by numlstm.export_onnx"):
        numlstm.import_onnx(path)
    model = onnx.load(path)
    helper.set_model_props(model, {"numlstm": json.dumps({"format": "numlstm-onnx",
                                                          "version": 99})})
    onnx.save(model, path)
    with pytest.raises(ValueError, match="to be format 'numlstm-onnx' version 1, got "
                                         r"\('numlstm-onnx', 99\)"):
        numlstm.import_onnx(path)
    helper.set_model_props(model, {"numlstm": json.dumps({"format": "numlstm-onnx",
                                                          "version": 1, "kind": "other"})})
    onnx.save(model, path)
    with pytest.raises(ValueError, match="does not describe a model it can rebuild"):
        numlstm.import_onnx(path)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\xff\xff not protobuf")
    with pytest.raises(ValueError, match="garbage.onnx is not a readable ONNX file"):
        numlstm.import_onnx(garbage)


def test_numlstm_works_without_onnx_and_says_what_to_install():
    import subprocess
    import sys
    code = ("import sys; sys.modules['onnx'] = None\n"
            "from numlstm import *\n"
            "import numlstm\n"
            "try:\n"
            "    numlstm.export_onnx(numlstm.LSTM(2, 3), 'x.onnx')\n"
            "except ImportError as err:\n"
            "    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'numlstm[interop]'" in out.stdout
