"""LSTM zoneout: each unit of c and h keeps its previous value with the rate's
probability while training (0/1 draws per sequence, unit and step), the rate itself at
inference. The reference against finite differences, the CPU kernels against the
reference, and the layer on the numpy, cpu and cuda (simulator) backends."""
import numpy as np
import pytest

import numlstm
from numlstm.kernels.cpu import lstm_backward_cpu, lstm_forward_cpu, pack_lstm_cpu
from numlstm.kernels.reference import lstm_backward_ref, lstm_forward_ref
from helpers import (assert_close, check_lstm_reference_gradients, lstm_layer_and_reference,
                     rel_err, run_steps)


def _weights(rng, T, B, H, training, rates=(0.3, 0.2)):
    """zone_c, zone_h as the layer passes them: draws [T,B,H], or the rates [1,B,H]."""
    if training:
        return tuple((rng.random((T, B, H)) < p).astype(float) for p in rates)
    return tuple(np.full((1, B, H), p) for p in rates)


def _cell(rng, I, H, scale):
    return [rng.standard_normal(s) * scale for s in ((4 * H, I), (4 * H, H), (4 * H,), (4 * H,))]


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_reference_backward_matches_finite_differences(rng, training, reverse):
    T, B, I, H = 4, 3, 3, 4
    w = _cell(rng, I, H, 0.8)
    inputs = dict(x=rng.standard_normal((T, B, I)), w_ih=w[0], w_hh=w[1], b_ih=w[2],
                  b_hh=w[3], h0=rng.standard_normal((B, H)), c0=rng.standard_normal((B, H)))
    zone_c, zone_h = _weights(rng, T, B, H, training)
    check_lstm_reference_gradients(inputs, np.array([4, 1, 3]), reverse, cell_clip=0.9,
                                   zone_c=zone_c, zone_h=zone_h)


# (T, B, I, H, reverse): uneven, T=1 and B=1, H >= 256 (every thread shares a step)
SHAPES = [(5, 3, 4, 7, False), (1, 1, 2, 5, True), (6, 4, 9, 70, True), (4, 5, 6, 260, False)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}-{}".format(*s))
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_kernels_against_the_reference(rng, shape, training, dtype):
    T, B, I, H, reverse = shape
    cell = _cell(rng, I, H, min(0.5, 2 / np.sqrt(H)))
    x, h0, c0 = (rng.standard_normal(s) for s in ((T, B, I), (B, H), (B, H)))
    zone = _weights(rng, T, B, H, training)
    mask = (rng.random((B, H)) >= 0.3) / 0.7  # with recurrent dropout too
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    y, h, c, cache = lstm_forward_ref(x, *cell, h0, c0, lengths, reverse, cell_clip=0.9,
                                      h_mask=mask, zone_c=zone[0], zone_h=zone[1])
    dy, dh_n, dc_n = (rng.standard_normal(a.shape) for a in (y, h, c))
    dx, dh0, dc0, grads = lstm_backward_ref(dy, dh_n, dc_n, cache)
    want = dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, **grads)

    def cast(a):
        return a.astype(dtype)

    packed = pack_lstm_cpu(*map(cast, cell), cell_clip=0.9)
    args = (cast(x), packed, cast(h0), cast(c0), lengths, reverse)
    options = dict(h_mask=cast(mask), zone_c=cast(zone[0]), zone_h=cast(zone[1]))
    yk, hk, ck, cache_k = lstm_forward_cpu(*args, training=True, **options)
    yi, hi, ci, _ = lstm_forward_cpu(*args, training=False, **options)
    dxk, dh0k, dc0k, grads_k = lstm_backward_cpu(*map(cast, (dy, dh_n, dc_n)), cache_k, packed)
    got = dict(y=yk, h=hk, c=ck, dx=dxk, dh0=dh0k, dc0=dc0k, **grads_k)
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    assert_close(yi, y, rtol, "y (inference forward)")
    assert_close(ci, c, rtol, "c_n (inference forward)")
    for k in want:
        assert got[k].dtype == dtype, k
        assert_close(got[k], want[k], rtol if k in "yhc" else 5 * rtol, k)


@pytest.mark.parametrize("zoneout", [0.3, (0.2, 0.45)], ids=["one-rate", "pair"])
def test_layer_backends_agree_and_inference_is_the_expectation(rng, zoneout):
    def make(backend, **options):
        return numlstm.LSTM(4, 5, num_layers=2, bidirectional=True, backend=backend,
                            dtype=np.float64, seed=1, **options)
    x = rng.standard_normal((6, 3, 4))
    lengths = np.array([6, 2, 4])
    ref, cpu = make("numpy", zoneout=zoneout), make("cpu", zoneout=zoneout)
    # Inference: the reference with the rates at every step, layer by layer.
    rates = zoneout if isinstance(zoneout, tuple) else (zoneout, zoneout)
    inp = x
    for l in range(2):
        outs = []
        for d in range(2):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            w = [ref.params[n + sfx] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            zone = [np.full((1, 3, 5), p) for p in rates]
            outs.append(lstm_forward_ref(inp, *w, np.zeros((3, 5)), np.zeros((3, 5)), lengths,
                                         d == 1, zone_c=zone[0], zone_h=zone[1])[0])
        inp = np.concatenate(outs, axis=2)
    for layer in (ref, cpu):
        assert_close(layer(x, lengths=lengths)[0], inp, 1e-12, "inference")
    # Training: the same draws on both backends (same seed), every gradient equal.
    dy = rng.standard_normal((6, 3, 10))
    runs = []
    for layer in (ref, cpu):
        y, (h, c) = layer(x, training=True, lengths=lengths)
        dx, (dh0, dc0) = layer.backward(dy)
        runs.append(dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, **layer.grads))
    assert rel_err(runs[0]["y"], inp) > 1e-3  # the draws differ from the expectation
    assert rel_err(runs[0]["y"], make("numpy")(x, training=True, lengths=lengths)[0]) > 1e-3
    for k in runs[0]:
        assert_close(runs[1][k], runs[0][k], 1e-12, k)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_unit_is_zoned_too(rng, dtype):
    """H = 1 on the CPU's unpadded path (float64): its zoneout weights are [T,B,1], which
    the kernels once took for their 'none' sentinel and skipped zoneout."""
    x = rng.standard_normal((5, 3, 2)).astype(dtype)
    cpu, ref = (numlstm.LSTM(2, 1, zoneout=0.5, backend=b, dtype=dtype, seed=1)
                for b in ("cpu", "numpy"))
    tol = 1e-12 if dtype == np.float64 else 2e-6
    assert_close(cpu(x)[0], ref(x)[0], tol, "inference")
    assert rel_err(ref(x)[0], numlstm.LSTM(2, 1, dtype=dtype, seed=1)(x)[0]) > 1e-3
    dy = rng.standard_normal((5, 3, 1)).astype(dtype)
    for layer in (cpu, ref):
        layer(x, training=True)
        layer.backward(dy)
    for k in ref.grads:
        assert_close(cpu.grads[k], ref.grads[k], 10 * tol, k)


def test_step_config_and_refusals(rng, tmp_path):
    lstm = numlstm.LSTM(4, 6, num_layers=2, zoneout=(0.1, 0.3), seed=0)
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    y, _ = lstm(x)
    ys, _ = run_steps(lstm, x)
    assert_close(ys[-1], y[-1], 1e-6, "step")
    assert "zoneout=(0.1, 0.3)" in repr(lstm)
    model = numlstm.Sequential([lstm])
    model.save(tmp_path / "ck")
    back = numlstm.load_checkpoint(tmp_path / "ck").model
    assert_close(back.predict(np.swapaxes(x, 0, 1)), np.swapaxes(y, 0, 1), 0, "checkpoint")
    for bad, err in ((1.0, ValueError), ((0.1, 0.2, 0.3), ValueError), ("0.1", TypeError)):
        with pytest.raises(err, match="zoneout"):
            numlstm.LSTM(4, 6, zoneout=bad)
    with pytest.raises(ValueError, match="zoneout: the LSTM without a projection"):
        numlstm.GRU(4, 6, zoneout=0.1)
    with pytest.raises(ValueError, match="not a projected LSTM"):
        numlstm.LSTM(4, 6, proj_size=2, zoneout=0.1)
    with pytest.raises(ValueError, match="to_torch: this LSTM uses zoneout"):
        lstm.to_torch()
    with pytest.raises(ValueError, match="export_onnx: this LSTM uses zoneout"):
        numlstm.export_onnx(lstm, tmp_path / "z.onnx")
    assert not (tmp_path / "z.onnx").exists()


def test_cuda_layer_computes_what_the_reference_does(rng):
    """The CUDA LSTM (simulator) with zoneout and recurrent dropout: a training step
    draws what the numpy backend draws and gives every gradient it gives; inference
    (the expectation) and streaming steps match it too."""
    options = {"zoneout": (0.2, 0.3), "recurrent_dropout": 0.25}
    got, want = lstm_layer_and_reference(rng, options, "cuda", np.float32)
    assert sorted(got) == sorted(want)
    for k in want:
        assert_close(got[k], want[k], 2e-5 if k in ("y", "h", "c") else 1e-4, k)
    cuda, ref = (numlstm.LSTM(3, 4, zoneout=(0.1, 0.4), backend=b, dtype=np.float32, seed=2)
                 for b in ("cuda", "numpy"))
    x = rng.standard_normal((3, 2, 3)).astype(np.float32)
    y = cuda(x, lengths=np.array([3, 1]))[0]
    assert_close(y, ref(x, lengths=np.array([3, 1]))[0], 2e-6, "inference")
    plain = numlstm.LSTM(3, 4, dtype=np.float32, seed=2)
    assert rel_err(y, plain(x, lengths=np.array([3, 1]))[0]) > 1e-3  # the rates bite
    assert_close(run_steps(cuda, x)[0], ref(x)[0], 2e-6, "streaming steps")
