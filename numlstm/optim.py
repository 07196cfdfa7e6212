"""Optimizers, gradient clipping and learning-rate schedules.

An optimizer updates parameters in place. Each update is given an iterable of
(key, param, grad) triples: `key` a unique str ("lstm/weight_hh_l0"), `param` a
writable float32 or float64 ndarray of any shape, `grad` a float ndarray of the
same shape. The arithmetic runs in the param's dtype (float32 stays float32) and
per-parameter state (momentum buffers, Adam moments) is kept under `key`.

    SGD, Adam, AdamW        torch.optim's update rules
    get_optimizer(name)     "sgd" | "adam" | "adamw" -> an instance
    clip_grad_norm          torch.nn.utils.clip_grad_norm_
    constant, cosine, step_decay
                            schedules: callables step -> factor of the base lr

Every hyper-parameter is checked when the optimizer is built, and every triple
before an update touches anything, so a failed call leaves params and state as
they were (gradients included: clipping comes after the checks).
"""
import math
import numbers

import numpy as np

from .validation import check_int
from .kernels.cpu import optim as _kernels

_PARAM_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _real(name, value, expected, ok):
    """value as a float when it is a finite real number for which ok(value) holds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {expected}, got {value!r}")
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return float(value)


def _float_array(name, value):
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        got = f"dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
        raise TypeError(f"{name}: expected a float ndarray, got {got}")
    return value


class NonFiniteError(RuntimeError):
    """A NaN or infinite loss or gradient: the update was not made."""


def _global_norm(grads):
    # float64 accumulation: a float32 sum of squares loses digits on big arrays.
    return math.sqrt(sum(_kernels.sum_of_squares(g) if g.flags.c_contiguous else
                         float(np.square(g, dtype=np.float64).sum()) for g in grads))


def clip_grad_norm(grads, max_norm):
    """Scale `grads` in place so that their global L2 norm is at most `max_norm`.

    As torch.nn.utils.clip_grad_norm_: the norm is taken over all arrays together
    (as if concatenated), and when it exceeds max_norm every array is multiplied by
    max_norm / (norm + 1e-6). Returns the norm before clipping, computed in float64.
    """
    max_norm = _real("max_norm", max_norm, "a number > 0", lambda v: v > 0)
    grads = [_float_array("grads", g) for g in grads]
    total = _global_norm(grads)
    _scale_to(grads, max_norm, total)
    return total


def _scale_to(grads, max_norm, total):
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            np.multiply(g, coef, out=g)


class Optimizer:
    """Base class: learning rate, schedule, clipping, step counting and state.

    lr           the base learning rate; an update uses lr * lr_schedule(steps)
    lr_schedule  None (constant) or a callable step -> factor, where step is the
                 number of updates already done (0 for the first)
    clip_norm    None or a number > 0: before an update the gradients are clipped
                 to this global L2 norm, in place, as clip_grad_norm does
    steps        the number of updates done

    A subclass lists its state slots in `_slots` and implements
    `_update(param, grad, state, lr)`, where `state` is that key's dict of slots.
    """
    _slots = ()

    def __init__(self, lr, lr_schedule=None, clip_norm=None):
        self.lr = _real("lr", lr, "a number > 0", lambda v: v > 0)
        if lr_schedule is not None and not callable(lr_schedule):
            raise TypeError(f"lr_schedule: expected None or a callable step -> factor, "
                            f"got {lr_schedule!r}")
        self.lr_schedule = lr_schedule
        self.clip_norm = None if clip_norm is None else \
            _real("clip_norm", clip_norm, "None or a number > 0", lambda v: v > 0)
        self.steps = 0
        self.state = {}

    def _config(self):
        """The subclass's hyper-parameters, JSON-serialisable."""
        return {}

    def _full_config(self):
        return {"lr": self.lr, **self._config(), "clip_norm": self.clip_norm}

    def _update(self, param, grad, state, lr):
        raise NotImplementedError

    def current_lr(self):
        """The learning rate the next update will use: lr * lr_schedule(steps)."""
        if self.lr_schedule is None:
            return self.lr
        factor = self.lr_schedule(self.steps)
        return self.lr * _real(f"lr_schedule({self.steps})", factor,
                               "a finite number >= 0", lambda v: v >= 0)

    def _check(self, triples):
        items, seen = [], set()
        for triple in triples:
            if not isinstance(triple, (tuple, list)) or len(triple) != 3:
                raise TypeError(f"step: expected (key, param, grad) triples, "
                                f"got {type(triple).__name__}")
            key, param, grad = triple
            if not isinstance(key, str):
                raise TypeError(f"step: expected a str key, got {key!r}")
            if key in seen:
                raise ValueError(f"step: key {key!r} appears twice")
            seen.add(key)
            if not isinstance(param, np.ndarray) or param.dtype not in _PARAM_DTYPES:
                got = f"dtype {param.dtype}" if isinstance(param, np.ndarray) \
                    else type(param).__name__
                raise TypeError(f"{key}: expected a float32 or float64 ndarray param, got {got}")
            if not param.flags.writeable:
                raise ValueError(f"{key}: the param is read-only; it is updated in place")
            _float_array(f"{key} grad", grad)
            if grad.shape != param.shape:
                raise ValueError(f"{key}: grad shape {grad.shape} != param shape {param.shape}")
            if self.clip_norm is not None and not grad.flags.writeable:
                raise ValueError(f"{key}: the grad is read-only; clipping scales it in place")
            for slot, buf in self.state.get(key, {}).items():
                if buf.ndim and buf.shape != param.shape:
                    raise ValueError(f"{key}: state {slot!r} has shape {buf.shape}, "
                                     f"the param {param.shape}")
            items.append((key, param, grad))
        return items

    def step(self, triples):
        """One update of every param in `triples`; returns {"lr": the learning rate
        used, "grad_norm": the global L2 norm of the grads before clipping}.

        A NaN or infinite gradient raises NonFiniteError before anything changes
        (params, state, grads and `steps` stay as they were)."""
        items = self._check(triples)
        lr = self.current_lr()
        grads = [g for _, _, g in items]
        norm = _global_norm(grads)
        if not math.isfinite(norm):
            bad = next(k for k, _, g in items if not np.isfinite(g).all())
            raise NonFiniteError(f"update {self.steps + 1}: the gradient of {bad} is not "
                                 "finite (NaN or inf); no parameter was changed")
        if self.clip_norm is not None:
            _scale_to(grads, self.clip_norm, norm)
        for key, param, grad in items:
            state = self.state.setdefault(key, {})
            for slot, buf in state.items():
                if buf.ndim and buf.dtype != param.dtype:  # a state loaded from another dtype
                    state[slot] = buf.astype(param.dtype)
            self._update(param, grad.astype(param.dtype, copy=False), state, lr)
        self.steps += 1
        return {"lr": lr, "grad_norm": norm}

    def state_dict(self):
        """{"type", "config" (hyper-parameters, not the schedule), "steps",
        "state": {f"{key}/{slot}": a copy of the array}}."""
        state = {f"{key}/{slot}": buf.copy()
                 for key, slots in self.state.items() for slot, buf in slots.items()}
        return {"type": type(self).__name__, "config": self._full_config(), "steps": self.steps,
                "state": state}

    def load_state_dict(self, sd):
        """Restore `steps` and the per-parameter state (as copies) from state_dict()'s
        output of the same optimizer class. The hyper-parameters stay the
        constructor's: `config` is there to read, not loaded."""
        if not isinstance(sd, dict):
            raise TypeError(f"load_state_dict: expected a dict, got {type(sd).__name__}")
        name = type(self).__name__
        if sd.get("type") != name:
            raise ValueError(f"load_state_dict: expected the state of a {name}, "
                             f"got type {sd.get('type')!r}")
        steps = check_int(sd.get("steps"), "load_state_dict steps", 0)
        if not isinstance(sd.get("state"), dict):
            raise TypeError("load_state_dict: expected 'state' to be a dict of arrays")
        state = {}
        for full, buf in sd["state"].items():
            key, _, slot = str(full).rpartition("/")
            if not key or slot not in self._slots:
                raise ValueError(f"load_state_dict: expected names 'key/slot' with slot in "
                                 f"{list(self._slots)}, got {full!r}")
            arr = np.array(buf, copy=True)
            counter = slot == "step"  # Adam's per-parameter update count, a 0-d integer
            if (counter and (arr.ndim or arr.dtype.kind not in "iu")) or \
                    (not counter and (arr.ndim == 0 or arr.dtype not in _PARAM_DTYPES)):
                raise ValueError(f"load_state_dict: {full!r}: expected "
                                 + ("a 0-d integer" if counter else
                                    "a float32 or float64 array of the parameter's shape")
                                 + f", got {arr.dtype} of shape {arr.shape}")
            state.setdefault(key, {})[slot] = arr
        for key, slots in state.items():
            if len(slots) != len(self._slots):
                raise ValueError(f"load_state_dict: {key!r} has slots {sorted(slots)}, "
                                 f"expected {list(self._slots)}")
        self.steps, self.state = steps, state

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._full_config().items())
        sched = "" if self.lr_schedule is None else f", lr_schedule={self.lr_schedule!r}"
        return f"{type(self).__name__}({args}{sched})"


class SGD(Optimizer):
    """Stochastic gradient descent, torch.optim.SGD's rule:

        g = grad + weight_decay * param
        buf = g (first update) or momentum * buf + (1 - dampening) * g
        g = g + momentum * buf (nesterov) or buf (momentum > 0)
        param -= lr * g

    nesterov needs momentum > 0 and dampening 0.
    """
    _slots = ("momentum_buffer",)

    def __init__(self, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
                 lr_schedule=None, clip_norm=None):
        super().__init__(lr, lr_schedule, clip_norm)
        self.momentum = _real("momentum", momentum, "a number in [0, 1)",
                              lambda v: 0 <= v < 1)
        self.dampening = _real("dampening", dampening, "a number in [0, 1]",
                               lambda v: 0 <= v <= 1)
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov: expected a bool, got {nesterov!r}")
        if nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError(f"nesterov: expected momentum > 0 and dampening 0, got "
                             f"momentum={momentum!r}, dampening={dampening!r}")
        self.nesterov = nesterov
        self.weight_decay = _real("weight_decay", weight_decay, "a number >= 0",
                                  lambda v: v >= 0)

    def _config(self):
        return {"momentum": self.momentum, "dampening": self.dampening,
                "nesterov": self.nesterov, "weight_decay": self.weight_decay}

    def _update(self, param, grad, state, lr):
        g = grad
        if self.weight_decay:
            g = param * self.weight_decay
            g += grad
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= self.momentum
                buf += g if self.dampening == 0 else (1 - self.dampening) * g
            # g may be the caller's grad: nesterov needs a new array, not g +=.
            g = g + self.momentum * buf if self.nesterov else buf
        param -= lr * g


class Adam(Optimizer):
    """Adam, torch.optim.Adam's rule (amsgrad=False). Per param, at its t-th update:

        g = grad + weight_decay * param           (L2 penalty added to the gradient)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        param -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    t counts the updates of that param (it is state slot "step"), as torch does.
    """
    _slots = ("step", "exp_avg", "exp_avg_sq")
    _decoupled = False

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 lr_schedule=None, clip_norm=None):
        super().__init__(lr, lr_schedule, clip_norm)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas: expected a pair of numbers in [0, 1), got {betas!r}")
        self.betas = tuple(_real(f"betas[{i}]", b, "a number in [0, 1)", lambda v: 0 <= v < 1)
                           for i, b in enumerate(betas))
        # (eps = 0 divides 0 by 0 for a parameter whose gradients were all zero)
        self.eps = _real("eps", eps, "a number > 0", lambda v: v > 0)
        self.weight_decay = _real("weight_decay", weight_decay, "a number >= 0",
                                  lambda v: v >= 0)

    def _config(self):
        return {"betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def _update(self, param, grad, state, lr):
        beta1, beta2 = self.betas
        if "step" not in state:
            state["step"] = np.zeros((), np.int64)
            state["exp_avg"] = np.zeros_like(param)
            state["exp_avg_sq"] = np.zeros_like(param)
        state["step"] += 1
        t, m, v = int(state["step"]), state["exp_avg"], state["exp_avg_sq"]
        if all(a.flags.c_contiguous for a in (param, grad, m, v)):  # one compiled pass
            _kernels.adam_update(param, grad, m, v, beta1, beta2, self.eps, lr, t,
                                 self.weight_decay, self._decoupled)
            return
        g = grad  # (NumPy, the same operations, for arrays with strides)
        if self.weight_decay and self._decoupled:
            param *= 1 - lr * self.weight_decay
        elif self.weight_decay:
            g = param * self.weight_decay
            g += grad
        m += (g - m) * (1 - beta1)  # torch's lerp_(g, 1 - beta1)
        v *= beta2
        v += (g * g) * (1 - beta2)
        denom = np.sqrt(v)
        denom /= math.sqrt(1 - beta2 ** t)
        denom += self.eps
        upd = np.divide(m, denom, out=denom)
        upd *= lr / (1 - beta1 ** t)
        param -= upd


class AdamW(Adam):
    """AdamW, torch.optim.AdamW's rule: Adam without the L2 term in the gradient,
    and decoupled weight decay first, param *= 1 - lr * weight_decay."""
    _decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 lr_schedule=None, clip_norm=None):
        super().__init__(lr, betas, eps, weight_decay, lr_schedule, clip_norm)


_OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def get_optimizer(name_or_obj, **kwargs):
    """An optimizer by name ("sgd" | "adam" | "adamw", any case) built with kwargs,
    or an Optimizer instance unchanged (then kwargs must be empty)."""
    if isinstance(name_or_obj, Optimizer):
        if kwargs:
            raise ValueError(f"get_optimizer: expected no keyword arguments with an "
                             f"optimizer instance, got {sorted(kwargs)}")
        return name_or_obj
    cls = _OPTIMIZERS.get(name_or_obj.lower()) if isinstance(name_or_obj, str) else None
    if cls is None:
        raise ValueError(f"get_optimizer: expected one of {sorted(_OPTIMIZERS)} or an "
                         f"Optimizer, got {name_or_obj!r}")
    return cls(**kwargs)


# Schedules: a factor of the base learning rate for the update at `step`, the
# number of updates already done.

def _step(step):
    return check_int(step, "step", 0)


class constant:
    """Factor 1 at every step."""

    def __call__(self, step):
        _step(step)
        return 1.0

    def __repr__(self):
        return "constant()"


class cosine:
    """Linear warmup, then cosine decay to min_factor:

        step < warmup_steps:   (step + 1) / warmup_steps
        step < total_steps:    min_factor + (1 - min_factor) * (1 + cos(pi * p)) / 2,
                               p = (step - warmup_steps) / (total_steps - warmup_steps)
        after:                 min_factor
    """

    def __init__(self, total_steps, warmup_steps=0, min_factor=0.0):
        self.total_steps = check_int(total_steps, "total_steps", 1)
        self.warmup_steps = check_int(warmup_steps, "warmup_steps", 0)
        if self.warmup_steps >= self.total_steps:
            raise ValueError(f"warmup_steps: expected fewer than total_steps="
                             f"{total_steps}, got {warmup_steps!r}")
        self.min_factor = _real("min_factor", min_factor, "a number in [0, 1]",
                                lambda v: 0 <= v <= 1)

    def __call__(self, step):
        step = _step(step)
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if step >= self.total_steps:
            return self.min_factor
        p = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * p))

    def __repr__(self):
        return (f"cosine(total_steps={self.total_steps}, warmup_steps={self.warmup_steps}, "
                f"min_factor={self.min_factor!r})")


class step_decay:
    """Factor gamma ** (step // every), as torch.optim.lr_scheduler.StepLR."""

    def __init__(self, every, gamma=0.1):
        self.every = check_int(every, "every", 1)
        self.gamma = _real("gamma", gamma, "a number > 0", lambda v: v > 0)

    def __call__(self, step):
        return self.gamma ** (_step(step) // self.every)

    def __repr__(self):
        return f"step_decay(every={self.every}, gamma={self.gamma!r})"
