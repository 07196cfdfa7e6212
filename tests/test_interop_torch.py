"""from_torch / to_torch: layers and models moved to and from torch compute the same
outputs (compared with torch running them, not only as weight round trips)."""
import numpy as np
import pytest
import torch
from torch import nn

import numlstm
from numlstm.torch_io import TorchSequential
from helpers import assert_close

TOL = {np.float32: 2e-6, np.float64: 1e-12}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}

RECURRENT = [(numlstm.LSTM, nn.LSTM, {}), (numlstm.GRU, nn.GRU, {}),
             (numlstm.RNN, nn.RNN, {"nonlinearity": "relu"})]


def _torch_y(module, x, lengths=None):
    with torch.no_grad():
        if lengths is None:
            return module(torch.from_numpy(x))[0].numpy()
        packed = nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.tensor(lengths),
                                                   enforce_sorted=False)
        return nn.utils.rnn.pad_packed_sequence(module(packed)[0],
                                                total_length=x.shape[0])[0].numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ours,theirs,options", RECURRENT, ids=["lstm", "gru", "rnn"])
def test_from_torch_computes_what_torch_computes(rng, ours, theirs, options, dtype):
    torch.manual_seed(int(rng.integers(1 << 30)))
    module = theirs(5, 6, num_layers=2, bidirectional=True, dtype=TORCH_DTYPE[dtype],
                    **options)
    layer = ours.from_torch(module)
    assert (layer.num_layers, layer.bidirectional, layer.dtype) == (2, True, dtype)
    x = rng.standard_normal((7, 3, 5)).astype(dtype)
    lengths = [7, 2, 5]
    assert_close(layer(x)[0], _torch_y(module, x), TOL[dtype], "y")
    assert_close(layer(x, lengths=lengths)[0], _torch_y(module, x, lengths), TOL[dtype],
                 "y with lengths")


@pytest.mark.parametrize("ours,theirs,options", RECURRENT, ids=["lstm", "gru", "rnn"])
def test_to_torch_computes_what_numlstm_computes(rng, ours, theirs, options):
    layer = ours(4, 5, num_layers=3, bidirectional=True, batch_first=True, dropout=0.25,
                 dtype=np.float64, seed=2, **options)
    module = layer.to_torch()
    assert type(module) is theirs and not module.training
    assert (module.num_layers, module.bidirectional, module.batch_first, module.dropout) \
        == (3, True, True, 0.25)
    x = rng.standard_normal((2, 6, 4))
    want, state = layer(x)
    with torch.no_grad():
        got, got_state = module(torch.from_numpy(x))
    assert_close(got.numpy(), want, 1e-12, "y")
    if ours is numlstm.LSTM:
        state, got_state = state[1], got_state[1]  # c_n too
    assert_close(got_state.numpy(), state, 1e-12, "final state")


def test_torch_modules_without_bias_load_with_zero_biases(rng):
    module = nn.LSTM(3, 4, bias=False)
    layer = numlstm.LSTM.from_torch(module)
    assert not np.any(layer.params["bias_ih_l0"]) and not np.any(layer.params["bias_hh_l0"])
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    assert_close(layer(x)[0], _torch_y(module, x), 2e-6)


def test_from_torch_takes_constructor_options_but_not_contradictions():
    layer = numlstm.GRU.from_torch(nn.GRU(3, 4), backend="numpy", return_sequences=False,
                                   dtype=np.float64)
    assert layer.backend == "numpy" and not layer.return_sequences
    assert layer.dtype == np.float64
    with pytest.raises(ValueError, match=r"reset_after=False \(the module has True\)"):
        numlstm.GRU.from_torch(nn.GRU(3, 4), reset_after=False)
    with pytest.raises(ValueError, match=r"nonlinearity='relu' \(the module has 'tanh'\)"):
        numlstm.RNN.from_torch(nn.RNN(3, 4), nonlinearity="relu")


def test_unsupported_torch_forms_are_refused():
    with pytest.raises(TypeError, match=r"LSTM.from_torch: expected a torch.nn.LSTM, got GRU"):
        numlstm.LSTM.from_torch(nn.GRU(3, 4))
    with pytest.raises(ValueError, match=r"proj_size=3 \(the module has 2\)"):
        numlstm.LSTM.from_torch(nn.LSTM(5, 4, proj_size=2), proj_size=3)
    with pytest.raises(TypeError, match="float32 or float64"):
        numlstm.LSTM.from_torch(nn.LSTM(3, 4).half())
    with pytest.raises(ValueError, match="reset_after=False"):
        numlstm.GRU(3, 4, reset_after=False).to_torch()
    with pytest.raises(ValueError, match="merge_mode='sum' has no torch form"):
        numlstm.LSTM(3, 4, bidirectional=True, merge_mode="sum").to_torch()
    with pytest.raises(TypeError, match="module 1 is a Conv1d"):
        numlstm.Sequential.from_torch(nn.Sequential(nn.Linear(3, 4), nn.Conv1d(4, 4, 1)))


def _model(rng, cell, merge_mode, return_sequences):
    V, E, H = 11, 6, 5
    options = {"lstm": {}, "gru": {}, "rnn": {"nonlinearity": "tanh"}}[cell]
    cls = numlstm.layers.CELLS[cell]
    return numlstm.Sequential([
        numlstm.Embedding(V, E, seed=1),
        cls(E, H, num_layers=2, bidirectional=True, dropout=0.1, seed=2, **options),
        numlstm.Dropout(0.3),
        cls(2 * H, H, bidirectional=True, merge_mode=merge_mode,
            return_sequences=return_sequences, seed=3, **options),
        numlstm.Dense(H if merge_mode != "concat" else 2 * H, 4, activation="tanh", seed=4),
        numlstm.Dense(4, 3, seed=5)])


@pytest.mark.parametrize("cell,merge_mode,return_sequences", [
    ("lstm", "concat", True), ("lstm", "ave", False), ("gru", "sum", True),
    ("gru", "concat", False), ("rnn", "mul", False)])
def test_sequential_to_torch_and_back(rng, cell, merge_mode, return_sequences):
    model = _model(rng, cell, merge_mode, return_sequences)
    module = model.to_torch()
    assert isinstance(module, TorchSequential) and not module.training
    ids = rng.integers(0, 11, (4, 9))
    lengths = np.array([9, 3, 6, 1])
    for lens in (None, lengths):
        want = model.predict(ids, lengths=lens)
        with torch.no_grad():
            got = module(torch.from_numpy(ids), lengths=lens).numpy()
        assert_close(got, want, 2e-6, f"lengths={lens}")
    back = numlstm.Sequential.from_torch(module)
    assert back.get_config() == model.get_config()
    assert_close(back.predict(ids, lengths=lengths), model.predict(ids, lengths=lengths), 0,
                 "round trip")


def test_sequential_from_a_plain_torch_sequential(rng):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.2), nn.Linear(4, 2),
                           nn.Sigmoid())
    model = numlstm.Sequential.from_torch(module)
    assert [l.get_config().get("activation") for l in model.layers] == ["relu", None,
                                                                          "sigmoid"]
    x = rng.standard_normal((5, 3)).astype(np.float32)
    with torch.no_grad():
        want = module.eval()(torch.from_numpy(x)).numpy()
    assert_close(model.predict(x), want, 2e-6)


def test_a_model_of_mixed_dtypes_runs_in_torch(rng):
    model = numlstm.Sequential([numlstm.Embedding(7, 3, seed=0),
                                numlstm.LSTM(3, 4, dtype=np.float64, seed=1),
                                numlstm.Dense(4, 2, seed=2)])
    ids = rng.integers(0, 7, (2, 5))
    with torch.no_grad():
        got = model.to_torch()(torch.from_numpy(ids)).numpy()
    assert got.dtype == np.float32
    assert_close(got, model.predict(ids), 2e-6)
