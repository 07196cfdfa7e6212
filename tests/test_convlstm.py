"""The ConvLSTM2D and ConvLSTM1D layers: backends against each other and against the
reference (outputs and every gradient, lengths, initial state, recurrent dropout's
mask), batch-first against time-major, the 1-D layer against the 2-D one on one-row
frames, the Sequential protocol (summary, fit, checkpoints, config) and the argument
checks. (The CPU kernels against the reference: tests/kernels/test_cpu_convlstm.py;
against Keras's own layers: tests/test_interop_keras.py.)"""
import re

import numpy as np
import pytest

import numlstm
from numlstm.kernels.reference import (conv_geometry, convlstm_backward_ref,
                                       convlstm_forward_ref)
from numlstm.layers.base import dropout_mask
from helpers import assert_close, rel_err

RTOL = {np.float32: 1e-5, np.float64: 1e-12}  # outputs; gradients get 5x
GRADS = ("weight_ih", "weight_hh", "bias")


def _layer(cls, I, F, k, **options):
    return cls(I, F, k, seed=options.pop("seed", 3), **options)


def _x(rng, cls, T, B, grid, I, dtype=np.float32):
    grid = grid if cls is numlstm.ConvLSTM2D else grid[-1:]
    return rng.standard_normal((T, B) + tuple(grid) + (I,)).astype(dtype)


def _two_d(layer, a):
    """A 1-D layer's [.., L, ch] array as the 2-D form [.., 1, L, ch] (2-D: as is)."""
    return a[..., None, :, :] if layer.rank == 1 else a


def _one_d(layer, a):
    return a[..., 0, :, :] if layer.rank == 1 else a


def _reference(layer, x, state=None, lengths=None, mask=None):
    """convlstm_forward_ref in float64 with the layer's parameters, x time-major in the
    layer's own shapes: (y, h, c, cache) in the 2-D form."""
    p = {k: v.astype(np.float64) for k, v in layer.params.items()}
    w_ih, w_hh = p["weight_ih"], p["weight_hh"]
    strides, dilation = layer.strides, layer.dilation_rate
    if layer.rank == 1:
        w_ih, w_hh = w_ih[:, :, None], w_hh[:, :, None]
        strides, dilation = (1,) + strides, (1,) + dilation
    x2 = _two_d(layer, np.asarray(x, np.float64))
    T, B = x2.shape[:2]
    grid = tuple(conv_geometry(n, k, s, d, layer.padding)[0]
                 for n, k, s, d in zip(x2.shape[2:4], w_ih.shape[2:], strides, dilation))
    shape = (B,) + grid + (layer.filters,)
    h0, c0 = (np.zeros(shape),) * 2 if state is None else (
        np.asarray(s, np.float64).reshape(shape) for s in state)
    return convlstm_forward_ref(x2, w_ih, w_hh, p["bias"], h0, c0, strides, layer.padding,
                                dilation, lengths, None if mask is None
                                else mask.astype(np.float64))


def _train(layer, x, dy, dh, dc, **call):
    """A training call and its backward: dict of outputs and gradients (grads copied
    after zero_grad, so this call's alone)."""
    layer.zero_grad()
    y, (h, c) = layer(x, training=True, **call)
    dx, (dh0, dc0) = layer.backward(dy, dh, dc)
    return dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0,
                **{k: layer.grads[k].copy() for k in GRADS})


def _random_like_outputs(rng, layer, x, state=None, lengths=None):
    y, (h, c) = layer(x, state=state, lengths=lengths)
    return tuple(rng.standard_normal(a.shape).astype(layer.dtype) for a in (y, h, c))


CONFIGS = {  # (cls, grid, I, F, kernel, options)
    "2d-same": (numlstm.ConvLSTM2D, (5, 4), 2, 3, 3, dict(padding="same")),
    "2d-valid-strided-even": (numlstm.ConvLSTM2D, (7, 6), 3, 17, (2, 4),
                              dict(strides=(2, 1))),
    "2d-dilated-same-F16": (numlstm.ConvLSTM2D, (6, 5), 1, 16, (3, 2),
                            dict(padding="same", dilation_rate=(1, 2))),
    "1d-same": (numlstm.ConvLSTM1D, (1, 7), 3, 5, 3, dict(padding="same")),
    "1d-valid-strided": (numlstm.ConvLSTM1D, (1, 9), 2, 1, 2, dict(strides=2)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_cpu_and_numpy_backends_agree(rng, config, dtype):
    cls, grid, I, F, k, options = config
    cpu, ref = (_layer(cls, I, F, k, dtype=dtype, backend=b, **options)
                for b in ("cpu", "numpy"))
    T, B = 4, 3
    x = _x(rng, cls, T, B, grid, I, dtype)
    lengths = np.array([4, 1, 3])
    dy, dh, dc = _random_like_outputs(rng, cpu, x, lengths=lengths)
    state = tuple(rng.standard_normal(dh.shape).astype(dtype) for _ in range(2))
    got = _train(cpu, x, dy, dh, dc, state=state, lengths=lengths)
    want = _train(ref, x, dy, dh, dc, state=state, lengths=lengths)
    for name in want:
        assert got[name].dtype == dtype, name
        assert_close(got[name], want[name],
                     RTOL[dtype] * (1 if name in ("y", "h", "c") else 5), name)
    assert rel_err(got["y"][0], got["y"][1]) > 1e-3  # (steps differ: the recurrence bites)


@pytest.mark.parametrize("cls", [numlstm.ConvLSTM2D, numlstm.ConvLSTM1D])
def test_batch_first_equals_the_transposed_time_major_call(rng, cls):
    tm, bf = (_layer(cls, 2, 5, 3, padding="same", batch_first=b) for b in (False, True))
    x = _x(rng, cls, 4, 3, (5, 6), 2)
    lengths = np.array([2, 4, 3])
    dy, dh, dc = _random_like_outputs(rng, tm, x, lengths=lengths)
    want = _train(tm, x, dy, dh, dc, lengths=lengths)
    got = _train(bf, x.swapaxes(0, 1), dy.swapaxes(0, 1), dh, dc, lengths=lengths)
    for name in want:
        flip = name in ("y", "dx")
        np.testing.assert_array_equal(got[name].swapaxes(0, 1) if flip else got[name],
                                      want[name], err_msg=name)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("k,options", [(3, dict(padding="same")),
                                       (2, dict(padding="same", strides=2)),
                                       (3, dict(dilation_rate=2)),
                                       (4, dict(padding="valid", strides=3))])
def test_conv1d_equals_conv2d_with_a_1xk_kernel_on_one_row_frames(rng, backend, k, options):
    I, F = 2, 6
    one = numlstm.ConvLSTM1D(I, F, k, backend=backend, seed=1, **options)
    two = numlstm.ConvLSTM2D(I, F, (1, k), backend=backend, seed=2,
                             **{n: (1, v) if n != "padding" else v
                                for n, v in options.items()})
    two.load_weights({n: (v[:, :, None] if v.ndim == 3 else v)
                      for n, v in one.params.items()})
    x1 = rng.standard_normal((3, 2, 11, I)).astype(np.float32)
    lengths = np.array([3, 2])
    dy, dh, dc = _random_like_outputs(rng, one, x1, lengths=lengths)
    state = tuple(rng.standard_normal(dh.shape).astype(np.float32) for _ in range(2))
    want = _train(one, x1, dy, dh, dc, state=state, lengths=lengths)
    got = _train(two, x1[:, :, None], dy[:, :, None], dh[:, None], dc[:, None],
                 state=tuple(s[:, None] for s in state), lengths=lengths)
    for name in want:
        g = got[name]
        if name in ("y", "dx", "weight_ih", "weight_hh"):
            g = g[:, :, 0]
        elif name in ("h", "c", "dh0", "dc0"):
            g = g[:, 0]
        assert_close(g, want[name], 1e-6, name)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_layer_gradients_match_the_reference(rng, config, backend):
    cls, grid, I, F, k, options = config
    layer = _layer(cls, I, F, k, backend=backend, **options)
    x = _x(rng, cls, 3, 2, grid, I)
    lengths = np.array([1, 3])
    dy, dh, dc = _random_like_outputs(rng, layer, x, lengths=lengths)
    got = _train(layer, x, dy, dh, dc, lengths=lengths)
    y, h, c, cache = _reference(layer, x, lengths=lengths)
    grads = convlstm_backward_ref(*(_two_d(layer, a.astype(np.float64)) for a in (dy, dh, dc)),
                                  cache)
    want = dict(y=_one_d(layer, y), h=_one_d(layer, h), c=_one_d(layer, c),
                dx=_one_d(layer, grads["dx"]), dh0=_one_d(layer, grads["dh0"]),
                dc0=_one_d(layer, grads["dc0"]), bias=grads["db"],
                weight_ih=grads["dw_ih"][:, :, 0] if layer.rank == 1 else grads["dw_ih"],
                weight_hh=grads["dw_hh"][:, :, 0] if layer.rank == 1 else grads["dw_hh"])
    for name in want:
        assert_close(got[name], want[name], 1e-5 if name in ("y", "h", "c") else 5e-5, name)
    # gradients add up over backward calls until zero_grad
    layer(x, training=True, lengths=lengths)
    layer.backward(dy, dh, dc)
    for name in GRADS:
        assert_close(layer.grads[name], 2 * got[name], 1e-6, f"{name} accumulated")


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_returned_arrays_are_the_callers(rng, backend):
    """Writing into the returned y, h, c between forward and backward changes nothing."""
    layer = numlstm.ConvLSTM2D(2, 3, 3, padding="same", backend=backend, seed=0,
                               dtype=np.float64)
    x = rng.standard_normal((3, 2, 4, 5, 2))
    dy, dh, dc = _random_like_outputs(rng, layer, x)
    want = _train(layer, x, dy, dh, dc)
    layer.zero_grad()
    y, (h, c) = layer(x, training=True)
    for a in (y, h, c):
        a[...] = 7.0
    dx, (dh0, dc0) = layer.backward(dy, dh, dc)
    for name, g in [("dx", dx), ("dh0", dh0), ("dc0", dc0)] + [
            (k, layer.grads[k]) for k in GRADS]:
        assert_close(g, want[name], 1e-12, name)


@pytest.mark.parametrize("cls", [numlstm.ConvLSTM2D, numlstm.ConvLSTM1D])
def test_last_output_is_each_sequences_h_at_its_last_valid_step(rng, cls):
    last, seqs = (_layer(cls, 2, 4, 3, padding="same", return_sequences=r)
                  for r in (False, True))
    x = _x(rng, cls, 5, 4, (4, 6), 2)
    lengths = np.array([5, 1, 3, 2])
    y, (h, _) = last(x, lengths=lengths)
    xb = x.swapaxes(0, 1)
    out = numlstm.Sequential([last]).predict(xb, lengths=lengths)
    assert out.shape == h.shape
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(out[b], y[n - 1, b], err_msg=f"sequence {b}")
    assert rel_err(out[1], y[-1, 0]) > 1e-3
    np.testing.assert_array_equal(numlstm.Sequential([seqs]).predict(xb, lengths=lengths),
                                  y.swapaxes(0, 1))


@pytest.mark.parametrize("cls", [numlstm.ConvLSTM2D, numlstm.ConvLSTM1D])
def test_initial_state_is_used(rng, cls):
    layer = _layer(cls, 3, 5, 3, padding="same", dtype=np.float64)
    x = _x(rng, cls, 3, 2, (4, 5), 3, np.float64)
    zero_y, (zero_h, _) = layer(x)
    state = tuple(rng.standard_normal(zero_h.shape) for _ in range(2))
    y, (h, c) = layer(x, state=state)
    ry, rh, rc, _ = _reference(layer, x, state=[_two_d(layer, s) for s in state])
    for name, got, want in (("y", y, ry), ("h", h, rh), ("c", c, rc)):
        assert_close(got, _one_d(layer, want), 1e-12, name)
    assert rel_err(y[0], zero_y[0]) > 1e-2
    ry0, *_ = _reference(layer, x)
    assert_close(zero_y, _one_d(layer, ry0), 1e-12, "zero state")


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_recurrent_dropout_is_seeded_and_only_active_when_training(rng, backend):
    p = 0.4
    a, b = (numlstm.ConvLSTM2D(2, 5, 3, padding="same", recurrent_dropout=p, seed=9,
                               backend=backend) for _ in range(2))
    plain = numlstm.ConvLSTM2D(2, 5, 3, padding="same", seed=9, backend=backend)
    x = rng.standard_normal((4, 2, 5, 5, 2)).astype(np.float32)
    ya, yb = a(x, training=True)[0], b(x, training=True)[0]
    np.testing.assert_array_equal(ya, yb)  # same seed, same mask
    inference = a(x)[0]
    np.testing.assert_array_equal(a(x)[0], inference)
    np.testing.assert_array_equal(plain(x)[0], inference)
    np.testing.assert_array_equal(ya[0], inference[0])  # (the mask acts from step 2)
    assert rel_err(ya, inference) > 1e-3
    assert rel_err(a(x, training=True)[0], ya) > 1e-3  # a fresh mask each call


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("cls", [numlstm.ConvLSTM2D, numlstm.ConvLSTM1D])
def test_recurrent_dropout_backward_matches_the_reference_with_its_mask(rng, cls, backend):
    p = 0.3
    layer = _layer(cls, 2, 17, 3, padding="same", recurrent_dropout=p, backend=backend,
                   dtype=np.float64)
    x = _x(rng, cls, 4, 2, (4, 5), 2, np.float64)
    lengths = np.array([4, 2])
    dy, dh, dc = _random_like_outputs(rng, layer, x, lengths=lengths)
    # the mask the layer will draw: dropout_mask(its generator, [B,R',C',F] in the
    # 2-D form, p, dtype)
    gen = np.random.default_rng()
    gen.bit_generator.state = layer._drop_rng.bit_generator.state
    mask = dropout_mask(gen, _two_d(layer, dh).shape, p, np.float64)
    assert (mask == 0).any() and (mask > 0).any()
    got = _train(layer, x, dy, dh, dc, lengths=lengths)
    y, h, c, cache = _reference(layer, x, lengths=lengths, mask=mask)
    g = convlstm_backward_ref(_two_d(layer, dy), _two_d(layer, dh), _two_d(layer, dc), cache)
    squeeze = (lambda w: w[:, :, 0]) if layer.rank == 1 else (lambda w: w)
    want = dict(y=_one_d(layer, y), h=_one_d(layer, h), c=_one_d(layer, c),
                dx=_one_d(layer, g["dx"]), dh0=_one_d(layer, g["dh0"]),
                dc0=_one_d(layer, g["dc0"]), weight_ih=squeeze(g["dw_ih"]),
                weight_hh=squeeze(g["dw_hh"]), bias=g["db"])
    for name in want:
        assert_close(got[name], want[name], 1e-12, name)
    plain_y, *_ = _reference(layer, x, lengths=lengths)
    assert rel_err(got["y"], _one_d(layer, plain_y)) > 1e-3


@pytest.mark.parametrize("unit_forget_bias", [True, False])
def test_unit_forget_bias(unit_forget_bias):
    F = 5
    layer = numlstm.ConvLSTM2D(2, F, 3, unit_forget_bias=unit_forget_bias, seed=0)
    want = np.zeros(4 * F, np.float32)
    if unit_forget_bias:
        want[F:2 * F] = 1
    np.testing.assert_array_equal(layer.params["bias"], want)
    assert layer.params["bias"].dtype == np.float32


@pytest.mark.parametrize("cls,k,I,F", [(numlstm.ConvLSTM2D, (3, 2), 3, 7),
                                       (numlstm.ConvLSTM2D, 5, 1, 16),
                                       (numlstm.ConvLSTM1D, 4, 6, 2)])
def test_summary_lists_the_layer_with_keras_param_count(cls, k, I, F):
    layer = cls(I, F, k, padding="same", return_sequences=True)
    text = numlstm.Sequential([layer], name="frames").summary(print_fn=lambda s: None)
    area = int(np.prod(k)) if isinstance(k, tuple) else k ** layer.rank
    count = area * I * 4 * F + area * F * 4 * F + 4 * F  # Keras's count
    name = type(layer).__name__
    row = next(line for line in text.splitlines() if f"({name})" in line)
    assert row.split()[-1] == f"{count:,}"
    assert f"Total params: {count:,}" in text
    assert row.split()[0] == name.lower()
    assert f"{F})" in row  # the output shape ends with the filters


def _moving_squares(rng, n, T, size):
    """n sequences of T frames [size, size, 1]: a 2x2 square moving one pixel a step
    (down or right), wrapping around."""
    frames = np.zeros((n, T, size, size, 1), np.float32)
    for s in range(n):
        r, c = rng.integers(0, size, 2)
        dr, dc = ((0, 1), (1, 0))[s % 2]
        for t in range(T):
            for y in (0, 1):
                for x in (0, 1):
                    frames[s, t, (r + t * dr + y) % size, (c + t * dc + x) % size] = 1
    return frames


def test_fit_learns_a_next_frame_task(rng):
    frames = _moving_squares(rng, 24, 5, 6)
    x, y = frames[:, :-1], frames[:, 1:]
    model = numlstm.Sequential([
        numlstm.ConvLSTM2D(1, 6, 3, padding="same", return_sequences=True, seed=0),
        numlstm.ConvLSTM2D(6, 1, 3, padding="same", return_sequences=True, seed=1)],
        seed=0)
    model.compile(optimizer="adam", loss="mse", lr=2e-2)
    before = model.evaluate(x, y)
    history = model.fit(x, y, epochs=12, batch_size=8, verbose=0)
    after = model.evaluate(x, y)
    assert np.isfinite(history["loss"]).all()
    assert after < 0.6 * before, (before, history["loss"])
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("cls", [numlstm.ConvLSTM2D, numlstm.ConvLSTM1D])
def test_checkpoint_and_config_round_trip(rng, tmp_path, cls):
    layer = cls(2, 5, 3, strides=2, padding="same", return_sequences=False,
                recurrent_dropout=0.25, unit_forget_bias=False, dtype=np.float64,
                backend="cpu", seed=11)
    twin = cls(**layer.get_config())
    assert twin.get_config() == layer.get_config()
    assert type(twin) is cls
    for k, v in layer.params.items():  # the seed makes the same weights
        np.testing.assert_array_equal(twin.params[k], v, err_msg=k)
    # weights away from the seed's, so a checkpoint that lost them shows
    layer.load_weights({k: v + rng.standard_normal(v.shape) * 0.1
                        for k, v in layer.params.items()})
    model = numlstm.Sequential([layer])
    x = _x(rng, cls, 4, 3, (5, 6), 2, np.float64).swapaxes(0, 1)
    model.save(tmp_path / "ck")
    back = numlstm.load(tmp_path / "ck")
    new = back.layers[0]
    assert type(new) is cls and new.get_config() == layer.get_config()
    np.testing.assert_array_equal(back.predict(x), model.predict(x))
    lengths = np.array([4, 1, 2])
    np.testing.assert_array_equal(back.predict(x, lengths=lengths),
                                  model.predict(x, lengths=lengths))
    assert back.predict(x).dtype == np.float64


def test_float64_layer_computes_in_float64(rng):
    layer = numlstm.ConvLSTM2D(2, 3, (2, 3), padding="same", dtype=np.float64, seed=0)
    assert all(v.dtype == np.float64 for v in layer.params.values())
    x = rng.standard_normal((3, 2, 4, 4, 2)).astype(np.float32)  # converted to float64
    y, (h, c) = layer(x, training=True)
    assert y.dtype == h.dtype == c.dtype == np.float64
    dx, (dh0, _) = layer.backward(np.ones_like(y))
    assert dx.dtype == dh0.dtype == np.float64
    assert all(g.dtype == np.float64 for g in layer.grads.values())
    ry, *_ = _reference(layer, x.astype(np.float64))
    assert_close(y, ry, 1e-12, "y")


# -- argument checks ---------------------------------------------------------------------
@pytest.mark.parametrize("cls,batch_first,shape,expected", [
    (numlstm.ConvLSTM2D, False, (3, 2, 5, 5), r"\[T,B,R,C,2\]"),
    (numlstm.ConvLSTM2D, False, (3, 2, 5, 5, 3), r"\[T,B,R,C,2\]"),
    (numlstm.ConvLSTM2D, True, (2, 3, 5, 5, 1), r"\[B,T,R,C,2\]"),
    (numlstm.ConvLSTM2D, False, (3, 2, 1, 5, 5, 2), r"\[T,B,R,C,2\]"),
    (numlstm.ConvLSTM1D, False, (3, 2, 5, 5, 2), r"\[T,B,L,2\]"),
    (numlstm.ConvLSTM1D, True, (2, 3, 5), r"\[B,T,L,2\]"),
])
def test_wrong_input_shape_names_the_expected_one(cls, batch_first, shape, expected):
    layer = cls(2, 3, 3, padding="same", batch_first=batch_first)
    with pytest.raises(ValueError, match=expected) as err:
        layer(np.zeros(shape, np.float32))
    assert str(tuple(shape)) in str(err.value)
    with pytest.raises(ValueError):
        numlstm.Sequential([cls(2, 3, 3, padding="same")]).predict(
            np.zeros(shape, np.float32))


def test_empty_input_and_mismatched_neighbours():
    layer = numlstm.ConvLSTM2D(2, 3, 3, padding="same")
    for shape in ((0, 2, 4, 4, 2), (2, 0, 4, 4, 2), (2, 2, 0, 4, 2)):
        with pytest.raises(ValueError, match="at least one"):
            layer(np.zeros(shape, np.float32))
    with pytest.raises(ValueError, match="layer 1"):  # 3 filters into 4 channels
        numlstm.Sequential([layer, numlstm.ConvLSTM2D(4, 1, 3)])
    with pytest.raises(ValueError, match="layer 1"):  # frames into a 1-D layer
        numlstm.Sequential([numlstm.ConvLSTM2D(2, 3, 3, return_sequences=True),
                            numlstm.ConvLSTM1D(3, 1, 3)])


def test_non_numeric_input_is_a_type_error():
    layer = numlstm.ConvLSTM2D(1, 2, 3, padding="same")
    for bad in ("frames", np.full((2, 1, 4, 4, 1), "a"), [[["x"]]]):
        with pytest.raises(TypeError, match="x"):
            layer(bad)
    with pytest.raises(TypeError, match="dtype"):
        layer(np.zeros((2, 1, 4, 4, 1), bool))


@pytest.mark.parametrize("cls,options,error,match", [
    (numlstm.ConvLSTM2D, dict(padding="full"), ValueError, "padding"),
    (numlstm.ConvLSTM2D, dict(padding="SAME "), ValueError, "padding"),
    (numlstm.ConvLSTM2D, dict(padding=1), TypeError, "padding"),
    (numlstm.ConvLSTM2D, dict(kernel_size=0), ValueError, "kernel_size"),
    (numlstm.ConvLSTM2D, dict(kernel_size=(3, -1)), ValueError, "kernel_size"),
    (numlstm.ConvLSTM2D, dict(kernel_size=(3,)), ValueError, "kernel_size"),
    (numlstm.ConvLSTM2D, dict(kernel_size=(3, 3, 3)), ValueError, "kernel_size"),
    (numlstm.ConvLSTM2D, dict(kernel_size=2.5), TypeError, "kernel_size"),
    (numlstm.ConvLSTM2D, dict(kernel_size="3"), TypeError, "kernel_size"),
    (numlstm.ConvLSTM2D, dict(kernel_size=None), TypeError, "kernel_size"),
    (numlstm.ConvLSTM2D, dict(kernel_size=(3, True)), TypeError, "kernel_size"),
    (numlstm.ConvLSTM1D, dict(kernel_size=(1, 3)), ValueError, "kernel_size"),
    (numlstm.ConvLSTM2D, dict(filters=0), ValueError, "filters"),
    (numlstm.ConvLSTM2D, dict(filters=4.0), TypeError, "filters"),
    (numlstm.ConvLSTM2D, dict(filters="4"), TypeError, "filters"),
    (numlstm.ConvLSTM2D, dict(in_channels=0), ValueError, "in_channels"),
    (numlstm.ConvLSTM2D, dict(strides=0), ValueError, "strides"),
    (numlstm.ConvLSTM2D, dict(strides=(1, 1.5)), TypeError, "strides"),
    (numlstm.ConvLSTM2D, dict(dilation_rate=(0, 1)), ValueError, "dilation_rate"),
    (numlstm.ConvLSTM2D, dict(strides=2, dilation_rate=2), ValueError, "dilation"),
    (numlstm.ConvLSTM2D, dict(recurrent_dropout=1.0), ValueError, "recurrent_dropout"),
    (numlstm.ConvLSTM2D, dict(return_sequences="yes"), TypeError, "return_sequences"),
    (numlstm.ConvLSTM2D, dict(dtype=np.float16), TypeError, "dtype"),
    (numlstm.ConvLSTM2D, dict(backend="gpu"), ValueError, "backend"),
    (numlstm.ConvLSTM2D, dict(seed=-1), ValueError, "seed"),
])
def test_bad_constructor_arguments(cls, options, error, match):
    args = dict(in_channels=2, filters=3, kernel_size=3)
    args.update(options)
    with pytest.raises(error, match=match):
        cls(**args)


@pytest.mark.parametrize("cls,k,options,grid", [
    (numlstm.ConvLSTM2D, 3, {}, (2, 5)),
    (numlstm.ConvLSTM2D, (2, 4), {}, (5, 3)),
    (numlstm.ConvLSTM2D, 3, dict(dilation_rate=(1, 3)), (5, 6)),
    (numlstm.ConvLSTM1D, 5, {}, (1, 4)),
])
def test_frames_smaller_than_a_valid_kernel(rng, cls, k, options, grid):
    layer = cls(1, 2, k, padding="valid", **options)
    x = _x(rng, cls, 2, 1, grid, 1)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        layer(x)
    shape = (None, None) + x.shape[2:]
    with pytest.raises(ValueError, match="smaller than the kernel"):
        layer.output_shape(shape)
    # the same frames with "same" padding run
    same = cls(1, 2, k, padding="same", **options)
    assert same(x)[0].shape[2:-1] == x.shape[2:-1]


@pytest.mark.parametrize("lengths,error", [
    ([3, 1], ValueError), ([3, 1, 2, 2], ValueError), ([[3, 1, 2]], ValueError),
    ([3, 0, 2], ValueError), ([3, 4, 2], ValueError), ([3.0, 1.0, 2.0], TypeError),
    (["3", "1", "2"], TypeError)])
def test_bad_lengths(rng, lengths, error):
    layer = numlstm.ConvLSTM2D(1, 2, 3, padding="same")
    x = rng.standard_normal((3, 3, 4, 4, 1)).astype(np.float32)
    with pytest.raises(error, match="lengths"):
        layer(x, lengths=lengths)
    with pytest.raises(error, match="lengths"):
        layer.forward(x.swapaxes(0, 1), lengths=lengths)


@pytest.mark.parametrize("cls", [numlstm.ConvLSTM2D, numlstm.ConvLSTM1D])
def test_wrong_state(rng, cls):
    layer = cls(1, 2, 3, strides=2, padding="same")
    x = _x(rng, cls, 2, 3, (6, 6), 1)
    _, (h, _) = layer(x)  # (3, 3, 3, 2) / (3, 3, 2)
    ok = np.zeros(h.shape, np.float32)
    for bad in (np.zeros(h.shape[:-1] + (3,)), np.zeros((2,) + h.shape[1:]),
                np.zeros(h.shape[:1] + (6,) + h.shape[2:]), np.zeros(h.shape + (1,))):
        for state in ((bad, ok), (ok, bad)):
            with pytest.raises(ValueError, match=re.escape(str(tuple(h.shape)))):
                layer(x, state=state)
    for state in (ok, (ok,), (ok, ok, ok)):
        with pytest.raises(TypeError, match="state"):
            layer(x, state=state)


def test_backward_needs_a_training_forward(rng):
    layer = numlstm.ConvLSTM2D(1, 2, 3, padding="same", seed=0)
    x = rng.standard_normal((2, 1, 4, 4, 1)).astype(np.float32)
    dy = np.ones((2, 1, 4, 4, 2), np.float32)
    with pytest.raises(RuntimeError, match="training"):
        layer.backward(dy)
    with pytest.raises(RuntimeError, match="training"):
        layer.backward_output(dy[-1])
    layer(x)
    with pytest.raises(RuntimeError, match="training"):
        layer.backward(dy)
    layer(x, training=True)
    with pytest.raises(ValueError, match="dy"):
        layer.backward(dy[:, :, :3])
    with pytest.raises(ValueError, match="dh_n"):
        layer.backward(dy, dh_n=dy[0, :, :, :3])
    layer.backward(dy)
    with pytest.raises(RuntimeError, match="training"):  # one backward a training forward
        layer.backward(dy)
    layer.forward(x.swapaxes(0, 1), training=True)
    with pytest.raises(ValueError, match="dout"):
        layer.backward_output(dy[0, :, :3])
    assert layer.backward_output(dy[0]).shape == (1, 2, 4, 4, 1)
    with pytest.raises(RuntimeError, match="training"):
        layer.backward_output(dy[0])


@pytest.mark.parametrize("cls", [numlstm.ConvLSTM2D, numlstm.ConvLSTM1D])
def test_load_weights_with_wrong_shapes_changes_nothing(rng, cls):
    layer = cls(2, 3, 3, padding="same", seed=0)
    before = layer.export_weights()
    x = _x(rng, cls, 2, 2, (4, 5), 2)
    y0 = layer(x)[0]
    good_torch = {k: rng.standard_normal(v.shape) for k, v in before.items()}
    good_keras = [rng.standard_normal(w.shape) for w in layer.export_weights("keras")]
    bad_torch = [dict(good_torch, weight_hh=good_torch["weight_hh"][:, :2]),
                 dict(good_torch, weight_ih=good_torch["weight_ih"][..., None]),
                 dict(good_torch, bias=good_torch["bias"][:-1])]
    bad_keras = [good_keras[:2] + [good_keras[2][:-4]],
                 [good_keras[0][..., :-1]] + good_keras[1:],
                 [good_keras[0], good_keras[1].swapaxes(-1, -2), good_keras[2]]]
    cases = [(w, "torch") for w in bad_torch] + [(w, "keras") for w in bad_keras]
    for weights, layout in cases:
        with pytest.raises(ValueError):
            layer.load_weights(weights, layout)
        for k, v in layer.export_weights().items():
            np.testing.assert_array_equal(v, before[k], err_msg=f"{k} after a failed load")
        np.testing.assert_array_equal(layer(x)[0], y0)
    with pytest.raises(TypeError):
        layer.load_weights(good_keras[:2], "keras")
    with pytest.raises(ValueError, match="layout"):
        layer.load_weights(good_torch, "tf")
    # and the good ones load (so the failures above were the shapes)
    layer.load_weights(good_keras, "keras")
    for a, b in zip(layer.export_weights("keras"), good_keras):
        assert_close(a, b, 1e-7, "keras")
    layer.load_weights(good_torch)
    for k, v in layer.export_weights().items():
        assert_close(v, good_torch[k], 1e-7, k)
