"""Argument checks shared by the layers and the optimizers, and the memory a
process may still take."""
import numbers
import time

import numpy as np


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
