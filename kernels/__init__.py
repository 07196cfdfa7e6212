"""The arithmetic of numlstm, installed as numlstm.kernels.

reference.py  NumPy forward/backward of every cell: the oracle (no kernel imports it)
gates.py      scalar gate math shared by the CPU and CUDA kernels
table.py      CellKernels, the row type of each backend's table of kernels
harness.py    checks every kernel variant against reference.py, then times it
              (python -m numlstm.kernels.harness)
cpu/          @njit kernels; KERNELS, the CPU table
cuda/         @cuda.jit kernels; KERNELS, the CUDA table

Nothing here imports numlstm: the arrow points one way, numlstm -> kernels.
"""
