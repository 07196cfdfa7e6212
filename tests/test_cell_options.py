"""The LSTM's cell options, cell_clip, gate_clip and input_forget, through the layer on every
backend (the kernels themselves are tested in tests/kernels), and where they meet
ONNX, torch and checkpoints."""
import numpy as np
import onnxruntime as ort
import pytest

import numlstm
from helpers import assert_close, lstm_layer_and_reference, run_steps

OPTIONS = [{"cell_clip": 0.3}, {"input_forget": True}, {"gate_clip": 0.5},
           {"cell_clip": 0.3, "input_forget": True, "gate_clip": 0.5}]
IDS = ["clip", "coupled", "gate-clip", "all"]


CASES = [(o, "cpu", d, tol) for o in OPTIONS for d, tol in ((np.float64, 1e-12),
                                                              (np.float32, 2e-5))]
# (the simulator is slow: one CUDA case, all options; each alone is a kernel test)
CASES.append((OPTIONS[3], "cuda", np.float32, 2e-5))


@pytest.mark.parametrize("options,backend,dtype,tol", CASES,
                         ids=[f"{b}-{np.dtype(d).name}-{'-'.join(o)}" for o, b, d, _ in CASES])
def test_backends_against_the_reference(rng, options, backend, dtype, tol):
    got, want = lstm_layer_and_reference(rng, options, backend, dtype)
    if "cell_clip" in options:
        assert np.isclose(np.abs(want["c"]), 0.3).any()  # the clip bites
    for k in want:
        assert_close(got[k], want[k], tol if k in ("y", "h", "c") else 5 * tol, k)


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_step_equals_the_sequence(rng, options):
    lstm = numlstm.LSTM(3, 6, num_layers=2, seed=0, **options)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    y, _ = lstm(x)
    ys, _ = run_steps(lstm, x)
    for t in range(5):
        assert_close(ys[t], y[t], 2e-6, f"step {t}")


def test_options_change_the_function_as_defined(rng):
    x = rng.standard_normal((6, 2, 3))
    coupled = numlstm.LSTM(3, 4, input_forget=True, dtype=np.float64, seed=1)
    plain = numlstm.LSTM(3, 4, dtype=np.float64, seed=1)
    # With f = 1 - i the forget gate's weights are unused: changing them changes nothing.
    y, _ = coupled(x)
    with coupled.updating() as p:
        p["weight_hh_l0"][4:8] += 1.0
        p["bias_ih_l0"][4:8] -= 3.0
    np.testing.assert_array_equal(coupled(x)[0], y)
    assert not np.allclose(plain(x)[0], y)
    clipped = numlstm.LSTM(3, 4, cell_clip=0.05, dtype=np.float64, seed=1)
    _, (_, c) = clipped(x)
    assert np.abs(c).max() <= 0.05 and np.isclose(np.abs(c), 0.05).any()


@pytest.mark.parametrize("options", [{"input_forget": True}, {"gate_clip": 0.4},
                                     {"input_forget": True, "gate_clip": 0.4}],
                         ids=["coupled", "gate-clip", "both"])
def test_onnx_export_of_the_options_runs_in_onnxruntime(tmp_path, rng, options):
    """ONNX's input_forget and clip, computed by onnxruntime, are numlstm's
    input_forget and gate_clip."""
    lstm = numlstm.LSTM(3, 5, num_layers=2, bidirectional=True, seed=1, **options)
    path = tmp_path / "options.onnx"
    model = numlstm.export_onnx(lstm, path, lengths=True)
    attrs = [{a.name: a for a in n.attribute} for n in model.graph.node if n.op_type == "LSTM"]
    assert len(attrs) == 2
    for a in attrs:
        assert ("input_forget" in a) == ("input_forget" in options)
        assert ("clip" in a) == ("gate_clip" in options)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((6, 4, 3)).astype(np.float32)
    lengths = np.array([6, 2, 5, 1])
    y, (h, c) = lstm(x, lengths=lengths)
    for name, got, want in zip("yhc", session.run(None, {"x": x, "lengths": lengths}),
                               (y, h, c)):
        assert_close(got, want, 2e-6, name)
    back = numlstm.import_onnx(path).spec
    assert (back.input_forget, back.gate_clip) == (options.get("input_forget", False),
                                                   options.get("gate_clip"))


def test_what_cannot_carry_the_options_says_so(tmp_path):
    clipped = numlstm.LSTM(3, 4, cell_clip=1.0)
    with pytest.raises(ValueError, match="ONNX cannot say: the LSTM operator's clip bounds "
                                         "the gate pre-activations"):
        numlstm.export_onnx(numlstm.Sequential([clipped]), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    for layer in (clipped, numlstm.LSTM(3, 4, input_forget=True)):
        with pytest.raises(ValueError, match="torch.nn.LSTM has no cell_clip, gate_clip or "
                                             "input_forget"):
            layer.to_torch()
    # (a value of the wrong type is a TypeError, a number out of range a ValueError, as
    # every check in numlstm.validation)
    for bad, error in ((0, ValueError), (-1.0, ValueError), (float("inf"), ValueError),
                       ("1", TypeError), (True, TypeError)):
        with pytest.raises(error, match="cell_clip: expected None or a finite number"):
            numlstm.LSTM(3, 4, cell_clip=bad)
        with pytest.raises(error, match="gate_clip: expected None or a finite number"):
            numlstm.LSTM(3, 4, gate_clip=bad)
    with pytest.raises(TypeError, match="input_forget: expected True or False"):
        numlstm.LSTM(3, 4, input_forget=1)


def test_checkpoints_keep_the_options(tmp_path, rng):
    model = numlstm.Sequential([numlstm.LSTM(3, 4, cell_clip=0.5, input_forget=True,
                                             gate_clip=2.0, seed=0)])
    numlstm.save_checkpoint(tmp_path, model)
    back = numlstm.load(tmp_path).layers[0]
    assert (back.spec.cell_clip, back.spec.input_forget, back.spec.gate_clip) == \
        (0.5, True, 2.0)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(numlstm.load(tmp_path).predict(x), model.predict(x))
