"""numlstm.quantize_dynamic, QuantizedLSTM and QuantizedGRU: the float layer's call
API on int8 and bfloat16 weights (stacked, bidirectional, lengths, initial states,
step, batch first, Sequential, checkpoints), against the reference of the same
quantization, against torch's quantize_dynamic's error, and bad input."""
import numpy as np
import pytest

import numlstm
from numlstm.kernels import reference as ref
from numlstm.layers import QuantizedLSTM
from helpers import assert_close

DTYPES = ["int8", "bfloat16"]


def _reference_stack(layer, x, lengths, h0, c0, dtype):
    """The stacked, bidirectional layer from lstm_forward_quantized_ref, time-major."""
    s, p = layer.spec, layer.params
    D = s.directions
    inp, hs, cs = x, [], []
    for l in range(s.num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            k = l * D + d
            y, h, c = ref.lstm_forward_quantized_ref(
                inp, p["weight_ih" + sfx], p["weight_hh" + sfx], p["bias_ih" + sfx],
                p["bias_hh" + sfx], h0[k], c0[k], lengths, d == 1, dtype)
            outs.append(y)
            hs.append(h)
            cs.append(c)
        inp = np.concatenate(outs, axis=2)
    return inp, np.stack(hs), np.stack(cs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stacked_bidirectional_with_lengths_and_state_match_reference(rng, dtype):
    T, B, I, H = 6, 3, 11, 21
    layer = numlstm.LSTM(I, H, num_layers=2, bidirectional=True, seed=3)
    q = numlstm.quantize_dynamic(layer, dtype)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = np.array([6, 2, 4])
    h0, c0 = (0.3 * rng.standard_normal((4, B, H)).astype(np.float32) for _ in range(2))
    y, (h, c) = q(x, (h0, c0), lengths=lengths)
    y_r, h_r, c_r = _reference_stack(layer, x, lengths, h0, c0, dtype)
    # (the layers and directions wired as the reference's; each step's own accuracy is
    # the kernel tests'. A value of h or of a layer's output that rounds to the next
    # quantum on one side only moves the rest by about 1e-3, so this allows that.)
    assert_close(y, y_r, 5e-3, "y")
    assert_close(h, h_r, 5e-3, "h_n")
    assert_close(c, c_r, 5e-3, "c_n")
    assert (y[2:, 1] == 0).all()  # past a sequence's length
    # close to the float layer, and not equal to it (the weights were quantized)
    y_f, _ = layer(x, (h0, c0), lengths=lengths)
    err = np.abs(y - y_f).max()
    assert 0 < err < (0.02 if dtype == "int8" else 0.01)


@pytest.mark.parametrize("dtype", DTYPES)
def test_step_and_batch_first_are_the_call(rng, dtype):
    layer = numlstm.LSTM(5, 18, num_layers=2, batch_first=True, seed=4)
    q = numlstm.quantize_dynamic(layer, dtype)
    x = rng.standard_normal((2, 7, 5)).astype(np.float32)  # [B,T,I]
    y, (h, c) = q(x)
    state, ys = None, []
    for t in range(7):
        y_t, state = q.step(x[:, t], state)
        ys.append(y_t)
    np.testing.assert_array_equal(np.stack(ys, 1), y)
    np.testing.assert_array_equal(state[0], h)
    y1, _ = q.step(x[0, 0])  # unbatched
    np.testing.assert_array_equal(y1, ys[0][0])
    y_tm, _ = numlstm.quantize_dynamic(numlstm.LSTM(5, 18, num_layers=2, seed=4), dtype)(
        np.ascontiguousarray(x.swapaxes(0, 1)))
    np.testing.assert_array_equal(y_tm.swapaxes(0, 1), y)
    # the one-call path of small calls (above) and the general path (lengths given)
    y_general, (h_general, _) = q(x, lengths=np.array([7, 7]))
    np.testing.assert_array_equal(y_general, y)
    np.testing.assert_array_equal(h_general, h)


def test_a_model_quantizes_its_lstm_and_saves_and_loads(rng, tmp_path):
    model = numlstm.Sequential([numlstm.LSTM(4, 16, return_sequences=False, seed=1),
                                numlstm.Dense(16, 3, seed=2)])
    model.compile(loss="mse")
    x = rng.standard_normal((5, 9, 4)).astype(np.float32)
    q = numlstm.quantize_dynamic(model, "int8")
    assert isinstance(q.layers[0], QuantizedLSTM) and type(q.layers[1]) is numlstm.Dense
    assert q.layers[1] is not model.layers[1]
    out = q.predict(x)
    assert 0 < np.abs(out - model.predict(x)).max() < 0.02
    assert "QuantizedLSTM" in q.summary(print_fn=lambda s: None)
    path = str(tmp_path / "q.npz")
    q.save(path)
    loaded = numlstm.load(path)
    assert isinstance(loaded.layers[0], QuantizedLSTM) and loaded.layers[0].quantize == "int8"
    np.testing.assert_array_equal(loaded.predict(x), out)
    assert np.isfinite(q.evaluate(x, np.zeros((5, 3), np.float32)))
    with pytest.raises(ValueError, match="inference-only"):
        q.compile(optimizer="adam", loss="mse")
        q.fit(x, np.zeros((5, 3), np.float32), epochs=1)


def test_new_weights_are_quantized_again(rng):
    layer = numlstm.LSTM(3, 8, seed=0)
    q = numlstm.quantize_dynamic(layer)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    before, _ = q(x)
    with q.updating() as p:
        p["weight_ih_l0"] *= 2
    after, _ = q(x)
    assert not np.array_equal(before, after)
    layer2 = numlstm.LSTM(3, 8, seed=0)
    with layer2.updating() as p:
        p["weight_ih_l0"] *= 2
    np.testing.assert_array_equal(numlstm.quantize_dynamic(layer2)(x)[0], after)


def test_bad_input_is_refused_and_nothing_changes(rng):
    layer = numlstm.LSTM(3, 8, seed=0)
    w = {k: v.copy() for k, v in layer.params.items()}
    with pytest.raises(ValueError, match="'int8' or 'bfloat16'"):
        numlstm.quantize_dynamic(layer, "int4")
    with pytest.raises(TypeError, match="'int8' or 'bfloat16'"):
        numlstm.quantize_dynamic(layer, 8)
    with pytest.raises(TypeError, match="LSTM, GRU or Sequential, got RNN"):
        numlstm.quantize_dynamic(numlstm.RNN(3, 8))
    with pytest.raises(ValueError, match="proj_size=4"):
        numlstm.quantize_dynamic(numlstm.LSTM(3, 8, proj_size=4))
    with pytest.raises(ValueError, match="no LSTM or GRU layer"):
        numlstm.quantize_dynamic(numlstm.Sequential([numlstm.Dense(3, 2)]))
    q = numlstm.quantize_dynamic(layer)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="inference-only"):
        q(x, training=True)
    with pytest.raises(ValueError, match="inference-only"):
        q.backward(np.zeros((4, 2, 8), np.float32))
    with pytest.raises(ValueError, match="expected 3 input features"):
        q(x[:, :, :2])
    with pytest.raises(ValueError, match="bidirectional"):
        numlstm.quantize_dynamic(numlstm.LSTM(3, 8, bidirectional=True)).step(x[0])
    for k, v in layer.params.items():
        np.testing.assert_array_equal(v, w[k])


SHAPES = [(20, 4, 64, 128), (10, 2, 128, 256)]


@pytest.mark.parametrize("cell,T,B,I,H", [("LSTM", *s) for s in SHAPES] + [("GRU", *SHAPES[0])])
def test_error_against_torchs_quantize_dynamic(cell, T, B, I, H):
    """On the same float weights and inputs: int8's output error at most 1.5x that
    of torch's quantize_dynamic int8 LSTM (GRU), bfloat16's at most torch int8's."""
    torch = pytest.importorskip("torch")
    import warnings
    layer = getattr(numlstm, cell)(I, H, seed=T + H)
    x = np.random.default_rng(B).standard_normal((T, B, I)).astype(np.float32)
    module = getattr(torch.nn, cell)(I, H)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    with torch.no_grad():
        y_float = module(torch.from_numpy(x))[0].numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tq = torch.ao.quantization.quantize_dynamic(  # (it swaps a model's children)
            torch.nn.Sequential(module), {type(module)}, dtype=torch.qint8)[0]
    assert type(tq) is not type(module)
    with torch.no_grad():
        torch_err = np.abs(tq(torch.from_numpy(x))[0].numpy() - y_float).max()
    errors = {d: np.abs(numlstm.quantize_dynamic(layer, d)(x)[0] - y_float).max()
              for d in DTYPES}
    assert 0 < errors["int8"] <= 1.5 * torch_err, (errors, torch_err)
    assert 0 < errors["bfloat16"] <= torch_err, (errors, torch_err)


# -- the GRU ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_gru_stacked_bidirectional_with_lengths_matches_reference(rng, dtype):
    """QuantizedGRU wired as the float GRU (layers, directions, lengths, the initial
    state), each direction from reference.gru_forward_quantized_ref; its step() is
    its call; a checkpoint gives the same outputs to the bit."""
    T, B, I, H = 6, 3, 11, 21
    layer = numlstm.GRU(I, H, num_layers=2, bidirectional=True, seed=4)
    q = numlstm.quantize_dynamic(layer, dtype)
    assert type(q).__name__ == "QuantizedGRU" and q.quantize == dtype
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = np.array([6, 2, 4])
    h0 = 0.3 * rng.standard_normal((4, B, H)).astype(np.float32)
    y, h = q(x, h0, lengths=lengths)
    p, inp, hs = layer.params, x, []
    for l in range(2):
        outs = []
        for d in range(2):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            y_d, h_d = ref.gru_forward_quantized_ref(
                inp, p["weight_ih" + sfx], p["weight_hh" + sfx], p["bias_ih" + sfx],
                p["bias_hh" + sfx], h0[2 * l + d], lengths, d == 1, dtype)
            outs.append(y_d)
            hs.append(h_d)
        inp = np.concatenate(outs, axis=2)
    assert_close(y, inp, 5e-3, "y")  # (a quantum's jump: as the LSTM's test says)
    assert_close(h, np.stack(hs), 5e-3, "h_n")
    assert (y[2:, 1] == 0).all()
    y_f, _ = layer(x, h0, lengths=lengths)
    assert 0 < np.abs(y - y_f).max() < (0.02 if dtype == "int8" else 0.01)

    one = numlstm.quantize_dynamic(numlstm.GRU(I, H, seed=5), dtype)
    whole, h_whole = one(x)
    state, steps = None, []
    for t in range(T):
        out, state = one.step(x[t], state)
        steps.append(out)
    np.testing.assert_array_equal(np.stack(steps), whole)
    np.testing.assert_array_equal(state, h_whole)


def test_gru_models_checkpoints_and_refusals(rng, tmp_path):
    model = numlstm.Sequential([numlstm.GRU(5, 16, return_sequences=False, seed=0),
                                numlstm.Dense(16, 2, seed=1)])
    q = numlstm.quantize_dynamic(model, "int8")
    x = rng.standard_normal((4, 7, 5)).astype(np.float32)
    out = q.predict(x)
    assert out.shape == (4, 2) and 0 < np.abs(out - model.predict(x)).max() < 0.05
    numlstm.save_checkpoint(tmp_path, q)
    back = numlstm.load_checkpoint(tmp_path).model
    assert type(back.layers[0]).__name__ == "QuantizedGRU"
    np.testing.assert_array_equal(back.predict(x), out)
    for kwargs, needle in ((dict(reset_after=False), "reset_after=False"),
                           (dict(layer_norm=True), "layer_norm=True")):
        with pytest.raises(ValueError, match=needle):
            numlstm.quantize_dynamic(numlstm.GRU(3, 4, **kwargs))
    with pytest.raises(ValueError, match="inference-only"):
        numlstm.quantize_dynamic(numlstm.GRU(3, 4))(x[:, :, :3], training=True)
    with pytest.raises(TypeError, match="LSTM, GRU or Sequential"):
        numlstm.quantize_dynamic(numlstm.RNN(3, 4))
