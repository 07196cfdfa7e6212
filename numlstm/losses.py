"""Losses: a scalar value and its gradient with respect to the prediction.

    MSELoss            mean squared error over all elements
    CrossEntropyLoss   softmax cross-entropy over the last axis, integer targets
    get_loss(name)     "mse" | "cross_entropy" (and aliases) -> an instance
    loss_from_config   rebuild a loss from its get_config()

Each loss offers value_and_grad(pred, target) -> (float, grad), with grad of
pred's shape and float dtype, and __call__(pred, target) -> float. Both reduce
with a mean, as torch's losses do with reduction="mean".

A mean splits over parts of a batch: terms(target) counts what the mean divides
by, and value_and_grad(part_pred, part_target, count=loss.terms(target)) gives a
part's share, so the parts' values and gradients sum to the whole batch's (how
data-parallel training, numlstm.distributed, gets one process's gradient from N).
"""
import numbers

import numpy as np

from .kernels.cpu.losses import cross_entropy_cpu


class Loss:
    """Base class: value_and_grad, __call__ (the value alone) and get_config."""

    def value_and_grad(self, pred, target, count=None):
        raise NotImplementedError

    def terms(self, target):
        """How many terms the mean over target divides by."""
        raise NotImplementedError

    def check_target(self, target, pred_shape):
        """Raise TypeError/ValueError unless target suits predictions of pred_shape
        (a model checks its data with this before any kernel runs)."""

    def __call__(self, pred, target):
        return self.value_and_grad(pred, target)[0]

    def get_config(self):
        """The constructor's arguments and the class name, JSON-serialisable."""
        return {"type": type(self).__name__}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "type")
        return f"{type(self).__name__}({args})"


def _count(count, default):
    """The divisor of a mean: default (this batch's own count) or the given count of
    the whole batch that this one is a part of."""
    if count is None:
        return default
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < default:
        raise ValueError(f"count: expected an integer >= {default} (the whole batch's "
                         f"count of terms, this part's included), got {count!r}")
    return int(count)


def _array(name, value, kinds, expected):
    arr = np.asarray(value)
    if arr.dtype.kind not in kinds:
        raise TypeError(f"{name}: expected {expected}, got dtype {arr.dtype}")
    return arr


class MSELoss(Loss):
    """Mean squared error, mean((pred - target)**2) over all elements, as torch's
    MSELoss(reduction="mean"). pred and target: real arrays of one shape, any
    shape with at least one element. The value is computed in float64; the grad,
    2 * (pred - target) / size, has pred's dtype (float64 for an integer pred).
    count: divide by this instead of size (see the module's note on parts)."""

    def terms(self, target):
        return int(np.size(target))

    def check_target(self, target, pred_shape):
        target = _array("target", target, "fiu", "a real numeric array")
        if target.shape != tuple(pred_shape):
            raise ValueError(f"target: expected pred's shape {tuple(pred_shape)}, got "
                             f"{target.shape}")
        return target

    def value_and_grad(self, pred, target, count=None):
        pred = _array("pred", pred, "fiu", "a real numeric array")
        target = self.check_target(target, pred.shape)
        if pred.size == 0:
            raise ValueError("pred: expected at least one element (the mean of none is undefined)")
        n = _count(count, pred.size)
        diff = pred.astype(np.float64) - target
        value = float(np.sum(np.square(diff)) / n)
        diff *= 2.0 / n
        dtype = pred.dtype if pred.dtype.kind == "f" else np.float64
        return value, diff.astype(dtype, copy=False)


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy from logits, as torch.nn.functional.cross_entropy with
    class indices and reduction="mean".

    pred [..., C] float logits; target [...] integers in [0, C) or ignore_index.
    The value is the mean over positions whose target is not ignore_index of
    logsumexp(pred[pos]) - pred[pos, target[pos]], after subtracting each row's
    max (so logits of any size stay finite): the exponentials in pred's dtype (as
    torch computes them; in float64 they took half of a character model's loss
    time), their sums and the mean in float64. The grad is (softmax(pred) -
    onehot(target)) / n_valid on those positions and 0 on ignored ones, in pred's
    dtype.

    When every position is ignored (or there are none) the value is 0.0 and the
    grad zero, where torch returns nan: nothing to learn from is not an error.
    count: divide by this instead of n_valid (see the module's note on parts).
    """

    def __init__(self, ignore_index=-100):
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
            raise TypeError(f"ignore_index: expected an integer, got {ignore_index!r}")
        self.ignore_index = int(ignore_index)

    def get_config(self):
        return {"type": "CrossEntropyLoss", "ignore_index": self.ignore_index}

    def check_target(self, target, pred_shape):
        pred_shape = tuple(pred_shape)
        target = _array("target", target, "iu", "integer class indices")
        if len(pred_shape) == 0 or pred_shape[-1] == 0:
            raise ValueError(f"pred: expected logits [..., C] with C >= 1, got shape "
                             f"{pred_shape}")
        if target.shape != pred_shape[:-1]:
            raise ValueError(f"target: expected shape {pred_shape[:-1]} (pred's {pred_shape} "
                             f"without the class axis), got {target.shape}")
        C = pred_shape[-1]
        t = target.reshape(-1)
        bad = (t != self.ignore_index) & ((t < 0) | (t >= C))
        if bad.any():
            raise ValueError(f"target: expected class indices in [0, {C}) or ignore_index="
                             f"{self.ignore_index}, got {t[bad][0]}")
        return target

    def terms(self, target):
        return int(np.count_nonzero(np.asarray(target) != self.ignore_index))

    def value_and_grad(self, pred, target, count=None):
        pred = _array("pred", pred, "f", "float logits [..., C]")
        target = self.check_target(target, pred.shape)
        C = pred.shape[-1]
        t = target.reshape(-1)
        valid = t != self.ignore_index
        rows = np.flatnonzero(valid)
        n = _count(count, rows.size)
        if rows.size == 0:
            return 0.0, np.zeros_like(pred)
        p2 = pred.reshape(-1, C)
        if p2.dtype not in (np.float32, np.float64):  # (float16: exp in float64)
            p2 = p2.astype(np.float64)
        value, grad = cross_entropy_cpu(p2, t, self.ignore_index, n)
        return value, grad.astype(pred.dtype, copy=False).reshape(pred.shape)


_LOSSES = {"mse": MSELoss, "cross_entropy": CrossEntropyLoss, "crossentropy": CrossEntropyLoss,
           "ce": CrossEntropyLoss, "sparse_categorical_crossentropy": CrossEntropyLoss}


def get_loss(name_or_obj):
    """A loss by name (any case): "mse", or "cross_entropy" (also "crossentropy",
    "ce", "sparse_categorical_crossentropy"); a Loss instance is returned as is."""
    if isinstance(name_or_obj, Loss):
        return name_or_obj
    cls = _LOSSES.get(name_or_obj.lower()) if isinstance(name_or_obj, str) else None
    if cls is None:
        raise ValueError(f"get_loss: expected one of {sorted(_LOSSES)} or a Loss, "
                         f"got {name_or_obj!r}")
    return cls()


def loss_from_config(cfg):
    """The loss that get_config() described: {"type": class name, **arguments}."""
    classes = {cls.__name__: cls for cls in (MSELoss, CrossEntropyLoss)}
    if not isinstance(cfg, dict) or cfg.get("type") not in classes:
        raise ValueError(f"loss_from_config: expected a dict with 'type' in "
                         f"{sorted(classes)}, got {cfg!r}")
    return classes[cfg["type"]](**{k: v for k, v in cfg.items() if k != "type"})
