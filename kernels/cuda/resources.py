"""The launch resources of the CUDA kernels, read with no GPU.

    python -m numlstm.kernels.harness --backend cuda --resources [--cell ...] [--dtype ...]

Each kernel the backend launches is compiled to PTX (NVVM, as Numba compiles it
for a GPU) and assembled by ptxas for three architectures, whose report gives
its registers per thread, static shared memory and spills. From those and each
part's limits (ARCHS) follow the blocks of a launch that fit on one SM at once
(blocks_per_sm, the CUDA occupancy calculator's rules: registers are allocated
per warp in units of 256, from each of the SM's 4 sub-partitions' quarter of the
register file, shared memory in units of 128 bytes plus 1 KiB the driver keeps
per block, and no SM holds more than its threads and blocks). A
cooperative launch, which the persistent recurrences are, must have all its
blocks resident at once: at most blocks_per_sm x SMs, the figure the driver's
max_cooperative_grid_blocks returns and common.plan asks for on a GPU.

plans() gives that figure to common.choose_plan for every recurrence over the
bench grid (H in 64, 256, 1024; B in 1, 16, 128), so each row is the plan the
backend would make on that part, and checks what could still fail on a GPU or
quietly cost speed:
  - every launch has at least one block per SM (else the launch fails with "too
    many resources requested for launch"): the persistent kernel with its
    threads and shared memory, or the per-step kernels that replace it, and the
    other kernels at their 256 threads;
  - a persistent grid is co-resident (else CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE),
    one-dimensional (numba issue 8740) and not from a cache=True kernel (numba
    issue 9432), and its dynamic shared memory within the 48 KiB a block gets
    without an opt-in;
  - no float32 kernel spills registers to local memory;
  - in float32 at H <= 256 and B <= 16 the recurrence is persistent (its weights
    on chip, one launch for all steps: the plan that should beat cuDNN there, and
    the one a kernel's growing registers or shared memory would lose first).

The PTX is compiled once per kernel for sm_80, the oldest architecture here (a
GPU loads PTX of its own or an older architecture), and ptxas assembles that
PTX for each (ptxas -c: the persistent kernels call the grid barrier in
cudadevrt, linked later; the barrier's own registers are not counted). The
ptxas used is the one of the CUDA toolkit whose NVVM Numba uses (CUDA_HOME, or
found on PATH, in /usr/local/cuda*, or in the nvidia-cuda-nvcc-cu12 wheel that
numlstm[cuda] brings),
since an older ptxas refuses a newer PTX ISA.
"""
import glob
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types as pytypes
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from numba import types

REGISTERS_PER_SM = 65536
SUB_PARTITIONS = 4          # an SM's register file is split among its 4 schedulers
REGISTER_UNIT = 256         # registers are allocated per warp, in these units
SHARED_UNIT = 128           # shared memory allocation unit, bytes
RESERVED_SHARED = 1024      # shared memory the driver keeps per block (compute 8.0 and later)
PTX_CC = (8, 0)             # the architecture the PTX is compiled for
GRID_H = (64, 256, 1024)    # the bench grid's hidden sizes and batches
GRID_B = (1, 16, 128)
PERSISTENT_H, PERSISTENT_B = 256, 16  # float32 plans up to these sizes must be persistent
OTHER_THREADS = 256         # threads of the other kernels' launches (common.flat_launch, TILE^2)


class Arch(NamedTuple):
    """One architecture's limits, with the SM count of a common part of it."""
    sm: str           # ptxas's -arch
    part: str
    sms: int          # streaming multiprocessors of that part
    threads: int      # resident threads per SM
    blocks: int       # resident blocks per SM
    shared: int       # shared memory per SM, bytes (the largest carve-out)


ARCHS = (Arch("sm_80", "A100", 108, 2048, 32, 164 * 1024),
         Arch("sm_89", "L40S", 142, 1536, 24, 100 * 1024),
         Arch("sm_90", "H100 SXM", 132, 2048, 32, 228 * 1024))


class Usage(NamedTuple):
    """ptxas's report of one kernel on one architecture."""
    registers: int    # per thread
    shared: int       # static shared memory, bytes
    spill_stores: int  # bytes
    spill_loads: int   # bytes
    stack: int        # stack frame, bytes


def blocks_per_sm(arch, usage, threads, dynamic_shared=0):
    """Blocks of `threads` threads and `dynamic_shared` bytes of dynamic shared memory
    that fit on one SM of arch at once, by the occupancy calculator's rules; 0:
    such a block does not fit at all (the launch fails)."""
    warps = math.ceil(threads / 32)
    by_threads = arch.threads // 32 // warps
    per_warp = math.ceil(usage.registers * 32 / REGISTER_UNIT) * REGISTER_UNIT
    # each sub-partition holds a whole number of warps' registers
    warps_by_registers = (REGISTERS_PER_SM // SUB_PARTITIONS // per_warp * SUB_PARTITIONS
                          if per_warp else arch.threads // 32)
    by_registers = warps_by_registers // warps
    shared = math.ceil((usage.shared + dynamic_shared + RESERVED_SHARED) / SHARED_UNIT)
    by_shared = arch.shared // (shared * SHARED_UNIT)
    return min(arch.blocks, by_threads, by_registers, by_shared)


# -- compiling with no GPU ---------------------------------------------------------------
_PTX = {}


def ptx_of(kernel, sig):
    """The kernel's PTX for PTX_CC with these argument types (kept for the process).
    Device functions are compiled for "the current device": for the compile, Numba
    is told it is one of compute capability PTX_CC (all it asks of it), and after
    it, whatever device there is again."""
    key = (kernel, tuple(sig))
    if key not in _PTX:
        import numba.cuda.dispatcher as dispatcher
        from numba import cuda
        real = dispatcher.get_current_device
        dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(
            compute_capability=PTX_CC)
        try:
            _PTX[key] = cuda.compile_ptx(kernel.py_func, tuple(sig), cc=PTX_CC)[0]
        finally:
            dispatcher.get_current_device = real
    return _PTX[key]


def _ptx_version(ptx):
    m = re.search(r"^\.version\s+(\d+)\.(\d+)", ptx, re.M)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _candidates():
    """ptxas executables, the toolkit of Numba's NVVM first."""
    out = []
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        out.append(os.path.join(home, "bin", "ptxas"))
    out.append(shutil.which("ptxas"))
    out += sorted(glob.glob("/usr/local/cuda*/bin/ptxas"), reverse=True)
    try:
        import nvidia.cuda_nvcc as wheel
        out += [os.path.join(p, "bin", "ptxas") for p in wheel.__path__]
    except ImportError:
        pass
    seen = []
    for p in out:
        if p and os.path.isfile(p) and os.access(p, os.X_OK) and p not in seen:
            seen.append(p)
    return seen


_PTXAS = {}


def ptxas_for(ptx):
    """A ptxas that accepts this PTX's ISA version (the first candidate that
    assembles a file of it), or a RuntimeError naming what was tried."""
    version = _ptx_version(ptx)
    if version not in _PTXAS:
        tried = []
        for exe in _candidates():
            run = _run_ptxas(exe, ptx, ARCHS[0].sm)
            if run.returncode == 0:
                _PTXAS[version] = exe
                break
            tried.append(f"{exe}: {run.stderr.strip().splitlines()[-1:] or run.returncode}")
        else:
            raise RuntimeError(f"no ptxas here assembles PTX ISA {version[0]}.{version[1]} "
                               "(pip install 'numlstm[cuda]', or set CUDA_HOME to "
                               f"the toolkit whose NVVM Numba uses); tried: {tried}")
    return _PTXAS[version]


def _run_ptxas(exe, ptx, sm):
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        return subprocess.run([exe, "-c", "-v", f"-arch={sm}", src, "-o",
                               os.path.join(tmp, "kernel.o")],
                              capture_output=True, text=True, timeout=300)


def parse_ptxas(report):
    """{entry name: Usage} from `ptxas -v`'s report (its standard error). A report
    without an entry's register count or spill line is a RuntimeError: reading
    zeros there would pass every check."""
    out = {}
    for chunk in re.split(r"Compiling entry function '", report)[1:]:
        name = chunk.split("'", 1)[0]
        regs = re.search(r"Used (\d+) registers", chunk)
        smem = re.search(r"(\d+) bytes smem", chunk)
        spill = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                          r"(\d+) bytes spill loads", chunk)
        if not regs or not spill:
            raise RuntimeError(f"ptxas's report of {name[:60]} has no register count or "
                               f"spill line: {chunk.strip()[:300]!r}")
        out[name] = Usage(int(regs.group(1)), int(smem.group(1)) if smem else 0,
                          int(spill.group(2)), int(spill.group(3)), int(spill.group(1)))
    return out


_USAGE = {}


def usage(kernel, sig, archs=ARCHS):
    """{arch.sm: Usage} of the kernel's entry, assembled for each architecture
    (kept for the process)."""
    key = (kernel, tuple(sig), tuple(archs))
    if key not in _USAGE:
        _USAGE[key] = _usage(kernel, sig, archs)
    return _USAGE[key]


def _usage(kernel, sig, archs):
    ptx = ptx_of(kernel, sig)
    exe = ptxas_for(ptx)

    def one(arch):
        run = _run_ptxas(exe, ptx, arch.sm)
        if run.returncode != 0:
            raise RuntimeError(f"ptxas -arch={arch.sm} failed: {run.stderr.strip()[-400:]}")
        entries = parse_ptxas(run.stderr)
        if len(entries) != 1:
            raise RuntimeError(f"expected one entry function in ptxas's report, got "
                               f"{len(entries)}")
        return arch.sm, next(iter(entries.values()))

    with ThreadPoolExecutor(len(archs)) as pool:  # (ptxas runs outside the GIL)
        return dict(pool.map(one, archs))


# -- the launches of each recurrence -----------------------------------------------------
class Recurrence(NamedTuple):
    """One recurrence's launches: the persistent kernel and the per-step kernels
    that replace it, with common.plan's rows and width (of H) for it."""
    cell: str
    pass_: str
    persistent: object
    per_step: tuple
    rows: int
    width: object     # H -> the weights a unit keeps per row


def recurrences():
    from . import common, gru, lstm, lstm_cell, lstm_norm, rnn
    return [
        Recurrence("lstm", "forward", lstm._forward_persistent, (lstm._forward_one,),
                   lstm_cell.ROWS, lambda H: H + 1),
        Recurrence("lstm", "backward", lstm._backward_persistent,
                   (lstm._backward_gates_one, common.dh_one), 1, lambda H: 4 * H + 1),
        Recurrence("lstm+layer_norm", "forward", lstm_norm._forward_norm_persistent,
                   (lstm_norm._forward_norm_one,), lstm_cell.ROWS, lambda H: H + 1),
        Recurrence("lstm+layer_norm", "backward", lstm_norm._backward_norm_persistent,
                   (lstm_norm._backward_norm_one, common.dh_one), 1, lambda H: 4 * H + 1),
        Recurrence("gru", "forward", gru._forward_persistent, (gru._forward_one,), gru.ROWS,
                   lambda H: H + 1),
        Recurrence("gru", "backward", gru._backward_persistent,
                   (gru._backward_gates_one, gru._backward_n_one, common.dh_one), 1,
                   lambda H: 3 * H + 1),
        Recurrence("rnn", "forward", rnn._forward_persistent, (rnn._forward_one,), rnn.ROWS,
                   lambda H: H + 1),
        Recurrence("rnn", "backward", rnn._backward_persistent,
                   (rnn._backward_act_one, common.dh_one), 1, lambda H: H + 1),
    ]


def _signatures(dt):
    """{kernel: argument types} of every kernel with the default activations."""
    from .signatures import kernel_signatures
    return dict(kernel_signatures(dt, every_activation=False))


def _is_cached(kernel):
    """Whether the dispatcher caches to disk (cache=True)."""
    cache = getattr(kernel, "_cache", None)
    return cache is not None and type(cache).__name__ != "NullCache"


class PlanRow(NamedTuple):
    cell: str
    pass_: str
    dtype: str
    H: int
    B: int
    arch: Arch
    plan: object       # common.Plan
    co_resident: int   # blocks of the launched recurrence kernel resident at once (all SMs)
    problems: list


def plans(cells=None, dtypes=("float32", "float64"), archs=ARCHS, H_values=GRID_H,
          B_values=GRID_B, usage_of=None):
    """PlanRow for every recurrence (of the cells named, or all), dtype, bench-grid
    shape and architecture. usage_of(kernel, sig) -> {sm: Usage} (default:
    usage(), compiling); tests pass figures of their own."""
    from .common import SHARED_BYTES, choose_plan
    from .signatures import kernel_name
    usage_of = usage_of or usage
    rows = []
    for dtype in dtypes:
        sigs = _signatures(getattr(types, dtype))
        itemsize = 4 if dtype == "float32" else 8
        for rec in recurrences():
            if cells and rec.cell.split("+")[0] not in cells:
                continue
            used = {k: usage_of(k, sigs[k]) for k in (rec.persistent,) + rec.per_step}
            for arch, H, B in ((a, H, B) for a in archs for H in H_values for B in B_values):
                persistent = used[rec.persistent][arch.sm]

                def co_resident(threads, shared):
                    return blocks_per_sm(arch, persistent, threads, shared) * arch.sms
                p = choose_plan(co_resident, H, B, rec.rows, rec.width(H), itemsize,
                                shared_limit=SHARED_BYTES)
                launched = {kernel_name(k): used[k][arch.sm]
                            for k in ((rec.persistent,) if p.persistent else rec.per_step)}
                co = co_resident(p.threads, p.shared) if p.persistent else 0
                rows.append(PlanRow(rec.cell, rec.pass_, dtype, H, B, arch, p, co,
                                    _problems(rec, dtype, H, B, arch, p, launched, co)))
    return rows


def _problems(rec, dtype, H, B, arch, p, launched, co_resident):
    """What would fail, or quietly cost speed, in plan p of recurrence rec on arch
    (the module docstring's list); launched: {name: Usage} of the kernels it runs."""
    from .common import SHARED_BYTES
    out = []
    shared = p.shared if p.persistent else 0
    for name, u in launched.items():
        if blocks_per_sm(arch, u, p.threads, shared) < 1:
            out.append(f"{name}: a block of {p.threads} threads ({u.registers} registers "
                       f"each) and {shared} bytes of shared memory does not fit on an SM")
        if dtype == "float32" and (u.spill_stores or u.spill_loads):
            out.append(f"{name} spills {u.spill_stores} bytes")
    if dtype == "float32" and H <= PERSISTENT_H and B <= PERSISTENT_B and not p.persistent:
        out.append(f"runs per step where it should be persistent (float32, H <= "
                   f"{PERSISTENT_H}, B <= {PERSISTENT_B})")
    if p.persistent:
        if p.blocks > co_resident:
            out.append(f"a cooperative grid of {p.blocks} blocks; {co_resident} fit at once")
        if p.shared > SHARED_BYTES:
            out.append(f"{p.shared} bytes of dynamic shared memory (48 KiB without an opt-in)")
        if not isinstance(p.blocks, int):
            out.append("a grid of more than one dimension")
        if _is_cached(rec.persistent):
            out.append("the persistent kernel has cache=True")
    return out


def other_launches(dtypes=("float32", "float64"), archs=ARCHS, usage_of=None):
    """[(kernel name, dtype, sm, Usage, problems)] for the kernels outside the
    recurrences (products, copies, normalisation rows), at their 256 threads."""
    from .signatures import kernel_name
    usage_of = usage_of or usage
    skip = set()
    for rec in recurrences():
        skip.update((rec.persistent,) + rec.per_step)
    out = []
    for dtype in dtypes:
        for kernel, sig in _signatures(getattr(types, dtype)).items():
            if kernel in skip:
                continue
            figures = usage_of(kernel, sig)
            for arch in archs:
                u = figures[arch.sm]
                problems = [] if blocks_per_sm(arch, u, OTHER_THREADS) >= 1 else [
                    f"a block of {OTHER_THREADS} threads does not fit on an SM"]
                out.append((kernel_name(kernel), dtype, arch.sm, u, problems))
    return out


# -- the report ---------------------------------------------------------------------------
def _plan_text(r):
    p = r.plan
    if p.persistent:
        return f"{p.blocks}x{p.threads} {p.shared / 1024:.1f}K <={r.co_resident}"
    return f"step {p.blocks}x{p.threads}"


def report(cells=None, dtypes=("float32", "float64"), out=print):
    """Print the kernels' figures and every plan's; return the number of problems."""
    from .signatures import kernel_name
    rows = plans(cells, dtypes)
    out("architectures: " + "; ".join(
        f"{a.sm} = {a.part} ({a.sms} SMs; per SM {a.threads} threads, {a.blocks} blocks, "
        f"{a.shared // 1024} KiB shared)" for a in ARCHS))
    out("\nptxas: registers per thread / static shared memory (bytes) / spill stores (bytes)")
    out(f"{'kernel':36} {'dtype':8} " + " ".join(f"{a.sm:>15}" for a in ARCHS))
    for dtype in dtypes:
        sigs = _signatures(getattr(types, dtype))
        printed = set()
        for rec in recurrences():
            if cells and rec.cell.split("+")[0] not in cells:
                continue
            for k in (rec.persistent,) + rec.per_step:
                if k in printed:  # (dh_one serves every cell's per-step backward)
                    continue
                printed.add(k)
                u = usage(k, sigs[k])
                out(f"{kernel_name(k):36} {dtype:8} " + " ".join(
                    f"{u[a.sm].registers:>5} /{u[a.sm].shared:>5} /{u[a.sm].spill_stores:>2}"
                    for a in ARCHS))
    out("\nplans over the bench grid: persistent blocks x threads, dynamic shared memory "
        "(KiB) <= the blocks that fit at once on the part; 'step': one launch a step "
        "(blocks x threads)")
    out(f"{'cell':16} {'pass':9} {'dtype':8} {'H':>5} {'B':>4}  " + "".join(
        f"{a.sm + ' ' + a.part:<24}" for a in ARCHS))
    problems = 0
    grouped = {}
    for r in rows:
        grouped.setdefault((r.cell, r.pass_, r.dtype, r.H, r.B), {})[r.arch.sm] = r
        problems += len(r.problems)
    for (cell, pass_, dtype, H, B), by_arch in grouped.items():
        out(f"{cell:16} {pass_:9} {dtype:8} {H:>5} {B:>4}  " + "".join(
            f"{_plan_text(by_arch[a.sm]):<24}" for a in ARCHS))
    for r in rows:
        for p in r.problems:
            out(f"FAIL {r.cell} {r.pass_} {r.dtype} H={r.H} B={r.B} {r.arch.sm}: {p}")
    others = other_launches(dtypes)
    for name, dtype, sm, u, found in others:
        for p in found:
            out(f"FAIL {name} {dtype} {sm}: {p}")
        problems += len(found)
    persistent = sum(r.plan.persistent for r in rows)
    out(f"\n{len(rows)} plans ({persistent} persistent) and {len(others)} other launches "
        f"checked on {len(ARCHS)} architectures: "
        + (f"{problems} problems" if problems else "every launch fits"))
    return problems


def main(cells=None, dtypes=("float32", "float64")):
    """The harness's --resources: exit status 1 on any problem, 2 when it cannot run."""
    from numba import config
    if config.ENABLE_CUDASIM:
        print("--resources compiles for real GPUs: run it without NUMBA_ENABLE_CUDASIM=1",
              file=sys.stderr)
        return 2
    try:
        return 1 if report(cells, dtypes) else 0
    except RuntimeError as exc:
        print(f"--resources: {exc}", file=sys.stderr)
        return 2
