"""The arithmetic of numlstm, installed as numlstm.kernels.

reference.py  NumPy forward/backward of every cell: the oracle (no kernel imports it)
gates.py      scalar gate math shared by the CPU and CUDA kernels
table.py      CellKernels, the row type of each backend's table of kernels
harness.py    checks every kernel variant against reference.py, then times it
              (python -m numlstm.kernels.harness)
cpu/          @njit kernels; KERNELS, the CPU table
cuda/         @cuda.jit kernels; KERNELS, the CUDA table

Nothing here imports numlstm: the arrow points one way, numlstm -> kernels.

Importing this package sets Numba's CPU target up for the kernels first
(_prefer_512_bit_vectors), since Numba fixes it when the first function is decorated.
"""
import os
import warnings

import numba
import numba.core.registry


def _prefer_512_bit_vectors():
    """On AVX-512 hosts, add "-prefer-256-bit" to Numba's CPU features, so that LLVM
    vectorises the kernels' loops 512 bits wide. Intel's server CPUs (Ice Lake,
    Sapphire and Emerald Rapids) are tuned to prefer 256-bit vectors: there the
    gate loops ran 8 floats wide, not 16 (the register tiles of the products,
    written as 16-lane vectors in cpu/microkernel.py, are 512 bits either way).
    Measured on one Emerald Rapids core, a step's gate math, best of 5 x 2,000:
    B=1, H=1024 4.1 -> 3.2 ns a unit; B=8, H=256 4.2 -> 3.3 ns.

    Numba fixes its target when the first function is decorated, so this runs
    here, before any kernel module is imported (gates.py decorates at import).
    The user's NUMBA_CPU_FEATURES is left alone. If other code decorated a function
    with Numba before numlstm was imported, the setting comes too late: the kernels
    stay correct but slower, and a warning says so."""
    if "NUMBA_CPU_FEATURES" in os.environ or numba.config.CPU_FEATURES is not None:
        return
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features().flatten()
    if "+avx512f" not in features.split(","):
        return
    if "_toplevel_target_context" in vars(numba.core.registry.cpu_target):
        warnings.warn("Numba's CPU target was set up (a function decorated) before "
                      "numlstm was imported, so numlstm's kernels use 256-bit vectors "
                      "on this AVX-512 machine and run slower: import numlstm first, or "
                      "set NUMBA_CPU_FEATURES to the host's features with "
                      "-prefer-256-bit",
                      RuntimeWarning, stacklevel=2)
        return
    numba.config.CPU_FEATURES = features + ",-prefer-256-bit"


_prefer_512_bit_vectors()
