"""glibc malloc settings that let each training step reuse the memory of the last.

A training step allocates and frees the same arrays every time: the projected
inputs and gates, their gradients, logits, NumPy's temporaries, mostly 0.1 to
64 MiB each. glibc serves blocks above its mmap threshold (128 KiB at start,
raised to the size of the largest block freed, at most 32 MiB) with fresh
mmap'ed pages, and hands the top of its heap back to the kernel once more than
the trim threshold (twice the mmap threshold) is free there. Either way the
next step faults its pages in again, zeroed by the kernel: about 4,000 page
faults a step for the character model (embed 32, hidden 128, batch 32, 64
steps), 6 of its 21 ms. Measured on 2 cores: that step took 14 ms with the
thresholds raised (0 faults a step), a T=64, B=32, H=128 LSTM training step 12
ms against 15, T=128, B=128, H=256 312 ms against 342.

So, on Linux with glibc, importing numlstm raises both thresholds with
mallopt(3): blocks up to MMAP_THRESHOLD come from the heap, and free memory at
its top is handed back only past trim_threshold(): a quarter of the machine's
memory, between 512 MiB and 2 GiB (mallopt takes an int). The large steps need
the high limits: at T=1024, B=128, H=256 a training step allocates about 2 GiB,
in blocks up to 512 MiB. Alternating with torch's (as the benchmark does), it
took 3.4-3.7 s with limits of 256 and 512 MiB, whose blocks were faulted in
again at every call, and 2.0 s with 1 and 2 GiB (torch's own step 2.3 -> 2.1 s).

The cost: a process keeps the memory of its largest step after the step, up to
trim_threshold() of it, as torch's and TensorFlow's caching allocators do. The
settings are the process's, so torch running in the same process gets them too
(the benchmark's comparisons stay fair). Set NUMLSTM_MALLOC_TUNING=0 before
importing numlstm to leave malloc as it is.
"""
import ctypes
import ctypes.util
import os

MMAP_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
ENV = "NUMLSTM_MALLOC_TUNING"

tuned = False  # whether tune() changed the settings in this process


def _glibc():
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # not a GNU system
        return False


def trim_threshold():
    """A quarter of the machine's memory, held to [512 MiB, 2 GiB)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = 0
    return int(min(max(total // 4, 512 << 20), 2 ** 31 - 1))


def tune():
    """Raise glibc's mmap and trim thresholds, unless NUMLSTM_MALLOC_TUNING=0 or
    the C library is not glibc; returns whether it did (also kept in `tuned`)."""
    global tuned
    if os.environ.get(ENV, "1").strip() == "0" or not _glibc():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # (mallopt returns 1 on success; the mmap threshold first, since setting it also
    # stops glibc from moving either threshold on its own)
    tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold()))
    return tuned
