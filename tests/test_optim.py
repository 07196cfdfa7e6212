"""Optimizers against torch.optim step by step, clipping, schedules, state, errors."""
import json
import math

import numpy as np
import pytest

from numlstm.optim import (SGD, Adam, AdamW, clip_grad_norm, constant, cosine, get_optimizer,
                           step_decay)
from helpers import assert_close

torch = pytest.importorskip("torch")

SHAPES = {"lstm/weight_ih_l0": (8, 3), "lstm/weight_hh_l0": (8, 2), "lstm/bias_ih_l0": (8,)}

# (numlstm class, torch class, keyword arguments both take)
CASES = {
    "sgd": (SGD, "SGD", dict(lr=0.1)),
    "sgd_momentum": (SGD, "SGD", dict(lr=0.1, momentum=0.9)),
    "sgd_nesterov": (SGD, "SGD", dict(lr=0.1, momentum=0.8, nesterov=True)),
    "sgd_weight_decay": (SGD, "SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.05)),
    "sgd_dampening": (SGD, "SGD", dict(lr=0.1, momentum=0.9, dampening=0.3)),
    "adam": (Adam, "Adam", dict(lr=0.01)),
    "adam_weight_decay": (Adam, "Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    "adamw": (AdamW, "AdamW", dict(lr=0.01)),
    "adamw_weight_decay": (AdamW, "AdamW", dict(lr=0.01, eps=1e-6, weight_decay=0.3)),
}


def _params(rng, dtype):
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def _grads(rng, dtype, scale=1.0):
    return {k: (rng.standard_normal(s) * scale).astype(dtype) for k, s in SHAPES.items()}


def _torch_run(torch_name, kwargs, params):
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = getattr(torch.optim, torch_name)(list(tparams.values()), **kwargs)

    def step(grads):
        for k, g in grads.items():
            tparams[k].grad = torch.from_numpy(g.copy())
        opt.step()
        return {k: t.detach().numpy() for k, t in tparams.items()}
    return step, opt


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torch_step_by_step(rng, case, dtype, rtol):
    cls, torch_name, kwargs = CASES[case]
    params = _params(rng, dtype)
    torch_step, _ = _torch_run(torch_name, kwargs, params)
    opt = cls(**kwargs)
    for i in range(5):
        grads = _grads(rng, dtype)
        info = opt.step((k, params[k], grads[k]) for k in params)
        expected = torch_step(grads)
        assert info["lr"] == kwargs["lr"]
        for k in params:
            assert params[k].dtype == dtype
            assert_close(params[k], expected[k], rtol, f"{case} step {i} {k}")
    assert opt.steps == 5


def test_grad_is_not_modified_without_clipping(rng):
    params, grads = _params(rng, np.float64), _grads(rng, np.float64)
    before = {k: g.copy() for k, g in grads.items()}
    opt = SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    for _ in range(2):
        opt.step((k, params[k], grads[k]) for k in params)
    for k in grads:
        np.testing.assert_array_equal(grads[k], before[k])


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-6)])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(rng, dtype, rtol, max_norm):
    grads = list(_grads(rng, dtype, scale=2.0).values())
    tgrads = [torch.from_numpy(g.copy()) for g in grads]
    tparams = [torch.zeros(g.shape, dtype=g.dtype, requires_grad=True) for g in tgrads]
    for p, g in zip(tparams, tgrads):
        p.grad = g
    expected_norm = float(torch.nn.utils.clip_grad_norm_(tparams, max_norm))
    norm = clip_grad_norm(grads, max_norm)
    assert isinstance(norm, float)
    assert abs(norm - expected_norm) <= rtol * expected_norm
    for g, p in zip(grads, tparams):
        assert g.dtype == dtype
        assert_close(g, p.grad.numpy(), rtol, "clipped grad")
    clipped = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    assert clipped <= max_norm * (1 + 1e-6) if max_norm < norm else clipped == pytest.approx(norm)


@pytest.mark.parametrize("clip", [0.3, 1e3])
def test_clip_norm_in_step_clips_then_updates(rng, clip):
    params = _params(rng, np.float64)
    torch_step, opt_t = _torch_run("SGD", dict(lr=0.1, momentum=0.9), params)
    opt = SGD(0.1, momentum=0.9, clip_norm=clip)
    for i in range(3):
        grads = _grads(rng, np.float64)
        tparams = opt_t.param_groups[0]["params"]
        for t, g in zip(tparams, grads.values()):
            t.grad = torch.from_numpy(g.copy())
        expected_norm = float(torch.nn.utils.clip_grad_norm_(tparams, clip))
        opt_t.step()
        info = opt.step((k, params[k], grads[k]) for k in params)
        assert abs(info["grad_norm"] - expected_norm) <= 1e-12 * expected_norm
        for k, t in zip(params, tparams):
            assert_close(params[k], t.detach().numpy(), 1e-12, f"step {i} {k}")
            assert_close(grads[k], t.grad.numpy(), 1e-12, f"clipped grad {k}")


def test_cosine_schedule_values():
    total, warmup, lo = 20, 4, 0.1
    f = cosine(total, warmup_steps=warmup, min_factor=lo)

    def decay(step):
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    assert f(0) == pytest.approx(1 / warmup)
    assert f(1) == pytest.approx(2 / warmup)
    assert f(warmup - 1) == pytest.approx(1.0)
    assert f(warmup) == pytest.approx(1.0)
    middle = (warmup + total) // 2
    assert f(middle) == pytest.approx(decay(middle))
    assert f(middle) == pytest.approx((1 + lo) / 2)
    assert f(total - 1) == pytest.approx(decay(total - 1))
    assert f(total) == pytest.approx(lo) and f(total + 7) == pytest.approx(lo)
    assert cosine(10)(0) == 1.0 and cosine(10)(10) == 0.0
    assert constant()(123) == 1.0
    assert "cosine(total_steps=20" in repr(f)


def test_step_decay_matches_torch_step_lr():
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.2)
    f = step_decay(3, gamma=0.2)
    for step in range(10):
        assert 0.5 * f(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    assert repr(f) == "step_decay(every=3, gamma=0.2)"


def test_lr_schedule_applies_to_the_update(rng):
    params = _params(rng, np.float64)
    torch_step, opt_t = _torch_run("SGD", dict(lr=0.1, momentum=0.9), params)
    sched = torch.optim.lr_scheduler.StepLR(opt_t, step_size=2, gamma=0.5)
    opt = SGD(0.1, momentum=0.9, lr_schedule=step_decay(2, gamma=0.5))
    for i in range(5):
        assert opt.current_lr() == pytest.approx(0.1 * 0.5 ** (i // 2))
        grads = _grads(rng, np.float64)
        info = opt.step((k, params[k], grads[k]) for k in params)
        expected = torch_step(grads)
        sched.step()
        assert info["lr"] == pytest.approx(0.1 * 0.5 ** (i // 2))
        for k in params:
            assert_close(params[k], expected[k], 1e-12, f"step {i} {k}")


@pytest.mark.parametrize("case", ["sgd_momentum", "adam_weight_decay", "adamw"])
def test_state_dict_round_trip(rng, case):
    cls, _, kwargs = CASES[case]
    kwargs = dict(kwargs, lr_schedule=step_decay(2, gamma=0.5))  # steps must come back too
    params = _params(rng, np.float64)
    a = cls(**kwargs)
    for _ in range(3):
        grads = _grads(rng, np.float64)
        a.step((k, params[k], grads[k]) for k in params)
    sd = a.state_dict()
    json.dumps(sd["config"])
    assert sd["type"] == cls.__name__ and sd["steps"] == 3
    b = cls(**kwargs)
    b.load_state_dict(sd)
    params_b = {k: v.copy() for k, v in params.items()}
    saved = {k: v.copy() for k, v in sd["state"].items()}
    for _ in range(2):
        grads = _grads(rng, np.float64)
        a.step((k, params[k], grads[k].copy()) for k in params)
        b.step((k, params_b[k], grads[k].copy()) for k in params)
        for k in params:
            np.testing.assert_array_equal(params_b[k], params[k])
    for k in saved:  # the state dict held copies, and so did b
        np.testing.assert_array_equal(sd["state"][k], saved[k])


def test_float32_params_stay_float32_with_float64_grads(rng):
    params = _params(rng, np.float32)
    opt = Adam(0.01, weight_decay=0.1)
    grads = _grads(rng, np.float64)
    opt.step((k, params[k], grads[k]) for k in params)
    assert all(p.dtype == np.float32 for p in params.values())
    assert all(v.dtype == np.float32 for s in opt.state.values()
               for v in (s["exp_avg"], s["exp_avg_sq"]))


def test_get_optimizer():
    assert isinstance(get_optimizer("SGD", lr=0.1), SGD)
    assert type(get_optimizer("adam")) is Adam
    opt = get_optimizer("AdamW", lr=0.1, weight_decay=0.0)
    assert type(opt) is AdamW and opt.lr == 0.1 and opt.weight_decay == 0.0
    assert get_optimizer(opt) is opt
    with pytest.raises(ValueError, match="adamw"):
        get_optimizer("nope")
    with pytest.raises(ValueError):
        get_optimizer(3)
    with pytest.raises(ValueError, match="keyword"):
        get_optimizer(opt, lr=1.0)


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), float("inf")])
def test_bad_lr(lr):
    with pytest.raises(ValueError, match="lr: expected a number > 0"):
        SGD(lr)
    with pytest.raises(ValueError, match="lr"):
        Adam(lr)


def test_bad_hyper_parameters():
    with pytest.raises(TypeError, match="lr"):
        SGD("0.1")
    for betas in [(0.9,), (1.0, 0.999), (0.9, -0.1), 0.9]:
        with pytest.raises((ValueError, TypeError), match="betas"):
            Adam(betas=betas)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(0.1, nesterov=True)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="eps"):
        Adam(eps=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        AdamW(weight_decay=-0.1)
    with pytest.raises(ValueError, match="clip_norm"):
        SGD(0.1, clip_norm=0)
    with pytest.raises(TypeError, match="lr_schedule"):
        SGD(0.1, lr_schedule=0.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        cosine(10, warmup_steps=10)
    with pytest.raises(ValueError, match="total_steps"):
        cosine(0)
    with pytest.raises(ValueError, match="gamma"):
        step_decay(3, gamma=0)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm([np.ones(3)], -1.0)


def test_load_state_dict_of_the_wrong_type(rng):
    sgd = SGD(0.1, momentum=0.9)
    p, g = rng.standard_normal(3), rng.standard_normal(3)
    sgd.step([("w", p, g)])
    adam = Adam()
    with pytest.raises(ValueError, match="Adam.*SGD"):
        adam.load_state_dict(sgd.state_dict())
    assert adam.steps == 0 and adam.state == {}


def test_bad_triples_change_nothing(rng):
    params, grads = _params(rng, np.float64), _grads(rng, np.float64)
    before = {k: v.copy() for k, v in params.items()}
    grads_before = {k: v.copy() for k, v in grads.items()}
    opt = SGD(0.1, momentum=0.9, clip_norm=0.1)
    bad_grad = dict(grads, **{"lstm/bias_ih_l0": np.ones(7)})
    with pytest.raises(ValueError, match="shape"):
        opt.step((k, params[k], bad_grad[k]) for k in params)
    with pytest.raises(TypeError, match="float32 or float64"):
        opt.step([*((k, params[k], grads[k]) for k in params), ("n", np.arange(3), np.ones(3))])
    with pytest.raises(ValueError, match="twice"):
        opt.step([("w", params["lstm/bias_ih_l0"], grads["lstm/bias_ih_l0"])] * 2)
    with pytest.raises(ValueError, match="lr_schedule"):
        SGD(0.1, lr_schedule=lambda s: -1.0).step([("w", np.ones(2), np.ones(2))])
    assert opt.steps == 0 and opt.state == {}
    for k in params:  # clipping (to 0.1, so it would have scaled) comes after the checks
        np.testing.assert_array_equal(params[k], before[k])
        np.testing.assert_array_equal(grads[k], grads_before[k])
