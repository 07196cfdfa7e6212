"""Property-based tests (hypothesis) over shapes, dtypes, cells, layouts, lengths and
backends: every backend against the NumPy reference, packer round trips, the
semantics of lengths, and step() against the whole sequence.

Examples per property: PROPERTY_EXAMPLES (100 by default; the CUDA simulator's
property runs a tenth of that, at smaller shapes, since the simulator runs every
GPU thread in Python). Set the environment variable NUMLSTM_PROPERTY_EXAMPLES to
run more.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numlstm
from numlstm.packing import LAYOUTS, RecurrentSpec, convert
from helpers import assert_close

PROPERTY_EXAMPLES = int(os.environ.get("NUMLSTM_PROPERTY_EXAMPLES", "100"))
SETTINGS = settings(max_examples=PROPERTY_EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
# (relative to the largest value, values then gradients; float32 adds an absolute
# floor of 1e-6, the order of its gate math's absolute error, for outputs that are
# all tiny)
TOL = {np.float32: (2e-5, 2e-4), np.float64: (1e-10, 1e-9)}
ATOL = {np.float32: 1e-6, np.float64: 0.0}

CELLS = [("lstm", {}), ("gru", {"reset_after": True}), ("gru", {"reset_after": False}),
         ("rnn", {"nonlinearity": "tanh"}), ("rnn", {"nonlinearity": "relu"})]


@st.composite
def configs(draw, max_layers=2, bidirectional=None, max_size=9):
    """A layer configuration, inputs (with lengths or not) and output gradients."""
    cell, options = draw(st.sampled_from(CELLS))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    T, B = draw(st.integers(1, min(6, max_size))), draw(st.integers(1, 4))
    I, H = draw(st.integers(1, min(7, max_size))), draw(st.integers(1, max_size))
    L = draw(st.integers(1, max_layers))
    bi = draw(st.booleans()) if bidirectional is None else bidirectional
    with_lengths, with_state = draw(st.booleans()), draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 31 - 1))
    rng = np.random.default_rng(seed)
    D = 2 if bi else 1
    lengths = rng.integers(1, T + 1, B) if with_lengths else None
    parts = 2 if cell == "lstm" else 1
    state = None
    if with_state:
        state = tuple(rng.standard_normal((L * D, B, H)).astype(dtype) for _ in range(parts))
    return dict(cell=cell, options=options, dtype=dtype, T=T, B=B, I=I, H=H, L=L, bi=bi,
                seed=seed, x=rng.standard_normal((T, B, I)).astype(dtype), lengths=lengths,
                state=state, dy=rng.standard_normal((T, B, D * H)).astype(dtype),
                dstate=tuple(rng.standard_normal((L * D, B, H)).astype(dtype)
                             for _ in range(parts)))


def _layer(c, backend):
    cls = numlstm.layers.CELLS[c["cell"]]
    return cls(c["I"], c["H"], num_layers=c["L"], bidirectional=c["bi"], dtype=c["dtype"],
               backend=backend, seed=c["seed"] % 1000, **c["options"])


def _as_state(c, state):
    if state is None:
        return None
    return state if c["cell"] == "lstm" else state[0]


def _run(c, backend):
    """Forward (training) and backward -> {name: array}."""
    layer = _layer(c, backend)
    y, state_n = layer(c["x"], _as_state(c, c["state"]), training=True, lengths=c["lengths"])
    dx, dstate0 = layer.backward(c["dy"], _as_state(c, c["dstate"]))
    out = {"y": y, "dx": dx}
    parts = state_n if c["cell"] == "lstm" else (state_n,)
    dparts = dstate0 if c["cell"] == "lstm" else (dstate0,)
    for k, (p, dp) in enumerate(zip(parts, dparts)):
        out[f"state_n[{k}]"], out[f"dstate0[{k}]"] = p, dp
    out.update({f"grad {k}": g for k, g in layer.grads.items()})
    return out


def _compare(got, want, dtype, what):
    vtol, gtol = TOL[dtype]
    for k in want:
        tol = vtol if k == "y" or k.startswith("state_n") else gtol
        assert_close(np.asarray(got[k]), want[k], tol, f"{what}: {k}", atol=ATOL[dtype])


@SETTINGS
@given(configs())
def test_cpu_backend_equals_the_reference(c):
    _compare(_run(c, "cpu"), _run(c, "numpy"), c["dtype"], "cpu")


@SETTINGS
@given(configs(), st.sampled_from([None, 0.2, 0.8]), st.booleans(),
       st.sampled_from([None, 0.5, 2.0]))
def test_lstm_cell_options_equal_the_reference(c, cell_clip, input_forget, gate_clip):
    """The LSTM's options on the cpu backend, in float64, where the kernels and the
    reference round alike (a float32 value a hair from a clip bound may fall on
    either side of it)."""
    c = dict(c, cell="lstm", options=dict(cell_clip=cell_clip, input_forget=input_forget,
                                          gate_clip=gate_clip), dtype=np.float64)
    for k in ("x", "dy"):
        c[k] = c[k].astype(np.float64)
    # (h and c from the drawn state's first part: the drawn cell may have had one)
    if c["state"] is not None:
        c["state"] = (c["state"][0].astype(np.float64),) * 2
    c["dstate"] = (c["dstate"][0].astype(np.float64),) * 2
    _compare(_run(c, "cpu"), _run(c, "numpy"), np.float64, "cpu options")


@settings(SETTINGS, max_examples=max(1, PROPERTY_EXAMPLES // 10))
@given(configs(max_size=4))
def test_cuda_backend_equals_the_reference(c):
    """The CUDA kernels (under Numba's simulator where there is no GPU)."""
    _compare(_run(c, "cuda"), _run(c, "numpy"), c["dtype"], "cuda")


@SETTINGS
@given(configs(), st.sampled_from(sorted(LAYOUTS)))
def test_packer_round_trips(c, layout):
    spec = RecurrentSpec(c["I"], c["H"], c["L"], c["bi"], c["cell"], **c["options"])
    try:
        LAYOUTS[layout].check(spec)
    except ValueError:
        return  # haste has no RNN and no reset-before GRU: nothing to convert
    rng = np.random.default_rng(c["seed"])
    params = {k: rng.standard_normal(s) for k, s in spec.torch_shapes().items()}
    back = convert(convert(params, "torch", layout, spec), layout, "torch", spec)
    one_bias = LAYOUTS[layout].bias_for(spec) == "one"
    for k, v in params.items():
        if one_bias and k.startswith("bias_ih"):  # the sum is what a one-bias layout keeps
            sfx = k[len("bias_ih"):]
            np.testing.assert_allclose(back[k] + back["bias_hh" + sfx],
                                       v + params["bias_hh" + sfx], rtol=1e-14, atol=1e-14)
        elif not (one_bias and k.startswith("bias_hh")):
            np.testing.assert_array_equal(back[k], v, err_msg=k)


@SETTINGS
@given(configs())
def test_lengths_mean_each_sequence_alone(c):
    """With lengths, sequence b computes what it computes alone, cut to its length:
    the same outputs at its valid steps, zeros after, its final state; and what the
    padding holds changes nothing."""
    if c["lengths"] is None:
        return
    layer = _layer(c, "cpu")
    x = c["x"].copy()
    state = c["state"]
    y, state_n = layer(x, _as_state(c, state), lengths=c["lengths"])
    parts = state_n if c["cell"] == "lstm" else (state_n,)
    vtol = TOL[c["dtype"]][0]
    for b, n in enumerate(c["lengths"]):
        alone_state = None if state is None else tuple(p[:, b:b + 1] for p in state)
        y_b, s_b = layer(x[:n, b:b + 1], _as_state(c, alone_state))
        assert_close(y[:n, b:b + 1], y_b, vtol, f"y of sequence {b}", ATOL[c["dtype"]])
        assert not y[n:, b].any()
        for p, q in zip(parts, s_b if c["cell"] == "lstm" else (s_b,)):
            assert_close(p[:, b:b + 1], q, vtol, f"final state of sequence {b}",
                         ATOL[c["dtype"]])
    noisy = x.copy()
    for b, n in enumerate(c["lengths"]):
        noisy[n:, b] = 1e3
    np.testing.assert_array_equal(layer(noisy, _as_state(c, state), lengths=c["lengths"])[0], y)


@SETTINGS
@given(configs(bidirectional=False))
def test_step_by_step_equals_the_whole_sequence(c):
    layer = _layer(c, "cpu")
    state = _as_state(c, c["state"])
    y, state_n = layer(c["x"], state)
    for t in range(c["T"]):
        y_t, state = layer.step(c["x"][t], state)
        assert_close(y_t, y[t], TOL[c["dtype"]][0], f"step {t}", ATOL[c["dtype"]])
    for a, b in zip(state if c["cell"] == "lstm" else (state,),
                    state_n if c["cell"] == "lstm" else (state_n,)):
        assert_close(a, b, TOL[c["dtype"]][0], "final state", ATOL[c["dtype"]])
