"""NumPy reference of attention's core (scores, masked softmax, context), forward
and backward: the oracle of kernels/cpu/attention.py, itself checked against
finite differences in tests/kernels/test_reference_attention.py.

Dimensions: B batch, T queries (decoder steps), S source steps (keys and
values), Q the width scores are made in, K the values' width.

Two scores, the two of Luong et al. (2015) and Bahdanau et al. (2015), on
projections the caller made (numlstm.layers.attention):

    multiplicative ("luong", v is None):  e[b,t,s] = q[b,t] . k[b,s]
    additive ("bahdanau", v given [Q]):   e[b,t,s] = v . tanh(q[b,t] + k[b,s])

then a[b,t,:] = softmax(e[b,t,:]) over the source steps s < lengths[b] (0 at
the others) and ctx[b,t] = sum_s a[b,t,s] values[b,s].
"""
import numpy as np


def _valid(lengths, B, S):
    """[B,1,S] True at the source steps each sequence has."""
    if lengths is None:
        return np.ones((B, 1, S), bool)
    return (np.arange(S)[None, :] < np.asarray(lengths)[:, None])[:, None, :]


def attention_forward_ref(q, keys, values, lengths=None, v=None):
    """q [B,T,Q], keys [B,S,Q], values [B,S,K], lengths [B] (None: all S) and v [Q]
    (None: the multiplicative score) -> ctx [B,T,K], weights a [B,T,S]."""
    B, S = keys.shape[:2]
    if v is None:
        e = q @ keys.transpose(0, 2, 1)
    else:
        e = np.tanh(q[:, :, None, :] + keys[:, None, :, :]) @ v
    e = np.where(_valid(lengths, B, S), e, -np.inf)
    a = np.exp(e - e.max(axis=2, keepdims=True))
    a /= a.sum(axis=2, keepdims=True)
    return a @ values, a


def attention_backward_ref(dctx, q, keys, values, a, lengths=None, v=None):
    """The gradient dctx [B,T,K] of the context, with the forward's inputs and its
    weights a -> dq [B,T,Q], dkeys [B,S,Q], dvalues [B,S,K], dv [Q] (None for the
    multiplicative score). Steps past a sequence's length get no gradient."""
    da = dctx @ values.transpose(0, 2, 1)                    # [B,T,S]
    dvalues = a.transpose(0, 2, 1) @ dctx                    # [B,S,K]
    de = a * (da - (a * da).sum(axis=2, keepdims=True))     # softmax's backward
    if v is None:
        return de @ keys, de.transpose(0, 2, 1) @ q, dvalues, None
    u = np.tanh(q[:, :, None, :] + keys[:, None, :, :])      # [B,T,S,Q]
    g = de[..., None] * (1 - u * u) * v
    return g.sum(axis=2), g.sum(axis=1), dvalues, (de[..., None] * u).sum(axis=(0, 1, 2))
