"""Layout descriptors: round trips, function preserved across layouts, bad weights."""
import itertools

import numpy as np
import pytest

import numlstm
from numlstm.packing import LAYOUTS, RecurrentSpec, convert, permute_gates
from helpers import assert_close

SPECS = [RecurrentSpec(3, 4, 1, False), RecurrentSpec(3, 4, 2, True),
         RecurrentSpec(5, 2, 3, False), RecurrentSpec(3, 4, 2, True, "gru"),
         RecurrentSpec(3, 4, 1, False, "gru", reset_after=False),
         RecurrentSpec(3, 4, 2, True, "rnn", nonlinearity="relu")]


def _holds(layout, spec):
    """Whether layout can hold spec's cell (haste has no RNN, no reset-before GRU)."""
    try:
        LAYOUTS[layout].check(spec)
    except ValueError:
        return False
    return True


def _random_torch(rng, spec):
    return {k: rng.standard_normal(s) for k, s in spec.torch_shapes().items()}


def _layer(spec, **kw):
    """The numlstm layer of spec."""
    options = {"lstm": {}, "gru": {"reset_after": spec.reset_after},
               "rnn": {"nonlinearity": spec.nonlinearity}}[spec.cell]
    cls = {"lstm": numlstm.LSTM, "gru": numlstm.GRU, "rnn": numlstm.RNN}[spec.cell]
    return cls(spec.input_size, spec.hidden_size, spec.num_layers, spec.bidirectional,
               **options, **kw)


def _function(spec, params, x):
    layer = _layer(spec, backend="numpy", dtype=np.float64)
    layer.load_weights(params, "torch")
    y, state = layer(x)
    return (y,) + (state if isinstance(state, tuple) else (state,))


def test_permute_gates_is_a_block_permutation():
    w = np.repeat(np.arange(4), 3)[:, None] * np.ones((1, 2))  # block k holds k
    onnx = permute_gates(w, "ifgo", "iofg")
    np.testing.assert_array_equal(onnx[::3, 0], [0, 3, 1, 2])
    np.testing.assert_array_equal(permute_gates(onnx, "iofg", "ifgo"), w)


@pytest.mark.parametrize("spec,layout", [(spec, layout) for spec in SPECS
                                         for layout in sorted(LAYOUTS)
                                         if _holds(layout, spec)], ids=str)
def test_round_trip_through_every_layout(rng, spec, layout):
    params = _random_torch(rng, spec)
    there = convert(params, "torch", layout, spec)
    back = convert(there, layout, "torch", spec)
    # A one-bias layout keeps the sum b_ih + b_hh, which is all the function sees.
    for k in params:
        if LAYOUTS[layout].bias_for(spec) == "one" and k.startswith("bias"):
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
    layouts = [name for name in sorted(LAYOUTS) if _holds(name, spec)]
    for src, dst in itertools.permutations(layouts, 2):
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


def test_gru_keras_and_onnx_layouts():
    gru = numlstm.GRU(3, 4, bidirectional=True, seed=0)
    keras = gru.export_weights("keras")
    # Keras's GRU(reset_after=True) keeps its two biases as rows of one [2, 3H] array.
    assert [a.shape for a in keras[0]] == [(3, 12), (4, 12), (2, 12)] * 2
    p = gru.params
    # Keras's gate order is z, r, h: its first block is torch's second (z).
    np.testing.assert_array_equal(keras[0][0][:, :4], p["weight_ih_l0"][4:8].T)
    np.testing.assert_array_equal(keras[0][2][1, 8:], p["bias_hh_l0"][8:])
    onnx = gru.export_weights("onnx")[0]
    assert {k: v.shape for k, v in onnx.items()} == {"W": (2, 12, 3), "R": (2, 12, 4),
                                                     "B": (2, 24)}
    np.testing.assert_array_equal(onnx["R"][1, 4:8], p["weight_hh_l0_reverse"][:4])
    old = numlstm.GRU(3, 4, reset_after=False, seed=0)
    assert [a.shape for a in old.export_weights("keras")[0]] == [(3, 12), (4, 12), (12,)]
    rnn = numlstm.RNN(3, 4, seed=0)
    assert [a.shape for a in rnn.export_weights("keras")[0]] == [(3, 4), (4, 4), (4,)]


def test_one_bias_layout_refuses_a_reset_after_gru():
    from numlstm.packing import Layout
    one_bias = Layout("one-bias", {"gru": "rzn"}, "in_out", {"gru": "one"}, "keras")
    with pytest.raises(ValueError, match="cannot hold a GRU with reset_after=True"):
        numlstm.GRU(3, 4).export_weights(one_bias)


def test_haste_layout():
    lstm = numlstm.LSTM(3, 4, seed=0)
    kernel, recurrent, bias = lstm.export_weights("haste")[0]
    p = lstm.params
    # haste's LSTM order is i, g, f, o: its second block is torch's third (g).
    np.testing.assert_array_equal(kernel[:, 4:8], p["weight_ih_l0"][8:12].T)
    np.testing.assert_array_equal(recurrent[:, 12:], p["weight_hh_l0"][12:].T)
    np.testing.assert_array_equal(bias, permute_gates(p["bias_ih_l0"] + p["bias_hh_l0"],
                                                      "ifgo", "igfo"))
    gru = numlstm.GRU(3, 4, seed=0)
    arrays = gru.export_weights("haste")[0]
    assert [a.shape for a in arrays] == [(3, 12), (4, 12), (12,), (12,)]
    np.testing.assert_array_equal(arrays[3][:4], gru.params["bias_hh_l0"][4:8])  # z first
    with pytest.raises(ValueError, match="layout 'haste' has no RNN cell"):
        numlstm.RNN(3, 4).export_weights("haste")
    with pytest.raises(ValueError, match="no GRU with reset_after=False"):
        numlstm.GRU(3, 4, reset_after=False).load_weights(arrays, "haste")


def _arrays(value):
    """Every NumPy array in a pack (NamedTuples, tuples, lists and dicts of them)."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _arrays(v)
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _arrays(v)


@pytest.mark.parametrize("cls, options", [
    (numlstm.LSTM, dict(dtype="float64")),
    (numlstm.LSTM, dict(layer_norm=True)),
    (numlstm.GRU, dict(dtype="float64")),
    (numlstm.GRU, dict(reset_after=False)),
    (numlstm.GRU, dict(layer_norm=True)),
    (numlstm.RNN, dict(dtype="float64"))])
def test_cpu_packs_hand_the_loops_writable_arrays(rng, cls, options):
    """A layer's parameters are read-only between updates, and Numba's array types
    carry the flag: the packs of the paths that pass weights through as they are
    (float64, layer_norm, the reset-before GRU) copy them, so that their loops
    compile once for layers and direct kernel calls alike."""
    layer = cls(3, 5, **options)
    x = rng.standard_normal((4, 2, 3)).astype(layer.dtype)
    layer(x)
    assert not any(p.flags.writeable for p in layer.params.values())
    cpu = numlstm.dispatch.BACKENDS["cpu"]
    arrays = list(_arrays(layer._packs.get(cpu, layer._params, layer.spec)))
    assert arrays and all(a.flags.writeable for a in arrays)
