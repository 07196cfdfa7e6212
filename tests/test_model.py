"""Dense, Embedding, Dropout, the LSTM's Sequential protocol, Sequential, training and
checkpoints: against torch, NumPy and finite differences."""
import json
import os
import zipfile

import numpy as np
import pytest

import numlstm
from helpers import assert_close, rel_err
from numlstm import (LSTM, CrossEntropyLoss, Dense, Dropout, Embedding, MSELoss,
                     Sequential)

torch = pytest.importorskip("torch")

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
# (values, gradients) relative to the largest reference value
TOL = {np.float32: (1e-5, 1e-4), np.float64: (1e-12, 1e-10)}
TORCH_ACT = {None: lambda t: t, "relu": torch.relu, "tanh": torch.tanh,
             "sigmoid": torch.sigmoid}


def _t(a, grad=False):
    return torch.tensor(np.asarray(a), requires_grad=grad)


def _weights(model):
    return {k: v.copy() for k, v in model.get_weights().items()}


def _assert_weights_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# -- Dense -----------------------------------------------------------------------------------
DENSE_SHAPES = [(3, 7), (1, 7), (3, 5, 7), (1, 1, 7), (2, 1, 7)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=["x".join(map(str, s)) for s in DENSE_SHAPES])
def test_dense_matches_torch_linear(rng, dtype, activation, shape):
    F, O = shape[-1], 5
    w = rng.standard_normal((O, F)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape[:-1] + (O,)).astype(dtype)

    ref = torch.nn.Linear(F, O, dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():
        ref.weight.copy_(_t(w))
        ref.bias.copy_(_t(b))
    xt = _t(x, grad=True)
    yt = TORCH_ACT[activation](ref(xt))
    (yt * _t(dout)).sum().backward()

    layer = Dense(F, O, activation=activation, dtype=dtype, seed=0)
    layer.load_params({"weight": w, "bias": b})
    y = layer.forward(x, training=True)
    dx = layer.backward_output(dout)
    vtol, gtol = TOL[dtype]
    assert y.dtype == dtype and dx.dtype == dtype
    assert_close(y, yt.detach().numpy(), vtol, "y")
    assert_close(dx, xt.grad.numpy(), gtol, "dx")
    assert_close(layer.grads["weight"], ref.weight.grad.numpy(), gtol, "grad weight")
    assert_close(layer.grads["bias"], ref.bias.grad.numpy(), gtol, "grad bias")


def test_dense_grads_accumulate_and_inference_keeps_nothing(rng):
    layer = Dense(4, 3, activation="tanh", dtype=np.float64, seed=1)
    x = rng.standard_normal((3, 2, 4))
    dout = rng.standard_normal((3, 2, 3))
    layer.forward(x, training=True)
    layer.backward_output(dout)
    once = {k: g.copy() for k, g in layer.grads.items()}
    layer.forward(x, training=True)
    layer.backward_output(dout)
    for k in once:
        assert_close(layer.grads[k], 2 * once[k], 1e-14, k)
    layer.forward(x)  # inference
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward_output(dout)


@pytest.mark.parametrize("layer_of", [lambda: Dense(6, 5, seed=2),
                                      lambda: numlstm.Attention(5, 3, seed=2)],
                         ids=["dense", "attention"])
def test_kept_weight_layouts_follow_every_change_of_the_weights(rng, layer_of):
    """Dense and Attention keep their weights in the product's layout between calls;
    load_params and an update through updating() (an optimizer's step) must show
    in the next call."""
    layer = layer_of()

    def call():
        if isinstance(layer, Dense):
            return layer.forward(x)
        return layer.forward(x, layer.memory(values))[0]
    x = rng.standard_normal((2, 4, 6 if isinstance(layer, Dense) else 5)).astype(np.float32)
    values = rng.standard_normal((2, 3, 3)).astype(np.float32)
    first = call()
    other = {k: rng.standard_normal(p.shape).astype(np.float32)
             for k, p in layer.params.items()}
    fresh = layer_of()
    fresh.load_params(other)
    layer.load_params(other)
    assert_close(call(), fresh.forward(x) if isinstance(layer, Dense) else
                 fresh.forward(x, fresh.memory(values))[0], 1e-6, "after load_params")
    with layer.updating() as params:
        for p in params.values():
            p *= 0.5
    halved = {k: 0.5 * v for k, v in other.items()}
    fresh.load_params(halved)
    got = call()
    assert not np.allclose(got, first)
    assert_close(got, fresh.forward(x) if isinstance(layer, Dense) else
                 fresh.forward(x, fresh.memory(values))[0], 1e-6, "after an update")


@pytest.mark.parametrize("call,error,match", [
    (lambda l: l.forward(np.zeros((3, 6))), ValueError,
     r"x: expected \[\.\.\., 7\] \(7 features on the last axis"),
    (lambda l: l.forward(np.zeros(7)), ValueError, r"x: expected \[\.\.\., 7\]"),
    (lambda l: l.forward(np.array([["a"] * 7])), TypeError, "x: expected a real numeric"),
    (lambda l: l.load_params({"weight": np.zeros((7, 5)), "bias": np.zeros(5)}), ValueError,
     r"expected parameters \{'weight': \(5, 7\), 'bias': \(5,\)\}"),
    (lambda l: l.load_params({"weight": np.zeros((5, 7))}), ValueError,
     "expected parameters"),
    (lambda l: l.load_params({"weight": np.full((5, 7), "x"), "bias": np.zeros(5)}),
     TypeError, "weight: expected a real numeric array"),
])
def test_dense_bad_input_changes_nothing(call, error, match):
    layer = Dense(7, 5, seed=0)
    before = {k: v.copy() for k, v in layer.params.items()}
    with pytest.raises(error, match=match):
        call(layer)
    for k, v in before.items():
        np.testing.assert_array_equal(layer.params[k], v)


def test_dense_bad_dout_keeps_the_saved_input(rng):
    layer = Dense(7, 5, dtype=np.float64, seed=0)
    x = rng.standard_normal((3, 7))
    layer.forward(x, training=True)
    with pytest.raises(ValueError, match=r"dout: expected the output's shape \(3, 5\)"):
        layer.backward_output(np.zeros((3, 4)))
    assert all((g == 0).all() for g in layer.grads.values())
    dout = rng.standard_normal((3, 5))
    layer.backward_output(dout)  # the forward's input is still there
    assert_close(layer.grads["weight"], dout.T @ x, 1e-12, "grad weight")


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(in_features=0, out_features=2), ValueError, "in_features: expected an integer >= 1"),
    (dict(in_features=2, out_features=2.0), TypeError, "out_features: expected an integer"),
    (dict(in_features=2, out_features=2, activation="gelu"), ValueError,
     "activation: expected one of"),
    (dict(in_features=2, out_features=2, dtype=np.float16), TypeError,
     "dtype: expected float32 or float64"),
])
def test_dense_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        Dense(**kwargs)


# -- Embedding -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,T", [(3, 5), (1, 1), (1, 4)])
def test_embedding_matches_torch(rng, dtype, B, T):
    V, E = 6, 4
    w = rng.standard_normal((V, E)).astype(dtype)
    ids = rng.integers(0, V, (B, T))
    if B * T > 1:
        ids.flat[-1] = ids.flat[0]  # at least one repeated id
    dout = rng.standard_normal((B, T, E)).astype(dtype)
    ref = torch.nn.Embedding(V, E, dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():
        ref.weight.copy_(_t(w))
    out_t = ref(torch.tensor(ids))
    (out_t * _t(dout)).sum().backward()

    layer = Embedding(V, E, dtype=dtype, seed=0)
    layer.load_params({"weight": w})
    out = layer.forward(ids, training=True)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, out_t.detach().numpy())
    assert layer.backward_output(dout) is None
    assert_close(layer.grads["weight"], ref.weight.grad.numpy(), TOL[dtype][0], "grad weight")


@pytest.mark.parametrize("ids,error,match", [
    (np.array([[0, 6]]), ValueError, r"ids: expected values in \[0, 6\), got min 0 max 6"),
    (np.array([[-1, 2]]), ValueError, r"ids: expected values in \[0, 6\), got min -1"),
    (np.array([[0.0, 1.0]]), TypeError, "ids: expected integers, got dtype float64"),
    (np.array([[True, False]]), TypeError, "ids: expected integers, got dtype bool"),
])
def test_embedding_bad_ids(ids, error, match):
    layer = Embedding(6, 3, seed=0)
    before = layer.params["weight"].copy()
    with pytest.raises(error, match=match):
        layer.forward(ids, training=True)
    np.testing.assert_array_equal(layer.params["weight"], before)
    with pytest.raises(RuntimeError, match="training=True"):  # nothing was kept
        layer.backward_output(np.zeros(ids.shape + (3,), np.float32))


# -- Dropout ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_masks_scales_and_backward(rng, dtype, p):
    x = rng.uniform(0.5, 2.0, (50, 40, 30)).astype(dtype)  # no zeros in x
    layer = Dropout(p, seed=int(rng.integers(1 << 30)))
    y = layer.forward(x, training=True)
    assert y.dtype == dtype and y.shape == x.shape
    kept = y != 0
    dropped = 1 - kept.mean()
    assert abs(dropped - p) < 0.01, f"dropped {dropped:.4f}, expected about {p}"
    assert_close(y[kept], x[kept].astype(np.float64) / (1 - p), 1e-6, "survivors")
    dout = rng.standard_normal(x.shape).astype(dtype)
    dx = layer.backward_output(dout)
    assert (dx[~kept] == 0).all()
    assert_close(dx[kept], dout[kept].astype(np.float64) / (1 - p), 1e-6, "dx of survivors")
    # inference: the identity, and nothing for a backward
    np.testing.assert_array_equal(layer.forward(x), x)
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward_output(dout)


def test_dropout_same_seed_same_masks_and_fresh_masks_each_call(rng):
    x = rng.uniform(1, 2, (6, 7)).astype(np.float32)
    a, b = Dropout(0.5, seed=3), Dropout(0.5, seed=3)
    ya1, yb1 = a.forward(x, training=True), b.forward(x, training=True)
    np.testing.assert_array_equal(ya1, yb1)
    ya2 = a.forward(x, training=True)
    assert ((ya1 == 0) != (ya2 == 0)).any(), "the second call reused the first mask"


@pytest.mark.parametrize("p,error,match", [
    (1.0, ValueError, r"p: expected a probability in \[0, 1\), got 1.0"),
    (-0.1, ValueError, r"p: expected a probability in \[0, 1\)"),
    ("0.5", TypeError, "p: expected a number"),
    (True, TypeError, "p: expected a number"),
])
def test_dropout_bad_probability(p, error, match):
    with pytest.raises(error, match=match):
        Dropout(p)


def test_dropout_refuses_integers():
    with pytest.raises(TypeError, match="x: expected floats, got dtype int64"):
        Dropout(0.5, seed=0).forward(np.ones((2, 3), np.int64), training=True)


# -- LSTM in the Sequential protocol --------------------------------------------------------
LSTM_CASES = [(L, bi, rs, lens, B, T) for L in (1, 2) for bi in (False, True)
              for rs in (True, False) for lens in (False, True) for B, T in ((3, 5),)] + \
    [(2, True, rs, lens, 1, 1) for rs in (True, False) for lens in (False, True)] + \
    [(1, False, False, True, 4, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("L,bi,return_sequences,with_lengths,B,T", LSTM_CASES,
                         ids=[f"L{c[0]}-{'bi' if c[1] else 'uni'}-{'seq' if c[2] else 'last'}-"
                              f"{'lens' if c[3] else 'full'}-B{c[4]}T{c[5]}"
                              for c in LSTM_CASES])
def test_lstm_forward_and_backward_output_match_torch(rng, dtype, L, bi, return_sequences,
                                                       with_lengths, B, T):
    I, H = 4, 6
    D = 2 if bi else 1
    torch.manual_seed(int(rng.integers(1 << 30)))
    ref = torch.nn.LSTM(I, H, num_layers=L, bidirectional=bi, batch_first=True,
                        dtype=TORCH_DTYPE[dtype])
    layer = LSTM(I, H, num_layers=L, bidirectional=bi, return_sequences=return_sequences,
                 dtype=dtype, seed=0)
    layer.load_params({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    x = rng.standard_normal((B, T, I)).astype(dtype)
    lengths = rng.integers(1, T + 1, B) if with_lengths else None
    if with_lengths and B > 1:
        lengths[0] = T  # the padded output keeps all T steps
        lengths[-1] = max(1, T - 2)
    out_shape = (B, T, D * H) if return_sequences else (B, D * H)
    w = rng.standard_normal(out_shape).astype(dtype)

    xt = _t(x, grad=True)
    if with_lengths:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
        yp, (h_n, _) = ref(packed)
        yt, _ = torch.nn.utils.rnn.pad_packed_sequence(yp, batch_first=True, total_length=T)
    else:
        yt, (h_n, _) = ref(xt)
    want = yt if return_sequences else (
        torch.cat([h_n[-2], h_n[-1]], dim=1) if bi else h_n[-1])
    (want * _t(w)).sum().backward()

    out = layer.forward(x, training=True, lengths=lengths)
    dx = layer.backward_output(w)
    vtol, gtol = TOL[dtype]
    assert out.dtype == dtype and out.shape == out_shape
    assert_close(out, want.detach().numpy(), vtol, "output")
    assert_close(dx, xt.grad.numpy(), gtol, "dx")
    grads = {n: p.grad.numpy() for n, p in ref.named_parameters()}
    assert set(layer.grads) == set(grads)
    for name, g in grads.items():
        assert_close(layer.grads[name], g, gtol, f"grad {name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bi", [False, True])
@pytest.mark.parametrize("B,T", [(1, 4), (3, 1), (3, 4)])
def test_lstm_forward_output_is_the_callers_to_modify(rng, dtype, bi, B, T):
    """Scribbling on forward's output does not change the backward that follows."""
    layer = LSTM(3, 4, num_layers=2, bidirectional=bi, dtype=dtype, seed=0)
    x = rng.standard_normal((B, T, 3)).astype(dtype)
    w = rng.standard_normal((B, T, 8 if bi else 4)).astype(dtype)
    y = layer.forward(x, training=True)
    clean = layer.backward_output(w)
    y = layer.forward(x, training=True)
    y[...] = 1e6
    np.testing.assert_array_equal(layer.backward_output(w), clean)


@pytest.mark.parametrize("call,error,match", [
    (lambda l: l.forward(np.zeros((2, 3, 5))), ValueError,
     r"x: expected \[\.\.\., 4\] \(4 features"),
    (lambda l: l.forward(np.zeros((3, 4))), ValueError, r"x: expected \[B,T,4\]"),
    (lambda l: l.forward(np.zeros((2, 0, 4))), ValueError, r"x: expected \[B,T,4\] with B, T >= 1"),
    (lambda l: l.forward(np.zeros((2, 3, 4)), lengths=[3, 4]), ValueError,
     r"lengths: expected values in \[1, 3\]"),
    (lambda l: l.forward(np.zeros((2, 3, 4)), lengths=[3]), ValueError,
     r"lengths: expected shape \(2,\)"),
    (lambda l: l.forward(np.zeros((2, 3, 4)), lengths=[3.0, 1.0]), TypeError,
     "lengths: expected integers"),
])
def test_lstm_protocol_bad_input(call, error, match):
    layer = LSTM(4, 5, seed=0)
    before = {k: v.copy() for k, v in layer.params.items()}
    with pytest.raises(error, match=match):
        call(layer)
    for k, v in before.items():
        np.testing.assert_array_equal(layer.params[k], v)


def test_lstm_backward_output_bad_shape_keeps_the_cache(rng):
    layer = LSTM(4, 5, bidirectional=True, return_sequences=False, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 3, 4))
    layer.forward(x, training=True)
    with pytest.raises(ValueError, match=r"dout: expected the shape of the output, \(2, 10\)"):
        layer.backward_output(np.zeros((2, 3, 10)))
    assert all((g == 0).all() for g in layer.grads.values())
    dx = layer.backward_output(np.ones((2, 10)))
    assert dx.shape == x.shape and np.abs(dx).max() > 0


# -- Sequential: structure ----------------------------------------------------------------
@pytest.mark.parametrize("make,error,match", [
    (lambda: [], ValueError, "layers: expected at least one layer, got none"),
    (lambda: [LSTM(3, 4), "dense"], TypeError,
     r"layers\[1\]: expected a numlstm layer, got str"),
    (lambda: [Dense(3, 4), torch.nn.Linear(4, 2)], TypeError,
     r"layers\[1\]: expected a numlstm layer, got Linear"),
    (lambda: (lambda d: [d, Dense(4, 4), d])(Dense(4, 4)), ValueError,
     r"layers\[2\]: the same layer object appears twice"),
    (lambda: [LSTM(8, 16), Dense(15, 3)], ValueError,
     r"layer 1 \(dense\): expected input \[\.\.\., 15\], got \(None, None, 16\)"),
    (lambda: [Embedding(10, 8), LSTM(9, 4)], ValueError,
     r"layer 1 \(lstm\): expected input \[B,T,9\], got \(None, None, 8\)"),
    (lambda: [LSTM(3, 4, return_sequences=False), LSTM(4, 4)], ValueError,
     r"layer 1 \(lstm_1\): expected input \[B,T,4\], got \(None, 4\)"),
    (lambda: [LSTM(3, 4, bidirectional=True), Dropout(0.1), Dense(4, 2)], ValueError,
     r"layer 2 \(dense\): expected input \[\.\.\., 4\], got \(None, None, 8\)"),
])
def test_sequential_bad_construction(make, error, match):
    with pytest.raises(error, match=match):
        Sequential(make())


def test_sequential_leading_dropout_still_checks_sizes():
    with pytest.raises(ValueError, match=r"layer 2 \(dense\): expected input \[\.\.\., 15\]"):
        Sequential([Dropout(0.1), LSTM(8, 16), Dense(15, 3)])


def test_sequential_names_summary_and_counts():
    named = Dense(16, 16)
    named.name = "head"
    layers = [Embedding(11, 8, seed=0), LSTM(8, 16, seed=1), LSTM(16, 8, bidirectional=True,
                                                                  seed=2),
              Dropout(0.2), Dense(16, 16, seed=3), named, Dense(16, 11, seed=4)]
    lines = []
    model = Sequential(layers, name="tiny")
    text = model.summary(print_fn=lines.append)
    assert lines == [text]
    assert [l.name for l in model.layers] == ["embedding", "lstm", "lstm_1", "dropout",
                                              "dense", "head", "dense_1"]
    shapes = ["(None, None, 8)", "(None, None, 16)", "(None, None, 16)", "(None, None, 16)",
              "(None, None, 16)", "(None, None, 16)", "(None, None, 11)"]
    rows = text.splitlines()
    assert rows[0] == 'Model: "tiny"'
    total = 0
    for layer, shape in zip(model.layers, shapes):
        count = sum(p.size for p in layer.params.values())
        total += count
        row = [r for r in rows if r.startswith(f"{layer.name} ({type(layer).__name__})")]
        assert len(row) == 1, f"no single row for {layer.name} in\n{text}"
        assert shape in row[0] and row[0].rstrip().endswith(f"{count:,}"), row[0]
    assert model.count_params() == total
    assert f"Total params: {total:,}" in text
    # the counts agree with torch's modules of the same sizes
    torch_counts = [torch.nn.Embedding(11, 8), torch.nn.LSTM(8, 16),
                    torch.nn.LSTM(16, 8, bidirectional=True), torch.nn.Linear(16, 16),
                    torch.nn.Linear(16, 16), torch.nn.Linear(16, 11)]
    assert total == sum(p.numel() for m in torch_counts for p in m.parameters())
    keys = [k for k, _, _ in model.parameters()]
    assert len(keys) == len(set(keys)) and "lstm_1/weight_hh_l0_reverse" in keys


def test_set_weights_checks_everything_first(rng):
    model = Sequential([LSTM(3, 4, seed=0), Dense(4, 2, seed=1)])
    before = _weights(model)
    bad = {k: v + 1 for k, v in before.items()}
    bad["dense/bias"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"wrong shape \['dense/bias'\]"):
        model.set_weights(bad)
    del bad["dense/bias"]
    with pytest.raises(ValueError, match=r"missing \['dense/bias'\]"):
        model.set_weights(bad)
    _assert_weights_equal(_weights(model), before)


# -- Sequential: gradients of a whole model ---------------------------------------------------
def _fd_grads(model, loss, x, y, lengths, eps=1e-5):
    """Central differences of loss(model.forward(x)) for every parameter. eps near
    the float64 optimum for central differences (cube root of the machine
    epsilon, 6e-6): at 1e-6 the loss's last-bit rounding alone, divided by 2 eps,
    came within a factor of 1 of the 1e-6 tolerance, so the order of a sum decided
    whether the check passed."""
    out = {}
    for layer in model.layers:
        base = {k: np.array(v) for k, v in layer.params.items()}
        for name in base:
            num = np.zeros_like(base[name])
            for idx in np.ndindex(num.shape):
                for sign in (1, -1):
                    w = {k: v.copy() for k, v in base.items()}
                    w[name][idx] += sign * eps
                    layer.load_params(w)
                    num[idx] += sign * loss(model.forward(x, lengths=lengths), y) / (2 * eps)
            out[f"{layer.name}/{name}"] = num
        layer.load_params(base)
    return out


FD_CASES = [
    # (num_layers, bidirectional, return_sequences, B, T, with lengths)
    (2, True, True, 2, 3, False),
    (1, True, False, 3, 4, True),
    (1, False, True, 1, 1, False),
]


@pytest.mark.parametrize("L,bi,return_sequences,B,T,with_lengths", FD_CASES)
def test_model_gradients_match_finite_differences(rng, L, bi, return_sequences, B, T,
                                                  with_lengths):
    V, E, H = 5, 3, 3
    D = 2 if bi else 1
    f64 = np.float64
    model = Sequential([Embedding(V, E, dtype=f64, seed=1),
                        LSTM(E, H, num_layers=L, bidirectional=bi, dtype=f64, seed=2,
                             return_sequences=return_sequences),
                        Dense(D * H, V, dtype=f64, seed=3)])
    loss = CrossEntropyLoss()
    x = rng.integers(0, V, (B, T))
    y = rng.integers(0, V, (B, T) if return_sequences else (B,))
    lengths = np.array([T] + [max(1, T - 2)] * (B - 1)) if with_lengths else None
    model.zero_grad()
    out = model.forward(x, training=True, lengths=lengths)
    value, grad = loss.value_and_grad(out, y)
    assert model.backward(grad) is None  # the Embedding ends the chain
    assert value == loss(model.forward(x, lengths=lengths), y)
    numeric = _fd_grads(model, loss, x, y, lengths)
    for key, p, g in model.parameters():
        assert g.dtype == f64
        err = rel_err(g, numeric[key])
        assert err < 1e-6, f"{key}: relative error {err:.2e} against finite differences"


def test_model_loss_and_gradients_match_torch(rng):
    V, E, H, B, T = 7, 5, 6, 3, 5
    torch.manual_seed(int(rng.integers(1 << 30)))
    emb, rnn = torch.nn.Embedding(V, E), torch.nn.LSTM(E, H, num_layers=2, bidirectional=True,
                                                      batch_first=True)
    lin = torch.nn.Linear(2 * H, V)
    model = Sequential([Embedding(V, E, seed=0), LSTM(E, H, num_layers=2, bidirectional=True,
                                                      seed=0), Dense(2 * H, V, seed=0)])
    for layer, module in zip(model.layers, (emb, rnn, lin)):
        layer.load_params({k: v.detach().numpy() for k, v in module.state_dict().items()})
    x = rng.integers(0, V, (B, T))
    y = rng.integers(0, V, (B, T))
    logits = lin(rnn(emb(torch.tensor(x)))[0])
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, V), torch.tensor(y).reshape(-1))
    want.backward()

    out = model.forward(x, training=True)
    value, grad = CrossEntropyLoss().value_and_grad(out, y)
    model.backward(grad)
    assert_close(out, logits.detach().numpy(), 1e-5, "logits")
    assert abs(value - want.item()) <= 1e-5 * abs(want.item())
    torch_grads = {f"{layer.name}/{n}": p.grad.numpy()
                   for layer, module in zip(model.layers, (emb, rnn, lin))
                   for n, p in module.named_parameters()}
    assert set(torch_grads) == {k for k, _, _ in model.parameters()}
    for key, _, g in model.parameters():
        assert_close(g, torch_grads[key], 1e-4, f"grad {key}")


# -- fit / evaluate / predict -------------------------------------------------------------
def _sum_task(rng, n, T):
    x = rng.uniform(-1, 1, (n, T, 1))
    return x, x.sum(axis=1)  # y [n, 1]: the sum of the sequence


def _regressor(seed=0, dtype=np.float64, hidden=8, dropout=0.0):
    layers = [LSTM(1, hidden, return_sequences=False, dtype=dtype, seed=seed)]
    if dropout:
        layers.append(Dropout(dropout, seed=seed + 1))
    layers.append(Dense(hidden, 1, dtype=dtype, seed=seed + 2))
    return Sequential(layers, seed=seed + 3)


def test_fit_learns_the_sum_of_a_sequence(rng):
    x, y = _sum_task(rng, 64, 6)
    xv, yv = _sum_task(rng, 17, 6)
    model = _regressor().compile("adam", "mse", lr=0.03)
    first = model.evaluate(xv, yv)
    history = model.fit(x, y, epochs=15, batch_size=16, validation_data=(xv, yv), verbose=0)
    assert set(history) == {"loss", "val_loss", "tokens_per_s"}
    assert all(len(v) == 15 for v in history.values())
    assert history["val_loss"][-1] == model.evaluate(xv, yv, batch_size=16)
    assert history["val_loss"][-1] < 0.1 * first, (first, history["val_loss"])
    assert history["loss"][-1] < 0.2 * history["loss"][0]
    assert all(t > 0 for t in history["tokens_per_s"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_in_batches_and_evaluate_match_by_hand(rng, dtype):
    model = Sequential([LSTM(3, 5, num_layers=2, dtype=dtype, seed=0),
                        Dense(5, 2, dtype=dtype, seed=1)]).compile("adam", "mse")
    x = rng.standard_normal((10, 4, 3)).astype(dtype)
    y = rng.standard_normal((10, 4, 2)).astype(dtype)
    whole = model.predict(x)
    for bs in (1, 3, 10, 32):
        got = model.predict(x, batch_size=bs)
        if dtype == np.float32:  # the tiled kernels compute each row the same way
            np.testing.assert_array_equal(got, whole, err_msg=f"batch_size={bs}")
        else:  # float64 goes through BLAS, whose kernel may change with the row count
            assert_close(got, whole, 1e-14, f"predict batch_size={bs}")
    by_hand = MSELoss()(whole, y)
    for bs in (4, 10, 256):  # 4 leaves a last batch of 2, weighted by its size
        got = model.evaluate(x, y, batch_size=bs)
        assert abs(got - by_hand) <= 1e-6 * by_hand, (bs, got, by_hand)


def test_predict_with_lengths_in_batches(rng):
    model = Sequential([LSTM(2, 4, return_sequences=False, dtype=np.float64, seed=0),
                        Dense(4, 1, dtype=np.float64, seed=1)])
    x = rng.standard_normal((5, 6, 2))
    lengths = np.array([6, 1, 3, 6, 2])
    whole = model.predict(x, lengths=lengths)
    assert_close(model.predict(x, batch_size=2, lengths=lengths), whole, 1e-14, "predict")
    # a sequence's prediction is that of its valid prefix alone
    for b in range(5):
        alone = model.predict(x[b:b + 1, :lengths[b]])
        assert_close(whole[b:b + 1], alone, 1e-12, f"sequence {b}")


def test_training_errors_change_nothing(rng):
    model = _regressor()
    x, y = _sum_task(rng, 6, 3)
    before = _weights(model)
    with pytest.raises(RuntimeError, match=r"fit: call model.compile"):
        model.fit(x, y, verbose=0)
    with pytest.raises(RuntimeError, match=r"evaluate: call model.compile"):
        model.evaluate(x, y)
    with pytest.raises(RuntimeError, match=r"train_step: call model.compile"):
        model.train_step(x, y)
    model.compile("sgd", "mse", lr=0.1)
    with pytest.raises(ValueError, match=r"x and y: expected the same number of samples "
                                         r"\(first axis\), got 6 and 5"):
        model.fit(x, y[:5], verbose=0)
    with pytest.raises(ValueError, match="x and y: expected the same number"):
        model.evaluate(x[:2], y)
    # (numlstm.validation's rule: a wrong type is a TypeError, a wrong value a ValueError)
    for bad, error in ((0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError),
                       ("4", TypeError)):
        with pytest.raises(error, match=r"batch_size: expected an integer >= 1, got"):
            model.fit(x, y, batch_size=bad, verbose=0)
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1"):
        model.evaluate(x, y, batch_size=0)
    with pytest.raises(ValueError, match="get_optimizer: expected one of"):
        model.compile("rmsprop", "mse")
    with pytest.raises(ValueError, match="get_loss: expected one of"):
        model.compile("sgd", "hinge")
    _assert_weights_equal(_weights(model), before)


def test_fit_accepts_a_numpy_integer_batch_size(rng):
    model = _regressor().compile("sgd", "mse", lr=0.01)
    x, y = _sum_task(rng, 6, 3)
    history = model.fit(x, y, batch_size=np.int64(4), verbose=0)
    assert len(history["loss"]) == 1


@pytest.mark.parametrize("bad", [0, -1])
def test_predict_bad_batch_size(rng, bad):
    model = _regressor()
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1"):
        model.predict(_sum_task(rng, 4, 3)[0], batch_size=bad)


# -- reproducibility and the optimizer --------------------------------------------------------
def test_same_seeds_same_training_different_seeds_differ(rng):
    x, y = _sum_task(rng, 12, 4)
    x, y = x.astype(np.float32), y.astype(np.float32)
    runs = []
    for seed in (5, 5, 6):
        model = _regressor(seed=seed, dtype=np.float32, hidden=6, dropout=0.3)
        model.compile("adam", "mse", lr=0.01)
        model.fit(x, y, epochs=2, batch_size=5, verbose=0)  # shuffled, with dropout
        runs.append(_weights(model))
    _assert_weights_equal(runs[0], runs[1])
    assert all(not np.array_equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_sgd_train_step_moves_each_parameter_by_minus_lr_grad(rng):
    lr = 0.1
    build = lambda: Sequential([LSTM(3, 4, num_layers=2, bidirectional=True, seed=0),  # noqa
                                Dense(8, 2, seed=1)])
    model = build().compile("sgd", "mse", lr=lr)
    x = rng.standard_normal((3, 5, 3)).astype(np.float32)
    y = rng.standard_normal((3, 5, 2)).astype(np.float32)
    lstm = model.layers[0]
    out_before = lstm.forward(x)  # fills the LSTM's packed-kernel cache
    before = _weights(model)

    value = model.train_step(x, y)
    after = _weights(model)
    grads = {k: g.copy() for k, _, g in model.parameters()}

    # the same gradients from a separate forward/backward at the old weights
    ref = build()
    ref.set_weights(before)
    want_value, dout = MSELoss().value_and_grad(ref.forward(x, training=True), y)
    ref.backward(dout)
    assert value == want_value
    for key, _, g in ref.parameters():
        np.testing.assert_array_equal(grads[key], g, err_msg=key)
        assert np.abs(g).max() > 0, key
        np.testing.assert_array_equal(after[key], before[key] - lr * g, err_msg=key)

    # the parameters are read-only again, and the packed kernels use the new weights
    for name, p in lstm.params.items():
        assert not p.flags.writeable, name
    with pytest.raises(ValueError, match="read-only"):
        lstm.params["weight_hh_l0"][0, 0] = 1.0
    fresh = LSTM(3, 4, num_layers=2, bidirectional=True, seed=99)
    fresh.load_params(lstm.params)
    out_after = lstm.forward(x)
    np.testing.assert_array_equal(out_after, fresh.forward(x))
    assert np.abs(out_after - out_before).max() > 1e-6


# -- checkpoints ---------------------------------------------------------------------------
V_CK, T_CK, B_CK = 6, 5, 4


def _ckpt_model(optimizer="adam"):
    model = Sequential([Embedding(V_CK, 4, seed=1),
                        LSTM(4, 5, num_layers=2, bidirectional=True, dropout=0.3, seed=2),
                        Dropout(0.25, seed=3), Dense(10, V_CK, seed=4)], name="ck", seed=5)
    args = dict(lr=0.01) if optimizer == "adam" else dict(lr=0.1, momentum=0.9)
    return model.compile(optimizer, "cross_entropy", **args)


def _ckpt_data(rng):
    return rng.integers(0, V_CK, (B_CK, T_CK)), rng.integers(0, V_CK, (B_CK, T_CK))


def _trained(rng, optimizer="adam", steps=3):
    model = _ckpt_model(optimizer)
    x, y = _ckpt_data(rng)
    for _ in range(steps):
        model.train_step(x, y)
    return model, x, y


def test_checkpoint_round_trip_predicts_bitwise(rng, tmp_path):
    model, x, _ = _trained(rng)
    extra = {"task": "unit", "vocab": "abc", "nested": {"n": [1, 2.5]}}
    path = numlstm.save_checkpoint(tmp_path / "run.npz", model, model.optimizer, step=3,
                                   extra=extra)
    assert path == str(tmp_path / "run.npz") and os.listdir(tmp_path) == ["run.npz"]
    ck = numlstm.load_checkpoint(path)
    assert ck.step == 3 and ck.extra == extra
    assert ck.model.get_config() == model.get_config()
    assert [type(l) for l in ck.model.layers] == [type(l) for l in model.layers]
    _assert_weights_equal(ck.model.get_weights(), model.get_weights())
    np.testing.assert_array_equal(ck.model.predict(x), model.predict(x))
    assert ck.optimizer.steps == model.optimizer.steps == 3
    assert type(ck.optimizer) is type(model.optimizer)
    assert ck.optimizer.state_dict()["config"] == model.optimizer.state_dict()["config"]
    assert ck.model.rng_states() == model.rng_states()
    np.testing.assert_array_equal(numlstm.load(path).predict(x), model.predict(x))


def test_checkpoint_keeps_the_optimizer_state_exactly(rng, tmp_path):
    model, _, _ = _trained(rng)
    numlstm.save_checkpoint(tmp_path, model, model.optimizer, step=3)
    got = numlstm.load_checkpoint(tmp_path).optimizer.state_dict()["state"]
    want = model.optimizer.state_dict()["state"]
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].shape == want[k].shape and got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _continue_equivalence(rng, tmp_path, optimizer):
    model, x, y = _trained(rng, optimizer)
    model.save(tmp_path / "ck.npz", step=3)
    ck = numlstm.load_checkpoint(tmp_path / "ck.npz")
    loaded = ck.model.compile(ck.optimizer, "cross_entropy")
    for m in (model, loaded):  # two dropout-masked steps, then a shuffled epoch of two
        m.train_step(x, y)
        m.train_step(x, y)
        m.fit(x, y, epochs=1, batch_size=B_CK // 2, shuffle=True, verbose=0)
    _assert_weights_equal(loaded.get_weights(), model.get_weights())
    assert loaded.optimizer.steps == model.optimizer.steps == 7


def test_continuing_from_a_checkpoint_is_bitwise_the_same_sgd(rng, tmp_path):
    _continue_equivalence(rng, tmp_path, "sgd")


def test_continuing_from_a_checkpoint_is_bitwise_the_same_adam(rng, tmp_path):
    _continue_equivalence(rng, tmp_path, "adam")


def test_checkpoint_folder_path_and_model_save(rng, tmp_path):
    model, x, _ = _trained(rng, steps=1)
    path = numlstm.save_checkpoint(tmp_path, model)  # a folder: folder/checkpoint.npz
    assert path == os.path.join(str(tmp_path), "checkpoint.npz")
    ck = numlstm.load_checkpoint(tmp_path)
    assert ck.optimizer is None and ck.step == 0 and ck.extra == {}
    np.testing.assert_array_equal(ck.model.predict(x), model.predict(x))
    model.save(tmp_path / "sub.npz", step=7, extra={"a": 1})
    ck = numlstm.load_checkpoint(tmp_path / "sub.npz")
    assert ck.step == 7 and ck.extra == {"a": 1} and ck.optimizer.steps == 1
    np.testing.assert_array_equal(numlstm.load(tmp_path / "sub.npz").predict(x),
                                  model.predict(x))


def test_checkpoint_write_is_atomic(rng, tmp_path, monkeypatch):
    model, x, y = _trained(rng, steps=1)
    path = tmp_path / "checkpoint.npz"
    numlstm.save_checkpoint(path, model, model.optimizer, step=1)
    old = path.read_bytes()
    model.train_step(x, y)  # new weights the failed save must not leave behind

    real, calls = np.lib.format.write_array, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError("disk full (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing)
    with pytest.raises(OSError, match="disk full"):
        numlstm.save_checkpoint(path, model, model.optimizer, step=2)
    assert len(calls) == 2
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["checkpoint.npz"]
    assert numlstm.load_checkpoint(path).step == 1

    # an extra that JSON cannot hold fails before any file is touched
    with pytest.raises(TypeError, match=r"extra\.bad is <object object at .*>, which is not "
                                        "JSON serializable"):
        numlstm.save_checkpoint(path, model, step=3, extra={"bad": object()})
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["checkpoint.npz"]


def test_loading_what_is_not_a_checkpoint(rng, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt: not a numlstm checkpoint"):
        numlstm.load_checkpoint(text)
    npz = tmp_path / "plain.npz"
    np.savez(npz, a=np.zeros(3))
    with pytest.raises(ValueError, match="plain.npz: not a numlstm checkpoint"):
        numlstm.load_checkpoint(npz)
    other = tmp_path / "other.npz"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("meta.json", json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(ValueError, match=r"not a numlstm checkpoint \(format 'something-else'"):
        numlstm.load_checkpoint(other)
    model, _, _ = _trained(rng, steps=1)
    future = tmp_path / "future.npz"
    numlstm.save_checkpoint(future, model)
    with zipfile.ZipFile(future) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(entries["meta.json"])
    meta["version"] = 99
    entries["meta.json"] = json.dumps(meta).encode()
    del entries["sha256"]  # (a file edited by hand; a kept checksum would catch the edit)
    with zipfile.ZipFile(future, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    with pytest.raises(ValueError, match="checkpoint version 99, this numlstm reads version 1"):
        numlstm.load_checkpoint(future)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        numlstm.load_checkpoint(tmp_path / "missing.npz")
    (tmp_path / "empty").mkdir()  # a folder resolves to folder/checkpoint.npz
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*empty.checkpoint\.npz"):
        numlstm.load(tmp_path / "empty")


def test_loading_a_npy_file_is_refused_clearly(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match="array.npy: not a numlstm checkpoint"):
        numlstm.load_checkpoint(path)
