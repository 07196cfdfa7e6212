"""The compile options of the CPU kernels (numba.njit's keywords).

cache=True: a second process loads the compiled kernels instead of compiling
them again. error_model="numpy": a division by zero gives inf or NaN, with no
check in the loops. fastmath lets LLVM contract a multiply and an add into one
FMA, use reciprocals, and ignore the sign of zero; not "nnan" or "ninf": a NaN in
must come out as a NaN, not as whatever a clamp makes of it.

BORROW adds _nrt=False (microkernel.py's tiles and threads.py's gate helpers set it
beside their own options), for the kernels that only borrow their caller's arrays
(no allocation, no array returned, no stack arrays): Numba then emits no
reference counting in them. Otherwise every call of a compiled function, and
every view it takes, increments and decrements its arrays' reference counts,
atomic operations on the arrays' shared headers: a step's product and gate math
made some 20 of them per row tile and block, and in a parallel region both
threads' calls hit the same counters, so the step loops moved those cache lines
between the cores at every step. The callers (which allocate, or are called from
Python) keep the default, and hold the references while the kernels run.
Measured on one Emerald Rapids core, the gate math of one step (fwd_pointwise),
best of 10 x 2,000 calls: B=1, H=64 423 -> 277 ns; B=4, H=64 1068 -> 775 ns. On
two, T=200, B=8, I=40, H=96 inference (the rows split, both threads calling the
product and gate math on the same arrays every step), median of 8 processes
alternating with the code before (commit 8783be6, which also lacked the 512-bit
vectors of kernels/__init__.py): 1.95 -> 1.72 ms. A BORROW kernel may call only kernels that need no NRT
either (Numba compiles its callees without it: a stack array, numba.carray, is
refused).
"""
FAST = dict(cache=True, error_model="numpy", fastmath={"contract", "arcp", "nsz"})
BORROW = dict(FAST, _nrt=False)
