"""numlstm._malloc: on glibc, importing numlstm lets freed arrays' memory be reused
instead of faulted in again (and NUMLSTM_MALLOC_TUNING=0 leaves malloc alone)."""
import os
import subprocess
import sys

import pytest

from numlstm import _malloc

pytestmark = pytest.mark.skipif(not _malloc._glibc(), reason="mallopt settings are glibc's")

# Six 1 MiB arrays alive at once, written and freed, 20 times: the pattern of a
# training step's temporaries. Prints whether numlstm tuned malloc and the page
# faults of the second round (the first may grow the heap).
_CODE = """
import resource, numpy as np, numlstm
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    f0 = faults()
    for _ in range(20):
        arrays = [np.ones(1 << 18, np.float32) for _ in range(6)]
        del arrays
print(numlstm._malloc.tuned, faults() - f0)
"""


def _run(setting):
    env = dict(os.environ, **{_malloc.ENV: setting})
    out = subprocess.run([sys.executable, "-c", _CODE], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    tuned, faults = out.stdout.split()
    return tuned == "True", int(faults)


def test_freed_memory_is_reused_without_page_faults():
    tuned, faults = _run("1")
    assert tuned
    assert faults < 200, f"{faults} page faults for 120 MiB of arrays reusing freed memory"


def test_the_setting_can_be_turned_off():
    tuned, faults = _run("0")
    assert not tuned
    # glibc's own thresholds hand the memory back after each round: about 256 faults
    # per 1 MiB array (this is what the tuning saves)
    assert faults > 5000
