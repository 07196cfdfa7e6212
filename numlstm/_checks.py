"""Argument checks shared by the layers and the optimizers."""
import numbers


def check_int(value, name, minimum):
    """value as an int when it is an integer (not a bool) >= minimum; TypeError or
    ValueError saying what was expected and what came."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)
