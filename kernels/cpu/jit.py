"""The compile options of the CPU kernels (numba.njit's keywords).

cache=True: a second process loads the compiled kernels instead of compiling
them again. error_model="numpy": a division by zero gives inf or NaN, with no
check in the loops. fastmath lets LLVM contract a multiply and an add into one
FMA, use reciprocals, and ignore the sign of zero; not "nnan" or "ninf": a NaN in
must come out as a NaN, not as whatever a clamp makes of it.
"""
FAST = dict(cache=True, error_model="numpy", fastmath={"contract", "arcp", "nsz"})
