"""Attention's reference (attention_forward_ref / attention_backward_ref) against
central finite differences in float64, for both scores, with and without lengths."""
import numpy as np
import pytest

from numlstm.kernels.reference import attention_backward_ref, attention_forward_ref
from helpers import assert_close, numeric_gradient

CASES = {  # (B, T, S, Q, K, lengths, additive)
    "luong": (2, 3, 4, 3, 2, None, False),
    "luong-lengths": (3, 2, 5, 2, 3, [5, 1, 3], False),
    "bahdanau": (2, 3, 4, 3, 2, None, True),
    "bahdanau-lengths-T1": (3, 1, 4, 2, 3, [2, 4, 1], True),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_attention_reference_backward_matches_finite_differences(rng, case):
    B, T, S, Q, K, lengths, additive = case
    q, keys = rng.standard_normal((B, T, Q)), rng.standard_normal((B, S, Q))
    values = rng.standard_normal((B, S, K))
    v = rng.standard_normal(Q) if additive else None
    ctx, a = attention_forward_ref(q, keys, values, lengths, v)
    w_ctx = rng.standard_normal(ctx.shape)

    def loss():  # the weights enter the loss only through the context, as in the layer
        return (attention_forward_ref(q, keys, values, lengths, v)[0] * w_ctx).sum()

    dq, dkeys, dvalues, dv = attention_backward_ref(w_ctx, q, keys, values, a, lengths, v)
    for name, got, arr in (("dq", dq, q), ("dkeys", dkeys, keys), ("dvalues", dvalues, values)):
        assert_close(got, numeric_gradient(loss, arr), 1e-7, name, atol=1e-9)
    if additive:
        assert_close(dv, numeric_gradient(loss, v), 1e-7, "dv", atol=1e-9)
    else:
        assert dv is None
    assert_close(a.sum(axis=2), np.ones((B, T)), 1e-12, "weights sum to 1")
    if lengths is not None:  # padding gets no weight and no gradient
        for b, n in enumerate(lengths):
            assert not a[b, :, n:].any() and not dkeys[b, n:].any()
            assert not dvalues[b, n:].any()
