"""The arithmetic of numlstm, installed as numlstm.kernels.

reference.py  NumPy forward/backward of every cell: the oracle
gates.py      scalar gate math shared by the CPU and CUDA kernels
cpu/          @njit kernels, one file per cell

Nothing here imports numlstm: the arrow points one way, numlstm -> kernels.
"""
