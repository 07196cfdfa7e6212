"""The argument checks of every public entry, in one place, and the memory a process
may still take.

One rule throughout, as NumPy's and torch's: a value of the wrong type (a string
where a number goes, a float where an integer goes, a bool where a number goes)
is a TypeError; a value of the right type outside what is allowed (a negative
size, a probability of 1, an unknown name) is a ValueError. Each message names
the argument, says what was expected and shows what came.
"""
import numbers
import time

import numpy as np

from . import dispatch
from .kernels.gates import ACTIVATIONS, user_activation

DTYPES = (np.float32, np.float64)


def check_int(value, name, minimum):
    """value as an int when it is an integer (not a bool) >= minimum; TypeError or
    ValueError saying what was expected and what came."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_bool(value, name):
    """value as a bool when it is one (Python's or NumPy's); TypeError else (a string
    such as "False" is true to Python, which is never what was meant)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_seed(seed, name="seed"):
    """None, or an integer >= 0 (what NumPy's generators take); TypeError/ValueError
    naming the argument else. A SeedSequence passes as it is."""
    if seed is None or isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name}: expected None or an integer >= 0, got {seed!r}")
    if seed < 0:
        raise ValueError(f"{name}: expected None or an integer >= 0, got {seed}")
    return int(seed)


def check_finite_params(params, who):
    """Refuse parameters with NaN or inf (they would poison every output)."""
    bad = [k for k, v in params.items() if not np.isfinite(v).all()]
    if bad:
        raise ValueError(f"{who}: parameters with NaN or inf values: {', '.join(bad[:4])}")


def check_dtype(dtype):
    try:
        got = None if dtype is None else np.dtype(dtype)
    except TypeError:
        got = None
    if got is None or got not in [np.dtype(d) for d in DTYPES]:
        raise TypeError(f"dtype: expected float32 or float64, got "
                        f"{got.name if got is not None else repr(dtype)}")
    return got


def check_probability(p, what):
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{what}: expected a number in [0, 1), got {type(p).__name__}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{what}: expected a probability in [0, 1), got {p}")
    return float(p)


def check_clip(value, name):
    """None, or a finite number > 0 as a float (cell_clip, gate_clip)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected None or a finite number > 0, got {value!r}")
    if not 0 < value < np.inf:
        raise ValueError(f"{name}: expected None or a finite number > 0, got {value!r}")
    return float(value)


def check_zoneout(value):
    """zoneout: a rate in [0, 1) for both c and h, or a pair (c's, h's)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"zoneout: expected a rate or a pair (cell, hidden), got "
                             f"{len(value)} values")
        pair = tuple(check_probability(v, "zoneout") for v in value)
        return (pair if pair[0] != pair[1] else pair[0]) if any(pair) else 0.0
    return check_probability(value, "zoneout")


def check_activation(value, name):
    """A name of ACTIVATIONS, or a user's pair (f, df) as compiled functions."""
    if isinstance(value, str):
        if value not in ACTIVATIONS:
            raise ValueError(f"{name}: expected one of {sorted(ACTIVATIONS)} or a pair of "
                             f"functions (f, df), got {value!r}")
        return value
    if not (isinstance(value, (tuple, list)) and len(value) == 2
            and all(callable(f) for f in value)):
        raise TypeError(f"{name}: expected one of {sorted(ACTIVATIONS)} or a pair of "
                        f"functions (f, df_from_output), got {value!r}")
    try:  # compiled now, so that a function Numba cannot compile fails here
        return user_activation(*value)
    except Exception as err:
        raise TypeError(f"{name}: Numba could not compile the pair of functions for "
                        f"float32 and float64 ({type(err).__name__}: {err})") from None


def as_numeric(value, what):
    """value as a NumPy array (no copy when it already is one), refusing non-numbers;
    device arrays (and torch CUDA tensors) are returned as they are."""
    if hasattr(value, "detach"):  # torch tensor, without importing torch
        value = value.detach()
        if not getattr(value, "is_cuda", False):
            value = value.cpu().numpy()
    if dispatch.is_device_array(value):
        return value
    try:
        arr = np.asarray(value)
    except ValueError as err:  # ragged nested lists
        raise ValueError(f"{what}: expected a rectangular array, got nested sequences of "
                         f"different lengths ({err})") from None
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{what}: expected a real numeric array, got dtype {arr.dtype}")
    return arr


def as_floats(x, what, dtype, features=None):
    """x as a C-contiguous array of dtype whose last axis has `features` entries."""
    arr = as_numeric(x, what)
    if features is not None and (arr.ndim < 2 or arr.shape[-1] != features):
        raise ValueError(f"{what}: expected [..., {features}] ({features} features on the "
                         f"last axis, a batch axis first), got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype)


def shape_str(shape):
    """A shape for a message, None for an unknown size: (None, 10, 8)."""
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


_MEMORY_READ_EVERY = 1.0  # seconds: reading the files took 0.3 ms, 2% of a small step
_memory_read = [-np.inf, None]  # (when, what) of the last reading


def available_memory():
    """Bytes this process can still allocate, as far as Linux says: MemAvailable of
    /proc/meminfo, lowered by a cgroup (container) limit where there is one; None
    where neither can be read (other systems: no check is made). Read at most once
    a second; calls in between get the last reading."""
    now = time.monotonic()
    if now - _memory_read[0] >= _MEMORY_READ_EVERY:
        _memory_read[:] = now, _read_available_memory()
    return _memory_read[1]


def _read_available_memory():
    known = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    known.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        cap, used = _read_int(limit), _read_int(usage)
        if cap is not None and used is not None and cap < 1 << 60:  # "max": no limit
            known.append(max(cap - used, 0))
    return min(known) if known else None


def gib(n):
    return f"{n / 2 ** 30:,.1f} GiB" if n >= 2 ** 28 else f"{n / 2 ** 20:,.1f} MiB"
