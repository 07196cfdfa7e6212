"""Layout descriptors: round trips, function preserved across layouts, bad weights."""
import itertools

import numpy as np
import pytest

import numlstm
from numlstm.packing import LAYOUTS, LSTMSpec, convert, permute_gates
from helpers import assert_close

SPECS = [LSTMSpec(3, 4, 1, False), LSTMSpec(3, 4, 2, True), LSTMSpec(5, 2, 3, False)]


def _random_torch(rng, spec):
    return {k: rng.standard_normal(s) for k, s in spec.torch_shapes().items()}


def _function(spec, params, x):
    lstm = numlstm.LSTM(spec.input_size, spec.hidden_size, spec.num_layers,
                        spec.bidirectional, backend="numpy", dtype=np.float64)
    lstm.load_weights(params, "torch")
    y, (h, c) = lstm(x)
    return y, h, c


def test_permute_gates_is_a_block_permutation():
    w = np.repeat(np.arange(4), 3)[:, None] * np.ones((1, 2))  # block k holds k
    onnx = permute_gates(w, "ifgo", "iofg")
    np.testing.assert_array_equal(onnx[::3, 0], [0, 3, 1, 2])
    np.testing.assert_array_equal(permute_gates(onnx, "iofg", "ifgo"), w)


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_round_trip_through_every_layout(rng, spec, layout):
    params = _random_torch(rng, spec)
    there = convert(params, "torch", layout, spec)
    back = convert(there, layout, "torch", spec)
    # A one-bias layout keeps the sum b_ih + b_hh, which is all the function sees.
    for k in params:
        if LAYOUTS[layout].bias == "one" and k.startswith("bias"):
            continue
        np.testing.assert_array_equal(back[k], params[k], err_msg=k)
    again = convert(back, "torch", layout, spec)
    for a, b in zip(np.concatenate([np.ravel(v) for v in _leaves(there)]),
                    np.concatenate([np.ravel(v) for v in _leaves(again)])):
        assert a == b


def _leaves(obj):
    if isinstance(obj, dict):
        return [v for k in sorted(obj) for v in _leaves(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [v for o in obj for v in _leaves(o)]
    return [obj]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_every_pair_of_layouts_preserves_the_function(rng, spec):
    params = _random_torch(rng, spec)
    x = rng.standard_normal((4, 2, spec.input_size))
    want = _function(spec, params, x)
    for src, dst in itertools.permutations(sorted(LAYOUTS), 2):
        moved = convert(convert(params, "torch", src, spec), src, dst, spec)
        got = _function(spec, convert(moved, dst, "torch", spec), x)
        for a, b in zip(got, want):
            assert_close(a, b, 1e-13, f"{src} -> {dst}")


def test_layer_export_and_load_in_each_layout(rng):
    lstm = numlstm.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    x = rng.standard_normal((5, 2, 3))
    y, _ = lstm(x)
    for layout in sorted(LAYOUTS):
        other = numlstm.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64)
        other.load_weights(lstm.export_weights(layout), layout=layout)
        assert_close(other(x)[0], y, 1e-14, layout)


def test_keras_and_onnx_shapes(rng):
    lstm = numlstm.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0)
    keras = lstm.export_weights("keras")
    assert [[a.shape for a in layer] for layer in keras] == [
        [(3, 16), (4, 16), (16,)] * 2, [(8, 16), (4, 16), (16,)] * 2]
    onnx = lstm.export_weights("onnx")
    assert [{k: v.shape for k, v in layer.items()} for layer in onnx] == [
        {"W": (2, 16, 3), "R": (2, 16, 4), "B": (2, 32)},
        {"W": (2, 16, 8), "R": (2, 16, 4), "B": (2, 32)}]
    # ONNX's gate order is i, o, f, c: its second block is torch's last.
    np.testing.assert_array_equal(onnx[0]["W"][0, 4:8], lstm.params["weight_ih_l0"][12:16])


def test_one_layer_layouts_accept_bare_entries(rng):
    lstm = numlstm.LSTM(3, 4, seed=0)
    lstm2 = numlstm.LSTM(3, 4)
    lstm2.load_weights(lstm.export_weights("keras")[0], "keras")
    lstm2.load_weights(lstm.export_weights("onnx")[0], "onnx")
    for k in lstm.params:
        if k.startswith("weight"):
            np.testing.assert_array_equal(lstm2.params[k], lstm.params[k])


def test_torch_tensors_load(rng):
    import torch
    ref = torch.nn.LSTM(3, 4, num_layers=2)
    lstm = numlstm.LSTM(3, 4, num_layers=2, dtype=np.float64)
    lstm.load_weights(ref.state_dict())
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(lstm.params[k], v.double().numpy())
