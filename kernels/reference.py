"""NumPy forward and backward of one recurrent layer in one direction: the oracle.

Cells: LSTM, GRU and the plain (Elman) RNN. Every kernel in this package is
tested against these functions, and these functions are tested against central
finite differences in float64. They are written for clarity, one step at a time,
and work in the dtype of their inputs.

Dimensions: T steps, B batch, I input features, H hidden units, G gate rows:
4H (LSTM), 3H (GRU), H (RNN). Weights use PyTorch's orientation and gate order:
    w_ih [G,I], w_hh [G,H], b_ih [G], b_hh [G]
    LSTM gate blocks i, f, g, o (LSTM_GATE_ORDER); GRU r, z, n (GRU_GATE_ORDER).

Equations of one step (s = sigmoid, x the input, h the state entering the step):
  LSTM
    i = s(W_ii x + b_ii + W_hi h + b_hi)      f = s(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)   o = s(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g                        h' = o * tanh(c')
    options: proj_size (w_hr [P,H] given) projects the output, h' = W_hr (o * tanh(c'))
    (torch's proj_size: h, y and W_hh's columns have P units, c keeps H); h_mask [B,P]
    multiplies h where it enters the recurrent product, W_hh (h * h_mask), the same
    mask at every step (recurrent dropout: the layer passes 0 or 1/(1-p)); zone_c
    [T,B,H], zone_h [T,B,P] (zoneout, Krueger et al. 2016) keep part of the old state,
    c' <- c' + zone_c[t] (c - c') and h' <- h' + zone_h[t] (h - h'), h' after the
    projection (the layer passes 0/1 draws when training, the rate itself at
    inference); input_forget couples the two gates, f = 1 - i (ONNX's input_forget;
    the forget gate's own weights are then unused); cell_clip clips c' to
    [-cell_clip, cell_clip] (TensorFlow's cell_clip); gate_clip clips every gate
    pre-activation to [-gate_clip, gate_clip] before its activation (ONNX's clip,
    as onnxruntime computes it). No gradient flows through a clipped value.
    peephole [3H] (p_i, p_f, p_o), ONNX's P: i and f add p_i * c and p_f * c of the
    old state to their pre-activations, o adds p_o * c' of the new one. acts
    (gates.make_acts) replaces s by another activation for i, f and o, and tanh by
    another for g and for c' in h'.
    layer_norm (Ba, Kiros and Hinton 2016, their LSTM's equations): each of the two
    products is normalised over its 4H entries with its own gain, and the new cell
    state over its H units with a gain and a bias before it reaches h':
        a = LN(W_ih x; ln_ih) + b_ih + LN(W_hh h; ln_hh) + b_hh
        h' = o * tanh(LN(c'; ln_c) + ln_c_bias)
    with LN(v; w) = w * (v - mean(v)) / sqrt(var(v) + LAYER_NORM_EPS) (the biased
    variance, as torch.nn.LayerNorm). The state passed on is c' itself, as in the
    paper (TensorFlow 1's LayerNormBasicLSTMCell passed on the normalised one).
  GRU (acts, as the LSTM's, replaces s for r and z and tanh for n)
    r = s(W_ir x + b_ir + W_hr h + b_hr)      z = s(W_iz x + b_iz + W_hz h + b_hz)
    reset_after=True (torch, Keras's default):
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    reset_after=False (Keras's reset_after=False, Cho et al. 2014):
        n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)
    h' = (1 - z) * n + z * h
    options: h_mask [B,H], recurrent dropout as the LSTM's (but not in z * h); zone_h
    [T,B,H] or [1,B,H], zoneout of the one state, h' <- h' + zone_h[t] (h - h');
    layer_norm (reset_after only): each product normalised over its 3H entries with
    its own gain before the biases add, as the LSTM's (Marian's layer-normalised GRU
    does the same):
        [a_r a_z a_n] = LN(W_hh h; ln_hh) + b_hh,  [x_r x_z x_n] = LN(W_ih x; ln_ih) + b_ih
        r = s(x_r + a_r), z = s(x_z + a_z), n = tanh(x_n + r * a_n)
  RNN
    h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu

The LSTM's two biases always add, so their gradients are equal; the GRU's b_hn
sits inside r's product (reset_after) or after W_hn (r * h), so b_ih and b_hh
have different gradients there.

Variable lengths (lengths [B], 0 <= lengths[b] <= T): sequence b is valid at
steps t < lengths[b]. Past its length its state is held and its output is zero;
the reverse direction starts at its last valid step, t = lengths[b] - 1.
"""
import numpy as np

from .gates import DEFAULT_ACTS, LAYER_NORM_EPS, RNN_NONLINEARITIES, activation_name

LSTM_GATE_ORDER = "ifgo"
GRU_GATE_ORDER = "rzn"


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def apply_activation(kind, a):
    """An activation kind of gates.py (gates.ACTIVATIONS's, or a user's function) of the
    array a, in NumPy."""
    name = activation_name(kind)
    if name == "sigmoid":
        return _sigmoid(a)
    if name == "tanh":
        return np.tanh(a)
    if name == "relu":
        return np.where(a > 0, a, a * 0)  # (a NaN stays a NaN)
    if name == "hard_sigmoid":
        return np.clip(a / 6 + 0.5, 0, 1)
    return np.vectorize(kind, otypes=[a.dtype])(a)


def activation_grad(kind, y):
    """The derivative of an activation from its output y = apply_activation(f, a); kind:
    the derivative's slot of gates.make_acts's tuple."""
    name = activation_name(kind)
    if name == "sigmoid":
        return y * (1 - y)
    if name == "tanh":
        return 1 - y * y
    if name == "relu":
        return (y > 0).astype(y.dtype)
    if name == "hard_sigmoid":
        return np.where((y > 0) & (y < 1), 1 / 6, 0).astype(y.dtype)
    return np.vectorize(kind, otypes=[y.dtype])(y)


def layer_norm(v, gain, bias=0):
    """LN over the last axis: (gain * v_hat + bias, v_hat, 1 / sigma), v_hat the
    normalised v and sigma = sqrt(var(v) + LAYER_NORM_EPS)."""
    d = v - v.mean(axis=-1, keepdims=True)
    rstd = 1 / np.sqrt((d * d).mean(axis=-1, keepdims=True) + LAYER_NORM_EPS)
    v_hat = d * rstd
    return gain * v_hat + bias, v_hat, rstd


def layer_norm_grad(d_out, gain, v_hat, rstd):
    """The gradient of v from that of layer_norm's output (gain * v_hat + bias)."""
    dv = d_out * gain
    return rstd * (dv - dv.mean(axis=-1, keepdims=True)
                   - v_hat * (dv * v_hat).mean(axis=-1, keepdims=True))


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def lstm_forward_ref(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths=None, reverse=False,
                     cell_clip=None, input_forget=False, gate_clip=None, w_hr=None,
                     h_mask=None, zone_c=None, zone_h=None, peephole=None,
                     acts=DEFAULT_ACTS, ln_ih=None, ln_hh=None, ln_c=None, ln_c_bias=None):
    """One LSTM layer and direction.

    x: [T,B,I]; h0: [B,P], c0: [B,H]; lengths: [B] ints or None (all T); cell_clip:
    None or a number > 0; input_forget: couple f = 1 - i; gate_clip: None or a
    number > 0; w_hr: None, or the projection [P,H] (P = H without it); h_mask: None
    or [B,P], the recurrent dropout mask; zone_c, zone_h: None or [T,B,H] and
    [T,B,P], or [1,B,H] and [1,B,P] for the same at every step (zoneout; both or
    neither); peephole: None or [3H], the peephole weights (p_i, p_f, p_o);
    acts: gates.make_acts's tuple, the gates' and the cell's activations; ln_ih,
    ln_hh [4H], ln_c, ln_c_bias [H]: layer normalisation's gains and bias (all four
    or none; see the module docstring).
    Returns y [T,B,P], h_n [B,P], c_n [B,H], and a cache for lstm_backward_ref
    holding the inputs, the activated gates [T,B,G] (f as used) and the cell
    states [T,B,H] (after clipping; with zoneout, cs holds the new cell values
    before zoneout, czs the states after it).
    """
    T, B, _ = x.shape
    H = c0.shape[1]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    h, c = h0.copy(), c0.copy()
    y = np.zeros((T, B, h0.shape[1]), x.dtype)
    gates = np.zeros((T, B, 4 * H), x.dtype)
    cs = np.zeros((T, B, H), x.dtype)
    czs = np.zeros((T, B, H), x.dtype)
    passed = np.ones((T, B, 4 * H), bool)  # pre-activations inside the gate clip
    gate, cell = (lambda a: apply_activation(acts[0], a)), (
        lambda a: apply_activation(acts[2], a))
    p_i, p_f, p_o = (None,) * 3 if peephole is None else np.reshape(peephole, (3, H))
    normed = ln_ih is not None
    for t in _steps(T, reverse):
        valid = (t < lengths)[:, None]
        h_in = h if h_mask is None else h * h_mask
        if normed:
            a = (layer_norm(x[t] @ w_ih.T, ln_ih)[0] + b_ih
                 + layer_norm(h_in @ w_hh.T, ln_hh)[0] + b_hh)
        else:
            a = x[t] @ w_ih.T + b_ih + h_in @ w_hh.T + b_hh
        if peephole is not None:  # the old state into i and f (o reads the new one below)
            a[:, :2 * H] += np.concatenate([p_i * c, p_f * c], axis=1)
        if gate_clip is not None:
            passed[t, :, :3 * H] = np.abs(a[:, :3 * H]) < gate_clip
            a[:, :3 * H] = np.clip(a[:, :3 * H], -gate_clip, gate_clip)
        i, f, g = gate(a[:, :H]), gate(a[:, H:2 * H]), cell(a[:, 2 * H:3 * H])
        if input_forget:
            f = 1 - i
        c_new = f * c + i * g
        if cell_clip is not None:
            c_new = np.clip(c_new, -cell_clip, cell_clip)
        a_o = a[:, 3 * H:] if peephole is None else a[:, 3 * H:] + p_o * c_new
        if gate_clip is not None:
            passed[t, :, 3 * H:] = np.abs(a_o) < gate_clip
            a_o = np.clip(a_o, -gate_clip, gate_clip)
        o = gate(a_o)
        h_new = o * cell(layer_norm(c_new, ln_c, ln_c_bias)[0] if normed else c_new)
        if w_hr is not None:
            h_new = h_new @ w_hr.T
        cs[t] = np.where(valid, c_new, c)
        if zone_c is not None:
            z = t if len(zone_c) > 1 else 0  # ([1,B,H]: the same at every step)
            c_new = c_new + zone_c[z] * (c - c_new)
            h_new = h_new + zone_h[z] * (h - h_new)
        c = np.where(valid, c_new, c)
        h = np.where(valid, h_new, h)
        y[t] = np.where(valid, h_new, 0)
        gates[t] = np.concatenate([i, f, g, o], axis=1)
        czs[t] = c
    cache = dict(x=x, w_ih=w_ih, w_hh=w_hh, h0=h0, c0=c0, lengths=lengths,
                 reverse=reverse, gates=gates, cs=cs, y=y, cell_clip=cell_clip,
                 input_forget=input_forget, passed=passed, w_hr=w_hr, h_mask=h_mask,
                 czs=czs, zone_c=zone_c, zone_h=zone_h, peephole=peephole, acts=acts,
                 layer_norm=(ln_ih, ln_hh, ln_c, ln_c_bias) if normed else None)
    return y, h, c, cache


def lstm_backward_ref(dy, dh_n, dc_n, cache):
    """Backward of lstm_forward_ref.

    dy: [T,B,P]; dh_n [B,P], dc_n [B,H] (gradients of the final state).
    Returns dx [T,B,I], dh0 [B,P], dc0 [B,H] and a dict of parameter gradients
    {"w_ih", "w_hh", "b_ih", "b_hh"} (and "w_hr" with a projection) in the
    shapes of the weights (and "peephole" [3H] with peepholes, "ln_ih", "ln_hh",
    "ln_c", "ln_c_bias" with layer normalisation).
    """
    x, w_ih, w_hh, w_hr = cache["x"], cache["w_ih"], cache["w_hh"], cache.get("w_hr")
    acts, peephole = cache.get("acts", DEFAULT_ACTS), cache.get("peephole")
    dgate = lambda y: activation_grad(acts[1], y)  # noqa: E731
    dcell = lambda y: activation_grad(acts[3], y)  # noqa: E731
    h0, c0, lengths = cache["h0"], cache["c0"], cache["lengths"]
    gates, cs, y, reverse = cache["gates"], cache["cs"], cache["y"], cache["reverse"]
    czs = cache.get("czs", cs)  # the cell states (after zoneout, if any)
    zone_c, zone_h = cache.get("zone_c"), cache.get("zone_h")
    T, B, _ = x.shape
    H = c0.shape[1]
    dx = np.zeros_like(x)
    grads = {k: np.zeros_like(cache[k]) for k in ("w_ih", "w_hh")}
    grads["b_ih"] = np.zeros(4 * H, x.dtype)
    if w_hr is not None:
        grads["w_hr"] = np.zeros_like(w_hr)
    if peephole is not None:
        p_i, p_f, p_o = np.reshape(peephole, (3, H))
        grads["peephole"] = np.zeros((3, H), x.dtype)
    norms = cache.get("layer_norm")
    if norms is not None:
        ln_ih, ln_hh, ln_c, ln_c_bias = norms
        for k, w in zip(("ln_ih", "ln_hh", "ln_c", "ln_c_bias"), norms):
            grads[k] = np.zeros_like(w)
    dh, dc = dh_n.copy(), dc_n.copy()
    order = list(_steps(T, reverse))
    for n in range(T - 1, -1, -1):  # walk the forward's steps backwards
        t = order[n]
        valid = (t < lengths)[:, None]
        first = n == 0
        prev = order[n - 1] if not first else None
        # The state entering step t: the previous valid step, else the initial state.
        if first:
            h_prev, c_prev = h0, c0
        else:
            prev_valid = (prev < lengths)[:, None]
            h_prev = np.where(prev_valid, y[prev], h0)
            c_prev = np.where(prev_valid, czs[prev], c0)
        i, f = gates[t, :, :H], gates[t, :, H:2 * H]
        g, o = gates[t, :, 2 * H:3 * H], gates[t, :, 3 * H:]
        if norms is not None:  # h' reads the normalised state
            n_c, c_hat, rstd_c = layer_norm(cs[t], ln_c, ln_c_bias)
            tc = apply_activation(acts[2], n_c)
        else:
            tc = apply_activation(acts[2], cs[t])
        dh_t = dh + dy[t]
        dh_kept = dc_kept = 0  # zoneout: the parts of h and c passed on unchanged
        dc_new = dc
        if zone_c is not None:
            z = t if len(zone_c) > 1 else 0
            dh_kept, dh_t = zone_h[z] * dh_t, (1 - zone_h[z]) * dh_t
            dc_kept, dc_new = zone_c[z] * dc, (1 - zone_c[z]) * dc
        if w_hr is not None:  # h = W_hr m with m = o * cell(c)
            grads["w_hr"] += np.where(valid, dh_t, 0).T @ (o * tc)
            dh_t = dh_t @ w_hr
        passed = cache["passed"][t]  # the pre-activations inside the gate clip
        da_o = dh_t * tc * dgate(o) * passed[:, 3 * H:]
        if norms is not None:
            dn = np.where(valid, dh_t * o * dcell(tc), 0)
            grads["ln_c"] += (dn * c_hat).sum(0)
            grads["ln_c_bias"] += dn.sum(0)
            dc_t = dc_new + layer_norm_grad(dn, ln_c, c_hat, rstd_c)
        else:
            dc_t = dc_new + dh_t * o * dcell(tc)
        if peephole is not None:  # o read the new state
            dc_t = dc_t + da_o * p_o
        if cache.get("cell_clip") is not None:  # a clipped unit passes no gradient
            dc_t = np.where(np.abs(cs[t]) < cache["cell_clip"], dc_t, 0)
        if cache.get("input_forget"):  # f = 1 - i: i also reaches c through f
            da = np.concatenate([dc_t * (g - c_prev) * dgate(i), np.zeros_like(f),
                                 dc_t * i * dcell(g), da_o], axis=1)
        else:
            da = np.concatenate([dc_t * g * dgate(i), dc_t * c_prev * dgate(f),
                                 dc_t * i * dcell(g), da_o], axis=1)
        da = np.where(valid, da * passed, 0)
        mask = cache.get("h_mask")
        h_in = h_prev if mask is None else h_prev * mask
        da_x = da_h = da  # the gradients of the two products
        if norms is not None:
            _, x_hat, rstd_x = layer_norm(x[t] @ w_ih.T, ln_ih)
            _, h_hat, rstd_h = layer_norm(h_in @ w_hh.T, ln_hh)
            grads["ln_ih"] += (da * x_hat).sum(0)
            grads["ln_hh"] += (da * h_hat).sum(0)
            da_x = layer_norm_grad(da, ln_ih, x_hat, rstd_x)
            da_h = layer_norm_grad(da, ln_hh, h_hat, rstd_h)
        dx[t] = da_x @ w_ih
        grads["w_ih"] += da_x.T @ x[t]
        grads["w_hh"] += da_h.T @ h_in
        grads["b_ih"] += da.sum(0)
        dh = np.where(valid, (da_h @ w_hh if mask is None else (da_h @ w_hh) * mask) + dh_kept,
                      dh)
        dc_prev = dc_t * f
        if peephole is not None:  # i and f read the old state
            dc_prev = dc_prev + da[:, :H] * p_i + da[:, H:2 * H] * p_f
            grads["peephole"] += np.stack([(da[:, :H] * c_prev).sum(0),
                                           (da[:, H:2 * H] * c_prev).sum(0),
                                           (da[:, 3 * H:] * cs[t]).sum(0)])
        dc = np.where(valid, dc_prev + dc_kept, dc)
    grads["b_hh"] = grads["b_ih"].copy()
    if peephole is not None:
        grads["peephole"] = grads["peephole"].reshape(-1)
    return dx, dh, dc, grads


def _lengths(lengths, T, B):
    return np.full(B, T) if lengths is None else np.asarray(lengths)


def _state_before(order, n, lengths, h, h0):
    """The state entering the forward's n-th step (order[n]) of every row: h at
    the step before when that step was valid, else the initial state h0."""
    if n == 0:
        return h0
    prev = order[n - 1]
    return np.where((prev < lengths)[:, None], h[prev], h0)


def gru_forward_ref(x, w_ih, w_hh, b_ih, b_hh, h0, lengths=None, reverse=False,
                    reset_after=True, h_mask=None, acts=DEFAULT_ACTS, zone_h=None, ln_ih=None,
                    ln_hh=None):
    """One GRU layer and direction.

    x: [T,B,I]; w_ih [3H,I], w_hh [3H,H], b_ih, b_hh [3H] (gate blocks r, z, n);
    h0: [B,H]; lengths: [B] ints or None (all T); reset_after: where r applies
    (see the module docstring); h_mask: None or [B,H], multiplying h wherever W_hh
    reads it (recurrent dropout, as Keras applies it: not in h' = ... + z h); acts:
    gates.make_acts's tuple, the activation of r and z (sigmoid by default) and of
    n (tanh), as Keras's recurrent_activation and activation; zone_h: None, or
    zoneout's weights [T,B,H] ([1,B,H]: the same at every step), as the LSTM's;
    ln_ih, ln_hh [3H]: layer normalisation's gains (both or neither; reset_after).
    Returns y [T,B,H], h_n [B,H] and a cache for gru_backward_ref holding the
    inputs, the activated gates [T,B,3H] and the n gate's recurrent term hn
    [T,B,H] (W_hn h + b_hn, or W_hn (r * h) + b_hn).
    """
    T, B, _ = x.shape
    H = w_hh.shape[1]
    lengths = _lengths(lengths, T, B)
    h = h0.copy()
    y = np.zeros((T, B, H), x.dtype)
    gates = np.zeros((T, B, 3 * H), x.dtype)
    hns = np.zeros((T, B, H), x.dtype)
    gate, cell = (lambda a: apply_activation(acts[0], a)), (
        lambda a: apply_activation(acts[2], a))
    normed = ln_ih is not None
    if normed and not reset_after:
        raise ValueError("layer_norm: the GRU with reset_after=True only")
    for t in _steps(T, reverse):
        valid = (t < lengths)[:, None]
        a_x = (layer_norm(x[t] @ w_ih.T, ln_ih)[0] if normed else x[t] @ w_ih.T) + b_ih
        h_in = h if h_mask is None else h * h_mask
        if normed:  # the whole recurrent product, normalised over its 3H entries
            a_hh = layer_norm(h_in @ w_hh.T, ln_hh)[0] + b_hh
            a_h = a_hh[:, :2 * H]
        else:
            a_h = h_in @ w_hh[:2 * H].T + b_hh[:2 * H]
        r = gate(a_x[:, :H] + a_h[:, :H])
        z = gate(a_x[:, H:2 * H] + a_h[:, H:])
        if reset_after:
            hn = a_hh[:, 2 * H:] if normed else h_in @ w_hh[2 * H:].T + b_hh[2 * H:]
            n = cell(a_x[:, 2 * H:] + r * hn)
        else:
            hn = (r * h_in) @ w_hh[2 * H:].T + b_hh[2 * H:]
            n = cell(a_x[:, 2 * H:] + hn)
        h_new = (1 - z) * n + z * h
        if zone_h is not None:
            h_new = h_new + zone_h[t if len(zone_h) > 1 else 0] * (h - h_new)
        h = np.where(valid, h_new, h)
        y[t] = np.where(valid, h_new, 0)
        gates[t] = np.concatenate([r, z, n], axis=1)
        hns[t] = hn
    cache = dict(x=x, w_ih=w_ih, w_hh=w_hh, h0=h0, lengths=lengths, reverse=reverse,
                 reset_after=reset_after, gates=gates, hn=hns, y=y, h_mask=h_mask, acts=acts,
                 zone_h=zone_h, layer_norm=(ln_ih, ln_hh) if normed else None)
    return y, h, cache


def gru_backward_ref(dy, dh_n, cache):
    """Backward of gru_forward_ref.

    dy: [T,B,H]; dh_n: [B,H] (gradient of the final state).
    Returns dx [T,B,I], dh0 [B,H] and a dict of parameter gradients
    {"w_ih", "w_hh", "b_ih", "b_hh"} in the shapes of the weights (and "ln_ih",
    "ln_hh" with layer normalisation).
    """
    x, w_ih, w_hh, h0 = cache["x"], cache["w_ih"], cache["w_hh"], cache["h0"]
    lengths, reverse, reset_after = cache["lengths"], cache["reverse"], cache["reset_after"]
    gates, hns, y = cache["gates"], cache["hn"], cache["y"]
    acts, zone_h = cache.get("acts", DEFAULT_ACTS), cache.get("zone_h")
    dgate = lambda y: activation_grad(acts[1], y)  # noqa: E731
    dcell = lambda y: activation_grad(acts[3], y)  # noqa: E731
    T, B, _ = x.shape
    H = w_hh.shape[1]
    w_rz, w_hn = w_hh[:2 * H], w_hh[2 * H:]
    mask = cache.get("h_mask")
    mask = np.ones_like(h0) if mask is None else mask
    dx = np.zeros_like(x)
    grads = {k: np.zeros_like(cache[k]) for k in ("w_ih", "w_hh")}
    grads["b_ih"] = np.zeros(3 * H, x.dtype)
    grads["b_hh"] = np.zeros(3 * H, x.dtype)
    norms = cache.get("layer_norm")
    if norms is not None:
        ln_ih, ln_hh = norms
        grads["ln_ih"], grads["ln_hh"] = np.zeros_like(ln_ih), np.zeros_like(ln_hh)
    dh = dh_n.copy()
    order = list(_steps(T, reverse))
    for k in range(T - 1, -1, -1):  # walk the forward's steps backwards
        t = order[k]
        valid = (t < lengths)[:, None]
        h_prev = _state_before(order, k, lengths, y, h0)
        h_in = h_prev * mask  # what W_hh read
        r, z, n = gates[t, :, :H], gates[t, :, H:2 * H], gates[t, :, 2 * H:]
        dh_t = dh + dy[t]
        dh_kept = 0  # zoneout: the part of dh passed on unchanged
        if zone_h is not None:
            zh = zone_h[t if len(zone_h) > 1 else 0]
            dh_kept, dh_t = zh * dh_t, (1 - zh) * dh_t
        dn = np.where(valid, dh_t * (1 - z) * dcell(n), 0)
        dz = np.where(valid, dh_t * (h_prev - n) * dgate(z), 0)
        if reset_after:
            d_hn = dn * r  # gradient of the n gate's recurrent term W_hn h + b_hn
            dr = dn * hns[t] * dgate(r)
        else:
            d_hn = dn      # gradient of W_hn (r * h) + b_hn
            d_rh = dn @ w_hn
            dr = d_rh * h_in * dgate(r)
        da = np.concatenate([dr, dz, dn], axis=1)      # of the input product (+ b_ih)
        da_h = np.concatenate([dr, dz, d_hn], axis=1)  # of the recurrent one (+ b_hh)
        grads["b_ih"] += da.sum(0)
        grads["b_hh"] += da_h.sum(0)
        dv_x, dv_h = da, da_h  # the gradients of the raw products
        if norms is not None:  # both pass through their LN (reset_after only)
            _, h_hat, rstd_h = layer_norm(h_in @ w_hh.T, ln_hh)
            _, x_hat, rstd_x = layer_norm(x[t] @ w_ih.T, ln_ih)
            grads["ln_hh"] += (da_h * h_hat).sum(0)
            grads["ln_ih"] += (da * x_hat).sum(0)
            dv_h = layer_norm_grad(da_h, ln_hh, h_hat, rstd_h)
            dv_x = layer_norm_grad(da, ln_ih, x_hat, rstd_x)
        dx[t] = dv_x @ w_ih
        grads["w_ih"] += dv_x.T @ x[t]
        if reset_after:  # W_hh read h in all three gates
            grads["w_hh"] += dv_h.T @ h_in
            dh_prev = dh_t * z + (dv_h @ w_hh) * mask
        else:            # W_hn read r * h
            d_rz = dv_h[:, :2 * H]
            grads["w_hh"][:2 * H] += d_rz.T @ h_in
            grads["w_hh"][2 * H:] += d_hn.T @ (r * h_in)
            dh_prev = dh_t * z + (d_rh * r + d_rz @ w_rz) * mask
        dh = np.where(valid, dh_prev + dh_kept, dh)
    return dx, dh, grads


def _rnn_activation(nonlinearity):
    """The activation and its derivative from its output."""
    if nonlinearity == "tanh":
        return np.tanh, lambda h: 1 - h * h
    if nonlinearity == "relu":
        return lambda a: np.maximum(a, 0), lambda h: (h > 0).astype(h.dtype)
    raise ValueError(f"nonlinearity must be one of {RNN_NONLINEARITIES}, got {nonlinearity!r}")


def rnn_forward_ref(x, w_ih, w_hh, b_ih, b_hh, h0, lengths=None, reverse=False,
                    nonlinearity="tanh"):
    """One plain (Elman) RNN layer and direction.

    x: [T,B,I]; w_ih [H,I], w_hh [H,H], b_ih, b_hh [H]; h0: [B,H]; lengths: [B]
    ints or None (all T); nonlinearity: "tanh" or "relu".
    Returns y [T,B,H], h_n [B,H] and a cache for rnn_backward_ref (the
    activation's derivative is taken from y).
    """
    act, _ = _rnn_activation(nonlinearity)
    T, B, _ = x.shape
    H = w_hh.shape[1]
    lengths = _lengths(lengths, T, B)
    h = h0.copy()
    y = np.zeros((T, B, H), x.dtype)
    for t in _steps(T, reverse):
        valid = (t < lengths)[:, None]
        h_new = act(x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
        h = np.where(valid, h_new, h)
        y[t] = np.where(valid, h_new, 0)
    cache = dict(x=x, w_ih=w_ih, w_hh=w_hh, h0=h0, lengths=lengths, reverse=reverse,
                 nonlinearity=nonlinearity, y=y)
    return y, h, cache


def rnn_backward_ref(dy, dh_n, cache):
    """Backward of rnn_forward_ref.

    dy: [T,B,H]; dh_n: [B,H]. Returns dx [T,B,I], dh0 [B,H] and
    {"w_ih", "w_hh", "b_ih", "b_hh"} in the shapes of the weights.
    """
    x, w_ih, w_hh, h0 = cache["x"], cache["w_ih"], cache["w_hh"], cache["h0"]
    lengths, reverse, y = cache["lengths"], cache["reverse"], cache["y"]
    _, dact = _rnn_activation(cache["nonlinearity"])
    T = x.shape[0]
    dx = np.zeros_like(x)
    grads = {k: np.zeros_like(cache[k]) for k in ("w_ih", "w_hh")}
    grads["b_ih"] = np.zeros(w_hh.shape[0], x.dtype)
    dh = dh_n.copy()
    order = list(_steps(T, reverse))
    for k in range(T - 1, -1, -1):
        t = order[k]
        valid = (t < lengths)[:, None]
        h_prev = _state_before(order, k, lengths, y, h0)
        da = np.where(valid, (dh + dy[t]) * dact(y[t]), 0)
        dx[t] = da @ w_ih
        grads["w_ih"] += da.T @ x[t]
        grads["w_hh"] += da.T @ h_prev
        grads["b_ih"] += da.sum(0)
        dh = np.where(valid, da @ w_hh, dh)
    grads["b_hh"] = grads["b_ih"].copy()
    return dx, dh, grads


# -- reduced precision (kernels/cpu/quantized.py; inference only) -----------------------
def quantize_symmetric_ref(a):
    """a [M,K] float32 -> (q [M,K] int8 values as int64, s [M] float32): one scale a row,
    s = max_k |a[r,k]| / 127, q = rint(a * (127 / max)) in [-127, 127] (ties to even);
    a zero row: q = 0, s = 0; a row with NaN or inf: s = NaN. In float32 throughout."""
    a = np.asarray(a, np.float32)
    m = np.abs(a).max(axis=1)
    bad = ~np.isfinite(m)
    safe = np.where((m > 0) & ~bad, m, np.float32(1)).astype(np.float32)
    inv = (np.float32(127) / safe).astype(np.float32)
    q = np.clip(np.rint(np.where(bad[:, None], 0, a) * inv[:, None]), -127, 127)
    q[m == 0] = 0
    s = np.where(bad, np.float32(np.nan), np.where(m > 0, m / np.float32(127), 0))
    return q.astype(np.int64), s.astype(np.float32)


def int8_product_ref(a, w):
    """a [M,K] @ w [N,K]^T as the int8 kernels compute it: both quantized per row
    (quantize_symmetric_ref; w's rows are the output channels), the integer sums
    exact, then float32(sum) * (s_a[r] * s_w[n]). Returns (the float32 product, the
    integer sums [M,N] int64)."""
    qa, sa = quantize_symmetric_ref(a)
    qw, sw = quantize_symmetric_ref(w)
    acc = qa @ qw.T
    return acc.astype(np.float32) * (sa[:, None] * sw[None, :]), acc


def bfloat16_ref(w):
    """float32 -> the nearest bfloat16 value (ties to even), as float32."""
    bits = np.asarray(w, np.float32).view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    out = bits.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(w), np.float32(np.nan), out)


def bfloat16_product_ref(a, w):
    """a [M,K] @ w [N,K]^T with both rounded to bfloat16 (bfloat16_ref), the exact
    products summed in float64, then rounded to float32."""
    a, w = (bfloat16_ref(v).astype(np.float64) for v in (a, w))
    return (a @ w.T).astype(np.float32)


def _quantized_product(dtype):
    """P(a, w) of a quantized layer: int8_product_ref's, or bfloat16_product_ref."""
    if dtype == "bfloat16":
        return bfloat16_product_ref
    return lambda a, w: int8_product_ref(a, w)[0]


def lstm_forward_quantized_ref(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths=None,
                               reverse=False, dtype="int8", h_in=None):
    """The plain LSTM's inference with reduced-precision products, in float32.

    Each step a = (b_ih + b_hh) + P(x_t, W_ih), then a + P(h, W_hh), and the gate
    math in float32. int8 (torch's dynamic quantization): P is int8_product_ref's,
    x quantized per step and sequence, h per step. bfloat16: P is
    bfloat16_product_ref's, x, h and the weights rounded to bfloat16. Shapes as
    lstm_forward_ref's; returns y [T,B,H], h_n, c_n.

    h_in: None, or [T,B,H], the h that step t's recurrent product reads instead of
    this function's own (a kernel's h from the step before, say). Over many steps
    a last-bit difference in the gate math can move one element of h across a
    rounding boundary of its quantization, and the outputs then differ by a
    quantum; fed the kernel's own h, each step is compared with no such jump."""
    f32 = np.float32
    x, h, c = (np.asarray(v, f32) for v in (x, h0, c0))
    w_ih, w_hh = np.asarray(w_ih, f32), np.asarray(w_hh, f32)
    product = _quantized_product(dtype)
    T, B, _ = x.shape
    H = h.shape[1]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    bias = np.asarray(b_ih, f32) + np.asarray(b_hh, f32)
    h, c = h.copy(), c.copy()
    y = np.zeros((T, B, H), f32)
    for t in _steps(T, reverse):
        valid = (t < lengths)[:, None]
        h_q = h if h_in is None else np.asarray(h_in[t], f32)
        a = (bias + product(x[t], w_ih)) + product(h_q, w_hh)
        i, f = _sigmoid(a[:, :H]), _sigmoid(a[:, H:2 * H])
        g, o = np.tanh(a[:, 2 * H:3 * H]), _sigmoid(a[:, 3 * H:])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        c, h = np.where(valid, c_new, c), np.where(valid, h_new, h)
        y[t] = np.where(valid, h_new, 0)
    return y, h, c


def gru_forward_quantized_ref(x, w_ih, w_hh, b_ih, b_hh, h0, lengths=None, reverse=False,
                              dtype="int8", h_in=None):
    """The plain GRU's inference (torch's form) with reduced-precision products, in
    float32: each step gx = P(x_t, W_ih) and gh = P(h, W_hh) (P as in
    lstm_forward_quantized_ref, over the 3H rows r, z, n), then
    r = s(gx_r + gh_r + b_ir + b_hr), z likewise,
    n = tanh(gx_n + b_in + r * (gh_n + b_hn)), h' = (1 - z) n + z h.
    Shapes as gru_forward_ref's; h_in as lstm_forward_quantized_ref's. Returns y
    [T,B,H], h_n."""
    f32 = np.float32
    x, h = np.asarray(x, f32), np.asarray(h0, f32)
    w_ih, w_hh = np.asarray(w_ih, f32), np.asarray(w_hh, f32)
    b_ih, b_hh = np.asarray(b_ih, f32), np.asarray(b_hh, f32)
    product = _quantized_product(dtype)
    T, B, _ = x.shape
    H = h.shape[1]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    h = h.copy()
    y = np.zeros((T, B, H), f32)
    for t in _steps(T, reverse):
        valid = (t < lengths)[:, None]
        h_q = h if h_in is None else np.asarray(h_in[t], f32)
        gx, gh = product(x[t], w_ih), product(h_q, w_hh)
        r = _sigmoid((gx[:, :H] + gh[:, :H]) + (b_ih[:H] + b_hh[:H]))
        z = _sigmoid((gx[:, H:2 * H] + gh[:, H:2 * H]) + (b_ih[H:2 * H] + b_hh[H:2 * H]))
        n = np.tanh(gx[:, 2 * H:] + b_ih[2 * H:] + r * (gh[:, 2 * H:] + b_hh[2 * H:]))
        h_new = (1 - z) * n + z * h
        h = np.where(valid, h_new, h)
        y[t] = np.where(valid, h_new, 0)
    return y, h


# -- ConvLSTM (Shi et al. 2015, in Keras's ConvLSTM2D form) ---------------------------
# Frames are channels-last: x [T,B,R,C,I] (R rows, C columns, I channels); the state
# h, c [B,R',C',F] (F filters) lives on the input convolution's output grid R' x C'.
# Weights in torch's Conv2d orientation: w_ih [4F,I,kh,kw], w_hh [4F,F,kh,kw], one
# bias b [4F] (Keras's single bias), gate blocks i, f, g, o (Keras's i, f, c, o). A step:
#   z = conv(x_t, w_ih; strides, padding, dilation) + conv(h, w_hh; "same", 1, 1) + b
#   i, f, g, o = s(z_i), s(z_f), tanh(z_g), s(z_o);  c' = f c + i g;  h' = o tanh(c')
# A 1-D ConvLSTM is the 2-D one with R = 1 and kh = 1.

def conv_geometry(size, k, stride, dilation, padding):
    """(out, pad_before, pad_after) of a convolution along one axis, as Keras and
    TensorFlow define "valid" and "same" ("same": out = ceil(size / stride), the
    odd padding pixel after)."""
    span = (k - 1) * dilation + 1
    if padding == "valid":
        return max(0, (size - span) // stride + 1), 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    return out, total // 2, total - total // 2


def conv_patches(x, kernel, strides, dilation, pads, out):
    """x [N,R,C,I] -> [N,R',C',kh*kw*I], each output pixel's receptive field in the
    order (ky, kx, i), zeros where it falls in the padding. pads: (top, left);
    out: (R', C')."""
    (kh, kw), (sh, sw), (dh, dw), (pt, pl), (Ro, Co) = kernel, strides, dilation, pads, out
    N, R, C, I = x.shape
    xp = np.zeros((N, max(R + pt, (Ro - 1) * sh + (kh - 1) * dh + 1),
                   max(C + pl, (Co - 1) * sw + (kw - 1) * dw + 1), I), x.dtype)
    xp[:, pt:pt + R, pl:pl + C] = x
    p = np.empty((N, Ro, Co, kh, kw, I), x.dtype)
    for ky in range(kh):
        for kx in range(kw):
            p[:, :, :, ky, kx] = xp[:, ky * dh:ky * dh + (Ro - 1) * sh + 1:sh,
                                    kx * dw:kx * dw + (Co - 1) * sw + 1:sw]
    return p.reshape(N, Ro, Co, kh * kw * I)


def conv_patches_grad(dp, shape, kernel, strides, dilation, pads):
    """The adjoint of conv_patches: dp [N,R',C',kh*kw*I] -> dx of x's `shape`."""
    (kh, kw), (sh, sw), (dh, dw), (pt, pl) = kernel, strides, dilation, pads
    N, Ro, Co, _ = dp.shape
    R, C, I = shape[1:]
    dp = dp.reshape(N, Ro, Co, kh, kw, I)
    dxp = np.zeros((N, max(R + pt, (Ro - 1) * sh + (kh - 1) * dh + 1),
                    max(C + pl, (Co - 1) * sw + (kw - 1) * dw + 1), I), dp.dtype)
    for ky in range(kh):
        for kx in range(kw):
            dxp[:, ky * dh:ky * dh + (Ro - 1) * sh + 1:sh,
                kx * dw:kx * dw + (Co - 1) * sw + 1:sw] += dp[:, :, :, ky, kx]
    return dxp[:, pt:pt + R, pl:pl + C]


def conv_matrix(w):
    """A convolution's weights [O,I,kh,kw] as the matrix [kh*kw*I, O] that
    conv_patches's rows multiply."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))


def _convlstm_convs(w_ih, w_hh, strides, padding, dilation, R, C):
    """The input and recurrent convolutions' (kernel, strides, dilation, pads, out)."""
    kernel = w_ih.shape[2:]
    geo = [conv_geometry(n, k, s, d, padding)
           for n, k, s, d in zip((R, C), kernel, strides, dilation)]
    out = (geo[0][0], geo[1][0])
    rec = [conv_geometry(n, k, 1, 1, "same") for n, k in zip(out, w_hh.shape[2:])]
    return ((kernel, tuple(strides), tuple(dilation), (geo[0][1], geo[1][1]), out),
            (w_hh.shape[2:], (1, 1), (1, 1), (rec[0][1], rec[1][1]), out))


def convlstm_forward_ref(x, w_ih, w_hh, b, h0, c0, strides=(1, 1), padding="valid",
                         dilation=(1, 1), lengths=None, h_mask=None):
    """One ConvLSTM layer (see above). x [T,B,R,C,I]; h0, c0 [B,R',C',F]; padding
    "valid" or "same"; lengths [B] or None: steps past a sequence's length keep its
    state and write zeros to y, as the LSTM's; h_mask None or [B,R',C',F]: recurrent
    dropout, h * h_mask enters the recurrent convolution at every step.
    Returns y [T,B,R',C',F], h_n, c_n, and a cache for convlstm_backward_ref holding
    the activated gates [T,B,R',C',4F] and the cell states [T,B,R',C',F]."""
    T, B, R, C, _ = x.shape
    F = w_hh.shape[1]
    lengths = _lengths(lengths, T, B)
    conv_x, conv_h = _convlstm_convs(w_ih, w_hh, strides, padding, dilation, R, C)
    wx, wh = conv_matrix(w_ih), conv_matrix(w_hh)
    h, c = h0.copy(), c0.copy()
    y = np.zeros((T,) + h0.shape, x.dtype)
    gates = np.zeros((T,) + h0.shape[:3] + (4 * F,), x.dtype)
    cs = np.zeros((T,) + h0.shape, x.dtype)
    for t in range(T):
        valid = (t < lengths)[:, None, None, None]
        h_in = h if h_mask is None else h * h_mask
        z = conv_patches(x[t], *conv_x) @ wx + conv_patches(h_in, *conv_h) @ wh + b
        i, f = _sigmoid(z[..., :F]), _sigmoid(z[..., F:2 * F])
        g, o = np.tanh(z[..., 2 * F:3 * F]), _sigmoid(z[..., 3 * F:])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        c, h = np.where(valid, c_new, c), np.where(valid, h_new, h)
        y[t] = np.where(valid, h_new, 0)
        gates[t] = np.concatenate([i, f, g, o], axis=-1)
        cs[t] = c
    cache = dict(x=x, w_ih=w_ih, w_hh=w_hh, h0=h0, c0=c0, lengths=lengths, h_mask=h_mask,
                 convs=(conv_x, conv_h), gates=gates, cs=cs, y=y)
    return y, h, c, cache


def convlstm_backward_ref(dy, dh_n, dc_n, cache):
    """Backward of convlstm_forward_ref: dy [T,B,R',C',F], dh_n, dc_n [B,R',C',F]
    -> dict of dx, dw_ih, dw_hh, db, dh0, dc0 (the weights' in their own shapes)."""
    x, w_ih, w_hh, lengths = cache["x"], cache["w_ih"], cache["w_hh"], cache["lengths"]
    h0, c0, h_mask, gates, cs = (cache[k] for k in ("h0", "c0", "h_mask", "gates", "cs"))
    conv_x, conv_h = cache["convs"]
    T = x.shape[0]
    F = w_hh.shape[1]
    wx, wh = conv_matrix(w_ih), conv_matrix(w_hh)
    dwx, dwh = np.zeros_like(wx), np.zeros_like(wh)
    db = np.zeros(4 * F, x.dtype)
    dx = np.zeros_like(x)
    dh, dc = dh_n.copy(), dc_n.copy()
    for t in range(T - 1, -1, -1):
        valid = (t < lengths)[:, None, None, None]
        c_prev = cs[t - 1] if t > 0 else c0
        h_prev = cache["y"][t - 1] if t > 0 else h0
        if t > 0:  # a row whose step t-1 was past its length still holds h0
            h_prev = np.where((t - 1 < lengths)[:, None, None, None], h_prev, h0)
        i, f, g, o = (gates[t][..., k * F:(k + 1) * F] for k in range(4))
        d_h = dh + dy[t]
        tc = np.tanh(cs[t])
        d_c = dc + d_h * o * (1 - tc * tc)
        dz = np.concatenate([d_c * g * i * (1 - i), d_c * c_prev * f * (1 - f),
                             d_c * i * (1 - g * g), d_h * tc * o * (1 - o)], axis=-1)
        dz = np.where(valid, dz, 0)
        h_in = h_prev if h_mask is None else h_prev * h_mask
        px, ph = conv_patches(x[t], *conv_x), conv_patches(h_in, *conv_h)
        dwx += px.reshape(-1, px.shape[-1]).T @ dz.reshape(-1, 4 * F)
        dwh += ph.reshape(-1, ph.shape[-1]).T @ dz.reshape(-1, 4 * F)
        db += dz.reshape(-1, 4 * F).sum(axis=0)
        dx[t] = conv_patches_grad(dz @ wx.T, x[t].shape, *conv_x[:4])
        dh_prev = conv_patches_grad(dz @ wh.T, h_in.shape, *conv_h[:4])
        if h_mask is not None:
            dh_prev = dh_prev * h_mask
        dh = np.where(valid, dh_prev, dh)
        dc = np.where(valid, d_c * f, dc)
    unmatrix = lambda m, w: m.reshape(w.shape[2], w.shape[3], w.shape[1], -1).transpose(
        3, 2, 0, 1)  # noqa: E731
    return dict(dx=dx, dw_ih=unmatrix(dwx, w_ih), dw_hh=unmatrix(dwh, w_hh), db=db,
                dh0=dh, dc0=dc)


# Attention's core lives in its own module (this one would pass 800 lines); the
# reference is one family, so it is reachable from here too.
from .reference_attention import attention_backward_ref, attention_forward_ref  # noqa: E402,F401
