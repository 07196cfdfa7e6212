"""The CPU attention kernels against the NumPy reference, float32 and float64, at
random uneven shapes (and T=1, B=1, S=1), with lengths, for both scores."""
import numpy as np
import pytest

from numlstm.kernels.cpu import attention_backward_cpu, attention_forward_cpu
from numlstm.kernels.reference import attention_backward_ref, attention_forward_ref
from helpers import assert_close

SHAPES = {  # (B, T, S, Q, K)
    "uneven": (5, 7, 9, 6, 11),
    "T1": (4, 1, 6, 5, 3),
    "B1": (1, 3, 5, 4, 4),
    "S1": (3, 2, 1, 3, 2),
    "parallel": (16, 12, 24, 32, 40),  # past threads.SMALL_REGION: the threaded path
}


@pytest.mark.parametrize("additive", [False, True], ids=["luong", "bahdanau"])
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-5), (np.float64, 1e-12)],
                         ids=["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_attention_cpu_matches_reference(rng, shape, dtype, rtol, additive):
    B, T, S, Q, K = shape
    q, keys = rng.standard_normal((B, T, Q)), rng.standard_normal((B, S, Q))
    values, dctx = rng.standard_normal((B, S, K)), rng.standard_normal((B, T, K))
    v = rng.standard_normal(Q) if additive else None
    lengths = rng.integers(1, S + 1, B)
    lengths[0] = S
    ctx_ref, a_ref = attention_forward_ref(q, keys, values, lengths, v)
    grads_ref = attention_backward_ref(dctx, q, keys, values, a_ref, lengths, v)

    cast = [a.astype(dtype) for a in (q, keys, values, dctx)]
    v_in = np.zeros(0, dtype) if v is None else v.astype(dtype)
    ctx, a = attention_forward_cpu(*cast[:3], lengths, v_in)
    assert ctx.dtype == a.dtype == dtype
    assert_close(ctx, ctx_ref, rtol, "ctx")
    assert_close(a, a_ref, rtol, "weights")
    grads = attention_backward_cpu(cast[3], *cast[:3], a, lengths, v_in)
    for name, got, want in zip(("dq", "dkeys", "dvalues"), grads, grads_ref):
        assert got.dtype == dtype
        assert_close(got, want, 10 * rtol, name)
    if additive:
        assert_close(grads[3], grads_ref[3], 10 * rtol, "dv")
    else:
        assert grads[3].shape == (0,)
