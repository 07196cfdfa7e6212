"""Losses against torch's (value and autograd gradient), finite differences, errors."""
import json

import numpy as np
import pytest

from numlstm.losses import CrossEntropyLoss, MSELoss, get_loss, loss_from_config
from helpers import assert_close

torch = pytest.importorskip("torch")

TOL = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 5)])
def test_mse_matches_torch(rng, shape, dtype):
    pred, target = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    value, grad = MSELoss().value_and_grad(pred, target)
    tp = torch.tensor(pred, requires_grad=True)
    expected = torch.nn.MSELoss()(tp, torch.tensor(target))
    expected.backward()
    assert isinstance(value, float)
    assert value == pytest.approx(expected.item(), rel=TOL[dtype])
    assert grad.dtype == dtype and grad.shape == shape
    assert_close(grad, tp.grad.numpy(), TOL[dtype], "mse grad")
    assert MSELoss()(pred, target) == value


def _ce_case(rng, dtype, shape=(3, 5, 7), ignore_index=-100, scale=3.0):
    *lead, C = shape
    logits = (rng.standard_normal(shape) * scale).astype(dtype)
    target = rng.integers(0, C, size=lead)
    target[rng.random(lead) < 0.3] = ignore_index
    target.flat[0] = 0  # at least one valid position
    return logits, target


def _torch_ce(logits, target, ignore_index=-100):
    C = logits.shape[-1]
    tl = torch.tensor(logits.reshape(-1, C), requires_grad=True)
    value = torch.nn.functional.cross_entropy(tl, torch.from_numpy(target.reshape(-1)),
                                              ignore_index=ignore_index)
    value.backward()
    return value.item(), tl.grad.numpy().reshape(logits.shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ignore_index", [-100, -1, 2])
@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 1), (2, 67, 83)])
def test_cross_entropy_matches_torch(rng, dtype, ignore_index, shape):
    logits, target = _ce_case(rng, dtype, shape, ignore_index=ignore_index)
    loss = CrossEntropyLoss(ignore_index=ignore_index)
    value, grad = loss.value_and_grad(logits, target)
    expected, expected_grad = _torch_ce(logits, target, ignore_index)
    assert isinstance(value, float)
    assert value == pytest.approx(expected, rel=TOL[dtype])
    assert grad.dtype == dtype and grad.shape == logits.shape
    assert_close(grad, expected_grad, TOL[dtype], "cross-entropy grad")
    assert np.all(grad[target == ignore_index] == 0)
    assert loss(logits, target) == value


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_large_logits_stay_finite(rng, dtype):
    logits, target = _ce_case(rng, dtype, shape=(4, 6), scale=1e4)
    value, grad = CrossEntropyLoss().value_and_grad(logits, target)
    assert np.isfinite(value) and np.isfinite(grad).all()
    expected, expected_grad = _torch_ce(logits.astype(np.float64), target)
    assert value == pytest.approx(expected, rel=1e-6)
    assert_close(grad, expected_grad, 1e-6, "large-logit grad")


def test_cross_entropy_of_a_nan_logit_is_nan(rng):
    logits, target = _ce_case(rng, np.float32, shape=(4, 6))
    for j in (0, 5):  # (also where the row's maximum is looked for first)
        bad = logits.copy()
        bad[0, j] = np.nan
        assert np.isnan(CrossEntropyLoss().value_and_grad(bad, target)[0])


def test_cross_entropy_all_ignored(rng):
    logits = rng.standard_normal((2, 3, 4)).astype(np.float32)
    target = np.full((2, 3), -100)
    value, grad = CrossEntropyLoss().value_and_grad(logits, target)
    assert value == 0.0
    assert grad.dtype == np.float32 and grad.shape == logits.shape and not grad.any()


def test_cross_entropy_gradient_by_finite_differences(rng):
    logits, target = _ce_case(rng, np.float64, shape=(2, 3, 4))
    loss = CrossEntropyLoss()
    _, grad = loss.value_and_grad(logits, target)
    eps = 1e-6
    numeric = np.zeros_like(logits)
    for i in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[i] += eps
        down[i] -= eps
        numeric[i] = (loss(up, target) - loss(down, target)) / (2 * eps)
    assert_close(grad, numeric, 1e-7, "finite-difference grad")


def test_cross_entropy_errors(rng):
    logits, target = _ce_case(rng, np.float64, shape=(2, 3, 4))
    loss = CrossEntropyLoss()
    for bad in (4, -2):
        t = target.copy()
        t[1, 2] = bad
        with pytest.raises(ValueError, match=f"got {bad}"):
            loss(logits, t)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        loss(logits, target.reshape(3, 2))
    with pytest.raises(TypeError, match="integer"):
        loss(logits, target.astype(np.float64))
    with pytest.raises(TypeError, match="float"):
        loss(np.zeros((2, 3, 4), np.int64), target)
    with pytest.raises(TypeError, match="ignore_index"):
        CrossEntropyLoss(ignore_index=1.5)


def test_mse_errors():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        MSELoss()(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="numeric"):
        MSELoss()(np.zeros(2), np.array(["a", "b"]))
    with pytest.raises(TypeError, match="numeric"):
        MSELoss()(np.array([None, None]), np.zeros(2))
    with pytest.raises(ValueError, match="element"):
        MSELoss()(np.zeros(0), np.zeros(0))


def test_get_loss_and_configs():
    assert isinstance(get_loss("MSE"), MSELoss)
    for name in ("cross_entropy", "crossentropy", "ce", "sparse_categorical_crossentropy"):
        assert isinstance(get_loss(name), CrossEntropyLoss)
    loss = CrossEntropyLoss(ignore_index=-1)
    assert get_loss(loss) is loss
    with pytest.raises(ValueError, match="mse"):
        get_loss("hinge")
    for original in (MSELoss(), loss):
        cfg = json.loads(json.dumps(original.get_config()))
        rebuilt = loss_from_config(cfg)
        assert type(rebuilt) is type(original) and rebuilt.get_config() == cfg
    assert loss.get_config() == {"type": "CrossEntropyLoss", "ignore_index": -1}
    with pytest.raises(ValueError, match="type"):
        loss_from_config({"type": "Nope"})
