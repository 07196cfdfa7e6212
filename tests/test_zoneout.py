"""Zoneout, LSTM (projected too) and GRU: each unit of the state (c and h; the GRU's
h) keeps its previous value with the rate's probability while training (0/1 draws per
sequence, unit and step), the rate itself at inference. The references against finite
differences, the CUDA (simulator) kernels against them, and the layers on the numpy,
cpu and cuda backends. (The CPU kernels against the references are in
tests/kernels/test_cpu_lstm.py and tests/kernels/test_cpu_gru_rnn.py.)"""
import numpy as np
import pytest

import numlstm
from numlstm.kernels.reference import (gru_backward_ref, gru_forward_ref, lstm_backward_ref,
                                       lstm_forward_ref)
from helpers import (assert_close, cell_weights, check_gru_reference_gradients,
                     check_lstm_reference_gradients, lstm_layer_and_reference, lstm_weights,
                     projected_lstm_inputs, projected_zones, rel_err, run_steps,
                     zoneout_weights)


@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_reference_backward_matches_finite_differences(rng, training, reverse):
    T, B, I, H = 4, 3, 3, 4
    w = lstm_weights(rng, I, H, np.float64, 0.8)
    inputs = dict(x=rng.standard_normal((T, B, I)), w_ih=w[0], w_hh=w[1], b_ih=w[2],
                  b_hh=w[3], h0=rng.standard_normal((B, H)), c0=rng.standard_normal((B, H)))
    zone_c, zone_h = zoneout_weights(rng, T, B, H, training)
    check_lstm_reference_gradients(inputs, np.array([4, 1, 3]), reverse, cell_clip=0.9,
                                   zone_c=zone_c, zone_h=zone_h)


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
    with pytest.raises(ValueError, match="zoneout: the LSTM and the GRU have it, not the RNN"):
        numlstm.RNN(4, 6, zoneout=0.1)
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


# -- a projected LSTM: h' <- h' + zh (h - h') of the projected h (P units) ----------------
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_projected_reference_backward_matches_finite_differences(rng, training, reverse):
    T, B, I, H, P = 4, 3, 3, 5, 2
    inputs = projected_lstm_inputs(rng, T, B, I, H, P, 0.8)
    zone_c, zone_h = projected_zones(rng, T, B, H, P, training)
    mask = (rng.random((B, P)) >= 0.3) / 0.7
    lengths = np.array([4, 1, 3])
    check_lstm_reference_gradients(inputs, lengths, reverse, h_mask=mask, zone_c=zone_c,
                                   zone_h=zone_h)
    args = [inputs[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0")]
    y = lstm_forward_ref(*args, lengths, reverse, w_hr=inputs["w_hr"], h_mask=mask,
                         zone_c=zone_c, zone_h=zone_h)[0]
    # zone_h mixes the projected h: y is the old h wherever a draw of 1 keeps it
    plain = lstm_forward_ref(*args, lengths, reverse, w_hr=inputs["w_hr"], h_mask=mask)[0]
    assert rel_err(y, plain) > 1e-3


def test_projected_layer_backends_agree(rng):
    """Two layers, bidirectional, lengths: the numpy, cpu and cuda (simulator) layers
    draw alike and give every output and gradient alike, training and inference;
    zoneout changes the inference; streaming steps give the sequence's outputs."""
    def make(backend, **options):
        return numlstm.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3,
                            backend=backend, dtype=np.float64, seed=1, **options)
    x, dy = rng.standard_normal((5, 3, 4)), rng.standard_normal((5, 3, 6))
    lengths = np.array([5, 2, 4])
    runs = []
    for backend in ("numpy", "cpu", "cuda"):
        layer = make(backend, zoneout=(0.2, 0.35))
        y, (h, c) = layer(x, training=True, lengths=lengths)
        dx, (dh0, dc0) = layer.backward(dy)
        runs.append(dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, **layer.grads))
        runs[-1]["inference"] = layer(x, lengths=lengths)[0]
    assert runs[0]["y"].shape == (5, 3, 6) and runs[0]["h"].shape == (4, 3, 3)
    for run in runs[1:]:
        assert sorted(run) == sorted(runs[0])
        for k in runs[0]:
            assert_close(run[k], runs[0][k], 1e-12, k)
    assert rel_err(runs[0]["inference"], make("numpy")(x, lengths=lengths)[0]) > 1e-3
    assert rel_err(runs[0]["y"], runs[0]["inference"]) > 1e-3  # draws, not the rates
    layer = numlstm.LSTM(4, 6, proj_size=3, zoneout=0.3, seed=1)
    x32 = x.astype(np.float32)
    assert_close(run_steps(layer, x32)[0], layer(x32)[0], 2e-6, "streaming steps")


@pytest.mark.parametrize("layer_norm,dtype,path", [
    (False, np.float32, "auto"), (False, np.float64, "per_step"), (True, np.float32, "auto"),
    (True, np.float64, "per_step")],
    ids=["float32", "float64-per-step", "layer-norm-float32", "layer-norm-float64-per-step"])
def test_projected_cuda_kernels_match_the_reference(rng, layer_norm, dtype, path):
    """The CUDA kernels (simulator), persistent and per-step launches, with zoneout
    draws, a recurrent dropout mask and lengths; inference with the rates."""
    cuda = pytest.importorskip("numba.cuda")
    from numlstm.kernels.cuda import lstm_backward_cuda, lstm_forward_cuda, pack_lstm_cuda
    T, B, I, H, P = 3, 3, 2, 5, 2
    launch = {"auto": {}, "per_step": dict(units=2, persistent=False)}[path]
    a = {k: v.astype(dtype)
         for k, v in projected_lstm_inputs(rng, T, B, I, H, P, 0.5, layer_norm).items()}
    names = ("w_ih", "w_hh", "b_ih", "b_hh")
    extra = {k: a[k] for k in a if k not in names + ("x", "h0", "c0")}
    lens = np.array([3, 1, 2])
    mask = ((rng.random((B, P)) >= 0.3) / 0.7).astype(dtype)
    packed, dev = pack_lstm_cuda(*(a[k] for k in names), **extra), cuda.to_device
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    for training in (True, False):
        zone_c, zone_h = (z.astype(dtype) for z in projected_zones(rng, T, B, H, P, training))
        y, h, c, cache = lstm_forward_cuda(dev(a["x"]), packed, dev(a["h0"]), dev(a["c0"]),
                                           lens, True, training, **launch, h_mask=mask,
                                           zone_c=zone_c, zone_h=zone_h)
        y_r, h_r, c_r, cache_r = lstm_forward_ref(a["x"], *(a[k] for k in names), a["h0"],
                                                  a["c0"], lens, True, h_mask=mask,
                                                  zone_c=zone_c, zone_h=zone_h, **extra)
        for k, got, want in (("y", y, y_r), ("h_n", h, h_r), ("c_n", c, c_r)):
            assert_close(got.copy_to_host(), want, rtol, k)
        if not training:
            continue
        dy = rng.standard_normal(y_r.shape).astype(dtype)
        dh_n, dc_n = (rng.standard_normal(v.shape).astype(dtype) for v in (h_r, c_r))
        dx, dh0, dc0, grads = lstm_backward_cuda(dev(dy), dev(dh_n), dev(dc_n), cache, packed,
                                                 **launch)
        dx_r, dh0_r, dc0_r, grads_r = lstm_backward_ref(dy, dh_n, dc_n, cache_r)
        assert sorted(grads) == sorted(grads_r)
        for k, got, want in (("dx", dx, dx_r), ("dh0", dh0, dh0_r), ("dc0", dc0, dc0_r)):
            assert_close(got.copy_to_host(), want, rtol, k)
        for k in grads_r:
            assert_close(grads[k].copy_to_host(), grads_r[k], rtol, k)


# -- the GRU: one state, h' <- h' + zh (h - h') ----------------------------------------
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset-after", "reset-before"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gru_reference_backward_matches_finite_differences(rng, training, reset_after,
                                                           reverse):
    T, B, I, H = 4, 3, 3, 4
    w = cell_weights(rng, I, H, 3, np.float64, 0.8)
    inputs = dict(x=rng.standard_normal((T, B, I)), w_ih=w[0], w_hh=w[1], b_ih=w[2],
                  b_hh=w[3], h0=rng.standard_normal((B, H)))
    zone_h = zoneout_weights(rng, T, B, H, training, (0.4,))[0]
    mask = (rng.random((B, H)) >= 0.3) / 0.7  # with recurrent dropout too
    lengths = np.array([4, 1, 3])
    y = check_gru_reference_gradients(inputs, lengths, reverse, reset_after=reset_after,
                                      h_mask=mask, zone_h=zone_h)
    plain = gru_forward_ref(*(inputs[k] for k in ("x", "w_ih", "w_hh", "b_ih", "b_hh", "h0")),
                            lengths, reverse, reset_after, h_mask=mask)[0]
    assert rel_err(y, plain) > 1e-3  # zoneout changed the outputs


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset-after", "reset-before"])
def test_gru_layer_backends_agree_and_inference_is_the_expectation(rng, reset_after):
    def make(backend, **options):
        return numlstm.GRU(4, 5, num_layers=2, bidirectional=True, backend=backend,
                           reset_after=reset_after, dtype=np.float64, seed=1, **options)
    x = rng.standard_normal((6, 3, 4))
    lengths = np.array([6, 2, 4])
    ref, cpu = make("numpy", zoneout=0.3), make("cpu", zoneout=0.3)
    inp = x  # inference: the reference with the rate at every step, layer by layer
    for l in range(2):
        outs = []
        for d in range(2):
            sfx = f"_l{l}" + ("_reverse" if d else "")
            w = [ref.params[n + sfx] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            outs.append(gru_forward_ref(inp, *w, np.zeros((3, 5)), lengths, d == 1, reset_after,
                                        zone_h=np.full((1, 3, 5), 0.3))[0])
        inp = np.concatenate(outs, axis=2)
    for layer in (ref, cpu):
        assert_close(layer(x, lengths=lengths)[0], inp, 1e-12, "inference")
    assert rel_err(inp, make("numpy")(x, lengths=lengths)[0]) > 1e-3
    dy = rng.standard_normal((6, 3, 10))
    runs = []
    for layer in (ref, cpu):  # training: the same draws (same seed), every gradient equal
        y, h = layer(x, training=True, lengths=lengths)
        dx, dh0 = layer.backward(dy)
        runs.append(dict(y=y, h=h, dx=dx, dh0=dh0, **layer.grads))
    assert rel_err(runs[0]["y"], inp) > 1e-3  # the draws differ from the expectation
    for k in runs[0]:
        assert_close(runs[1][k], runs[0][k], 1e-12, k)


def test_gru_step_config_and_refusals(rng, tmp_path):
    gru = numlstm.GRU(4, 6, num_layers=2, zoneout=0.2, seed=0)
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    y, _ = gru(x)
    assert_close(run_steps(gru, x)[0][-1], y[-1], 1e-6, "step")
    assert "zoneout=0.2" in repr(gru)
    numlstm.Sequential([gru]).save(tmp_path / "ck")
    back = numlstm.load_checkpoint(tmp_path / "ck").model
    assert_close(back.predict(np.swapaxes(x, 0, 1)), np.swapaxes(y, 0, 1), 0, "checkpoint")
    with pytest.raises(ValueError, match="the GRU has one state, h, so one rate"):
        numlstm.GRU(4, 6, zoneout=(0.1, 0.2))
    with pytest.raises(ValueError, match="to_torch: this GRU uses zoneout"):
        gru.to_torch()
    with pytest.raises(ValueError, match="export_onnx: this GRU uses zoneout"):
        numlstm.export_onnx(gru, tmp_path / "z.onnx")
    assert not (tmp_path / "z.onnx").exists()


@pytest.mark.parametrize("reset_after,dtype,path", [
    (True, np.float32, "auto"), (False, np.float64, "auto"), (True, np.float64, "per_step"),
    (False, np.float32, "per_step")],
    ids=["reset-after-float32", "reset-before-float64", "reset-after-float64-per-step",
         "reset-before-float32-per-step"])
def test_gru_cuda_kernels_match_the_reference(rng, reset_after, dtype, path):
    """The CUDA GRU kernels (simulator) with zoneout draws, a recurrent dropout mask and
    lengths, persistent and per-step launches; inference with the rate at every step."""
    cuda = pytest.importorskip("numba.cuda")
    from numlstm.kernels.cuda import gru_backward_cuda, gru_forward_cuda, pack_gru_cuda
    T, B, I, H = 3, 3, 2, 5
    launch = {"auto": {}, "per_step": dict(units=2, persistent=False)}[path]
    lens = np.array([3, 1, 2])
    cell = [a.astype(dtype) for a in cell_weights(rng, I, H, 3, np.float64, 0.5)]
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0, dh_n = (rng.standard_normal((B, H)).astype(dtype) for _ in range(2))
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    mask = ((rng.random((B, H)) >= 0.3) / 0.7).astype(dtype)
    packed, dev = pack_gru_cuda(*cell, reset_after=reset_after), cuda.to_device
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    for zone_h, training in (((rng.random((T, B, H)) < 0.4).astype(dtype), True),
                             (np.full((1, B, H), 0.3, dtype), False)):
        y, h, cache = gru_forward_cuda(dev(x), packed, dev(h0), lens, True, training,
                                       **launch, h_mask=mask, zone_h=zone_h)
        y_r, h_r, cache_r = gru_forward_ref(x, *cell, h0, lens, True, reset_after,
                                            h_mask=mask, zone_h=zone_h)
        assert_close(y.copy_to_host(), y_r, rtol, "y")
        assert_close(h.copy_to_host(), h_r, rtol, "h_n")
        if not training:
            continue
        dx, dh0, grads = gru_backward_cuda(dev(dy), dev(dh_n), cache, packed, **launch)
        dx_r, dh0_r, grads_r = gru_backward_ref(dy, dh_n, cache_r)
        assert_close(dx.copy_to_host(), dx_r, rtol, "dx")
        assert_close(dh0.copy_to_host(), dh0_r, rtol, "dh0")
        for k in grads_r:
            assert_close(grads[k].copy_to_host(), grads_r[k], rtol, k)


def test_gru_cuda_layer_trains_as_the_reference_does(rng):
    """The GRU layer on cuda (simulator) with zoneout and recurrent dropout: a training
    step draws what the numpy backend draws and gives every gradient it gives."""
    def make(backend):
        return numlstm.GRU(3, 4, num_layers=2, bidirectional=True, zoneout=0.25,
                           recurrent_dropout=0.2, backend=backend, dtype=np.float64, seed=3)
    x = rng.standard_normal((3, 2, 3))
    lengths = np.array([3, 1])
    dy = rng.standard_normal((3, 2, 8))
    runs = []
    for layer in (make("numpy"), make("cuda")):
        y, h = layer(x, training=True, lengths=lengths)
        dx, dh0 = layer.backward(dy)
        runs.append(dict(y=y, h=h, dx=dx, dh0=dh0, **layer.grads))
        runs[-1]["inference"] = layer(x, lengths=lengths)[0]
    for k in runs[0]:
        assert_close(runs[1][k], runs[0][k], 1e-12, k)
