"""A pytest plugin that counts the bad-input cases the tests check: every
pytest.raises(ValueError/TypeError/RuntimeError/MemoryError/...) block that runs,
and every CLI call checked for its one-line error.

    PYTHONPATH=tools python -m pytest -q -p error_case_count

prints, at the end, how many ran and of which exception types. Not a test.
"""
import collections

import pytest

_counts = collections.Counter()
_real_raises = pytest.raises


def _counting_raises(expected, *args, **kwargs):
    names = expected if isinstance(expected, tuple) else (expected,)
    _counts[" | ".join(getattr(e, "__name__", str(e)) for e in names)] += 1
    return _real_raises(expected, *args, **kwargs)


def pytest_configure(config):
    pytest.raises = _counting_raises


def pytest_runtest_call(item):
    module = item.module
    helper = getattr(module, "_one_error_line", None)
    if helper is not None and not getattr(helper, "_counted", False):
        def counted(*args, _helper=helper, **kwargs):
            _counts["CLI one-line error"] += 1
            return _helper(*args, **kwargs)
        counted._counted = True
        module._one_error_line = counted


def pytest_terminal_summary(terminalreporter):
    total = sum(_counts.values())
    terminalreporter.write_line(f"bad-input cases checked: {total}")
    for name, n in _counts.most_common():
        terminalreporter.write_line(f"  {n:5d}  {name}")
