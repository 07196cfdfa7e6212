"""The backend table: names -> Backend objects, and the choice behind "auto".

A Backend declares the kernel layout it wants and runs one layer in one
direction of any cell (spec.cell: "lstm", "gru" or "rnn"). Layers know nothing
of Numba; they ask `select` for a backend and call its methods. States are
tuples: (h, c) for the LSTM, (h,) for the GRU and the RNN.

Backend methods, for one cell (layer l, direction d) in the backend's layout:
    pack(params, spec)                      -> [cell, ...] in spec.cells() order
    forward(spec, cell, x, state0, lengths, reverse, training)
                                            -> y [T,B,H], state_n, cache (None
                                               unless training)
    backward(spec, cell, cache, dy, dstate_n)
                                            -> dx [T,B,I], dstate0, the gradients
                                               under the layer's parameter names
                                               ("weight_ih", "weight_hh", "bias_ih",
                                               "bias_hh", and "weight_hr", ...
                                               where the cell has them)
    step(spec, cell, x, state)              -> state after one inference step of
                                               x [B,I] (its h is the output)
    ops                                     the array operations the layers run
                                               on this backend's arrays (HostOps
                                               for NumPy arrays, CudaOps for
                                               device arrays)
"""
import numpy as np

from .kernels import cpu, reference
from .packing import CANONICAL_ORDER, Layout, from_canonical


def is_device_array(x):
    """Whether x lives on a GPU: anything with __cuda_array_interface__ (Numba
    device arrays, CuPy arrays, torch CUDA tensors) or a simulated device array."""
    if isinstance(x, np.ndarray):  # the common case first: step() calls this per array
        return False
    if getattr(x, "is_cuda", False):  # torch: the interface raises when grad is on
        return True
    try:
        return hasattr(x, "__cuda_array_interface__") or bool(
            getattr(x, "__cuda_ndarray__", False))
    except RuntimeError:
        return True


class HostOps:
    """The array operations layers need, on NumPy arrays."""
    on_device = False

    empty = staticmethod(np.empty)
    zeros = staticmethod(np.zeros)

    @staticmethod
    def contiguous(a, dtype):
        return np.ascontiguousarray(a, dtype)

    @staticmethod
    def swap01(a):
        """a [X,Y,F] -> a contiguous [Y,X,F]."""
        return np.ascontiguousarray(a.transpose(1, 0, 2))

    @staticmethod
    def concat(parts):
        return np.concatenate(parts, axis=-1)

    @staticmethod
    def features(a, start, stop):
        """A contiguous copy of a[..., start:stop]."""
        return np.ascontiguousarray(a[..., start:stop])

    @staticmethod
    def add(a, b):
        return a + b

    @staticmethod
    def mul(a, b):
        return a * b

    @staticmethod
    def scale(a, s):
        return a * a.dtype.type(s)

    @staticmethod
    def assign(dst, value):
        dst[...] = value

    @staticmethod
    def copy(a):
        return a.copy()

    @staticmethod
    def to_host(a):
        return a

    @staticmethod
    def from_host(a):
        return a


class CudaOps:
    """The same operations on Numba device arrays (kernels/cuda/common.py)."""
    on_device = True

    def __init__(self, common):
        self._c = common

    def empty(self, shape, dtype):
        return self._c.device_array(shape, dtype)

    def zeros(self, shape, dtype):
        return self._c.zeros(shape, dtype)

    def contiguous(self, a, dtype):
        a = self._c.as_device(a)
        if a.is_c_contiguous() and a.dtype == np.dtype(dtype):
            return a
        return self._c.copy_any(a, self._c.device_array(a.shape, dtype))

    def swap01(self, a):
        out = self._c.device_array((a.shape[1], a.shape[0], a.shape[2]), a.dtype)
        return self._c.copy3(a, out, swap=True)

    def concat(self, parts):
        shape = tuple(parts[0].shape)
        width = sum(tuple(p.shape)[-1] for p in parts)
        out = self._c.device_array(shape[:-1] + (width,), parts[0].dtype)
        start = 0
        for p in parts:
            stop = start + tuple(p.shape)[-1]
            self._c.copy_any(p, out[..., start:stop])
            start = stop
        return out

    def features(self, a, start, stop):
        out = self._c.device_array(tuple(a.shape)[:-1] + (stop - start,), a.dtype)
        return self._c.copy_any(a[..., start:stop], out)

    def add(self, a, b):
        return self._c.combine(a, b, "add")

    def mul(self, a, b):
        return self._c.combine(a, self._c.as_device(b), "mul")

    def scale(self, a, s):
        return self._c.combine(a, None, "scale", s)

    def assign(self, dst, value):
        self._c.copy_any(value, dst)

    def copy(self, a):
        return self._c.copy_any(a, self._c.device_array(a.shape, a.dtype))

    @staticmethod
    def to_host(a):
        return a.copy_to_host()

    def from_host(self, a):
        return self._c.as_device(a)


class Backend:
    name = None
    ops = HostOps()
    # Every kernel reads torch's gate order and orientation, one cell at a time.
    layout = Layout("kernel", dict(CANONICAL_ORDER), "out_in",
                    {c: "two" for c in CANONICAL_ORDER}, "cells")

    def pack(self, params, spec):
        return from_canonical(params, self.layout, spec)

    def step(self, spec, cell, x, state):
        return self.forward(spec, cell, x[None], state, None, False, False)[1]


# The packers' and the reference's keywords for a cell's parameters past its four, and
# the gradients' keys the backends return for them.
EXTRA_KEYWORDS = {"weight_hr": "w_hr", "weight_peephole": "peephole", "weight_ln_ih": "ln_ih",
                  "weight_ln_hh": "ln_hh", "weight_ln_c": "ln_c", "bias_ln_c": "ln_c_bias"}

# The kernels' (and the reference's) keys of a cell's gradients -> the layer's names of
# the parameters (without the _l0 suffix). backward converts, here and nowhere else.
GRADIENT_NAMES = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih",
                  "b_hh": "bias_hh", **{k: n for n, k in EXTRA_KEYWORDS.items()}}


def layer_gradients(grads):
    """A kernel's gradient dict {"w_ih", ...} -> the layer's names {"weight_ih", ...}."""
    return {GRADIENT_NAMES[k]: v for k, v in grads.items()}


def cell_extras(spec, cell):
    """A cell's arrays past its four (the "cells" container's tuple) as the keywords of
    the packers and of the reference: w_hr with a projection, peephole, layer_norm's."""
    return {EXTRA_KEYWORDS[n]: a for n, a in zip(spec.extras(), cell[4:])}


class NumpyBackend(Backend):
    """The NumPy reference: slow, simple, the oracle. Cell: (w_ih, w_hh, b_ih, b_hh), and
    w_hr with a projection (proj_size), then the peepholes, then layer_norm's arrays."""
    name = "numpy"

    def forward(self, spec, cell, x, state, lengths, reverse, training, h_mask=None,
                zone=None):
        if spec.cell == "lstm":
            y, h, c, cache = reference.lstm_forward_ref(
                x, *cell[:4], *state, lengths, reverse, **spec.kernel_options(),
                **cell_extras(spec, cell), h_mask=h_mask, **(zone or {}))
            state = (h, c)
        elif spec.cell == "gru":
            y, h, cache = reference.gru_forward_ref(x, *cell[:4], state[0], lengths, reverse,
                                                    spec.reset_after, h_mask=h_mask,
                                                    acts=spec.kernel_options()["acts"],
                                                    **cell_extras(spec, cell), **(zone or {}))
            state = (h,)
        else:
            y, h, cache = reference.rnn_forward_ref(x, *cell, state[0], lengths, reverse,
                                                    spec.nonlinearity)
            state = (h,)
        return y, state, (cache if training else None)

    def backward(self, spec, cell, cache, dy, dstate):
        if spec.cell == "lstm":
            dx, dh, dc, grads = reference.lstm_backward_ref(dy, *dstate, cache)
            return dx, (dh, dc), layer_gradients(grads)
        fn = reference.gru_backward_ref if spec.cell == "gru" else reference.rnn_backward_ref
        dx, dh, grads = fn(dy, dstate[0], cache)
        return dx, (dh,), layer_gradients(grads)


class _KernelBackend(Backend):
    """A backend over a kernels package's table: KERNELS[cell], a
    kernels.table.CellKernels (pack, forward, backward, step) for each cell
    (kernels/cpu and kernels/cuda both export one)."""
    kernels = None

    def table(self, spec):
        """The CellKernels of spec's cell on this backend."""
        return self.kernels.KERNELS[spec.cell]

    def pack(self, params, spec):
        pack = self.table(spec).pack
        return [pack(*c[:4], **cell_extras(spec, c), **spec.kernel_options())
                for c in from_canonical(params, self.layout, spec)]

    def forward(self, spec, cell, x, state, lengths, reverse, training, h_mask=None,
                zone=None):
        # (the LSTM's and GRU's kernels take h_mask, the recurrent dropout mask, and
        # zoneout's weights: the LSTM's zone_c and zone_h, the GRU's zone_h)
        mask = {} if h_mask is None else dict(h_mask=h_mask)
        mask.update(zone or {})
        y, *state_n, cache = self.table(spec).forward(x, cell, *state, lengths, reverse,
                                                      training, **mask)
        return y, tuple(state_n), cache

    def backward(self, spec, cell, cache, dy, dstate):
        dx, *dstate0, grads = self.table(spec).backward(dy, *dstate, cache, cell)
        return dx, tuple(dstate0), layer_gradients(grads)

    def step(self, spec, cell, x, state):
        step = self.table(spec).step
        if step is None:  # a one-step forward
            return self.forward(spec, cell, x.reshape((1,) + x.shape), state, None, False,
                                False)[1]
        out = step(x, cell, *state)
        return out if isinstance(out, tuple) else (out,)


class CpuBackend(_KernelBackend):
    """Numba kernels on the CPU. Cell: the typed layout (kernels/cpu/cells.py) that
    the table's pack builds.

    The framework layouts are descriptors (packing.Layout); this kernel's blocked,
    padded layout is declared by functions beside the code that reads it, so the
    two cannot drift apart.
    """
    name = "cpu"
    kernels = cpu


class CudaBackend(_KernelBackend):
    """Numba @cuda.jit kernels on an NVIDIA GPU. Cell: the device arrays the table's
    pack builds (kernels/cuda/cells.py: the packer's canonical weights, copied to
    the device once and cached on the layer until the weights change).

    numba.cuda is imported on first use, so CPU users never pay for it.
    """
    name = "cuda"

    def __init__(self):
        self._kernels = None
        self._ops = None

    @property
    def kernels(self):
        if self._kernels is None:
            self.require()
            from .kernels import cuda as kernels
            self._kernels = kernels
        return self._kernels

    @property
    def ops(self):
        if self._ops is None:
            self._ops = CudaOps(self.kernels.common)
        return self._ops

    @staticmethod
    def require():
        """Raise RuntimeError, saying what was looked for and what to install, unless
        a GPU is usable and Numba can compile for it."""
        import numba
        from numba import cuda
        available = cuda.is_available()
        reason = cuda.cuda_error() if not available and hasattr(cuda, "cuda_error") else None
        nvvm_error = None
        if available and not numba.config.ENABLE_CUDASIM:
            try:
                from numba.cuda.cudadrv import nvvm
                nvvm.NVVM()
            except Exception as exc:  # (NvvmSupportError, or an OSError of the library)
                nvvm_error = f"{type(exc).__name__}: {str(exc).strip()}"
        problem = cuda_problem(available, reason, nvvm_error,
                               "numba_cuda" in (cuda.__file__ or ""))
        if problem:
            raise RuntimeError(problem)


INSTALL_CUDA = ("pip install 'numlstm[cuda]' (NVIDIA's numba-cuda with the CUDA 12 "
                "toolkit's NVVM, runtime and nvJitLink; the driver must be for CUDA 12 or "
                "newer)")


def cuda_problem(available, reason, nvvm_error, numba_cuda):
    """What stops backend='cuda' (None: nothing): available, numba.cuda.is_available();
    reason, Numba's account of the driver when it is not; nvvm_error, the error of
    loading NVVM (the compiler of the kernels), or None; numba_cuda, whether
    numba.cuda is NVIDIA's numba-cuda package rather than numba's built-in target."""
    if not available:
        return ("backend='cuda' needs an NVIDIA GPU and its driver: Numba looked for the "
                "CUDA driver library (libcuda) and a device, and numba.cuda.is_available() "
                f"is False{f' ({reason.strip()})' if reason else ''}. Use backend='cpu' (or "
                "'auto' with NumPy arrays); on a machine with a GPU, " + INSTALL_CUDA
                + (" (numba.cuda here is numba's built-in target, which numba deprecated)"
                   if not numba_cuda else "")
                + "; to run the CUDA kernels in Numba's simulator (slow, for tests) set "
                "NUMBA_ENABLE_CUDASIM=1 before importing numlstm.")
    if nvvm_error:
        return ("backend='cuda' found a GPU, but not NVVM, the CUDA compiler Numba builds "
                f"the kernels with ({nvvm_error}): " + INSTALL_CUDA + ".")
    return None


BACKENDS = {b.name: b for b in (NumpyBackend(), CpuBackend(), CudaBackend())}


def check_name(name):
    """Raise ValueError unless name is "auto" or a backend of the table."""
    if not isinstance(name, str):
        raise TypeError(f"backend: expected a string, got {type(name).__name__}")
    if name == "auto" or name in BACKENDS:
        return name
    raise ValueError(f"unknown backend {name!r}; expected one of {available()}")


def available():
    """The backend names a layer accepts ("cuda" needs a GPU when it runs)."""
    return ["auto"] + sorted(BACKENDS)


def gpu_available():
    """Whether a real NVIDIA GPU can run backend="cuda" (Numba's simulator does not
    count: benchmarks ask this)."""
    import numba
    if numba.config.ENABLE_CUDASIM:
        return False
    from numba import cuda
    return cuda.is_available()


def select(name, x):
    """The Backend for a call with input x: "auto" picks cuda for device arrays and
    cpu for host arrays. Raises RuntimeError for a device array on a CPU backend,
    and for backend="cuda" where no GPU can be used."""
    on_device = is_device_array(x)
    if name == "auto":
        name = "cuda" if on_device else "cpu"
    backend = BACKENDS[name]
    if name == "cuda":
        backend.require()
    elif on_device:
        raise RuntimeError(f"backend={name!r} runs on the CPU, but x is a CUDA device "
                           "array; pass backend='cuda' (or 'auto'), or copy x to the host")
    return backend
