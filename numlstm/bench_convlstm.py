"""`numlstm bench --isolated --cell convlstm2d`: numlstm's ConvLSTM2D against torch and
Keras 3 (JAX), each library in a fresh process of its own (numlstm.bench_isolated's
workers, rounds and --load), after a check that the three compute the same thing.

Dimensions: T steps, B batch, R x C frames, I input channels, F filters, k the
kernel's side (odd); padding "same", so the state's grid is R x C too. A shape is
(T, B, R, C, I, F, k).

The libraries, float32, the same weights, x [B,T,R,C,I] and dy [B,T,R,C,F]:
  numlstm  ConvLSTM2D(I, F, k, padding="same", return_sequences=True,
           batch_first=True): inference layer.forward(x); training
           layer.zero_grad(), layer.forward(x, training=True), layer.backward_output(dy).
  torch    the ConvLSTM as it is usually written: one nn.Conv2d(I+F, 4F, k,
           padding=k//2) on torch.cat([x_t, h], 1) each step, the result split into
           i, f, g, o, sigmoid/tanh, NCHW tensors (x [T,B,I,R,C] and dy [T,B,F,R,C]
           laid out before the timing); inference under torch.no_grad(); training
           conv.zero_grad(), then y.backward(dy) with dx; torch.set_num_threads(the
           cores this process may use).
  keras    keras.layers.ConvLSTM2D(F, k, padding="same", return_sequences=True) on
           the JAX backend (KERAS_BACKEND=jax, set in the worker before keras is
           imported), called through layer.stateless_call(weights, state, x): the
           simplest way to hand the weights to jax.jit and jax.grad as arguments,
           with no keras.Model, optimizer or variable assignment in the timing.
           Inference: jax.jit of that call. Training: jax.jit(jax.grad) of
           sum(y * dy) in the weights and x (training=True). x, dy and the weights
           are on the device before the timing; every call ends with
           block_until_ready (JAX dispatches asynchronously).

Parity, before any timing: one fresh process runs the three on a small uneven probe
(PROBE's T, B, R, C with each distinct I, F, k of the shapes) with numlstm's weights
(torch: concatenate([weight_ih, weight_hh], 1) and bias; Keras: set_weights of
export_weights("keras")) and compares each peer's y, dx and weight gradients with
numlstm's; a difference beyond 1e-4 + 1e-4 * |numlstm's| raises ParityError with the
first mismatches.

GFLOP/s counts the convolutions' multiply-adds, 2*T*B*R*C*k*k*(I+F)*4F a forward,
three times that for training (the gate math and the copies are not counted).
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from . import bench_isolated

LIBRARIES = ("numlstm", "torch", "keras")
MODES = ("inference", "training")
# The grid: 64x64 frames of one channel, k = 3, T = 10, (B, F) in
# (4, 16), (4, 64), (16, 16), (16, 64).
GRID = [(10, B, 64, 64, 1, F, 3) for B, F in ((4, 16), (4, 64), (16, 16), (16, 64))]
QUICK_GRID = [(10, 2, 16, 16, 1, 8, 3), (10, 4, 32, 32, 1, 16, 3)]
PROBE = (3, 2, 7, 6)  # the parity check's T, B, R, C
KEYS = ("T", "B", "R", "C", "I", "F", "k")
MODULE = "numlstm.bench_convlstm"  # the workers' `python -m` (this file's main)


class ParityError(RuntimeError):
    """The libraries disagree on the probe: the timing would compare different things."""


def shape7(shape):
    """(T, B, R, C, I, F) or (T, B, R, C, I, F, k), integers >= 1, k odd (default 3),
    as a 7-tuple; ValueError otherwise."""
    shape = tuple(shape)
    if len(shape) == 6:
        shape += (3,)
    if len(shape) != 7 or not all(isinstance(v, (int, np.integer)) and v >= 1
                                  for v in shape):
        raise ValueError(f"shapes: expected T,B,R,C,I,F or T,B,R,C,I,F,k (integers >= 1), "
                         f"got {shape!r}")
    if shape[6] % 2 == 0:
        raise ValueError(f"shapes: k must be odd (torch's padding=k//2 keeps the frame's "
                         f"size only then), got {shape!r}")
    return tuple(int(v) for v in shape)


def flops(T, B, R, C, I, F, k, mode):
    """FLOPs of one call: the convolutions' 2*T*B*R*C*k*k*(I+F)*4F, three times that
    for training."""
    return 2 * T * B * R * C * k * k * (I + F) * 4 * F * (3 if mode == "training" else 1)


# -- the three libraries ------------------------------------------------------------------
def _cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _problem(shape):
    """numlstm's layer at `shape` (its weights are everyone's), x [B,T,R,C,I] and
    dy [B,T,R,C,F]."""
    import numlstm
    T, B, R, C, I, F, k = shape
    layer = numlstm.ConvLSTM2D(I, F, k, padding="same", return_sequences=True,
                               batch_first=True, seed=sum(shape))
    rng = np.random.default_rng(T * 7 + B)
    x = rng.standard_normal((B, T, R, C, I)).astype(np.float32)
    dy = rng.standard_normal((B, T, R, C, F)).astype(np.float32)
    return layer, x, dy


def _numlstm(layer, x, dy):
    def infer():
        return layer.forward(x)

    def train():
        layer.zero_grad()
        layer.forward(x, training=True)
        return layer.backward_output(dy)

    def results():
        y, dx = infer(), train()
        return dict(y=y, dx=dx, **{k: g.copy() for k, g in layer.grads.items()})
    return infer, train, results


def _torch(layer, x, dy):
    import torch
    torch.set_num_threads(_cores())
    F, I, (k, _) = layer.filters, layer.in_channels, layer.kernel_size
    p = layer.params
    conv = torch.nn.Conv2d(I + F, 4 * F, k, padding=k // 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(np.concatenate([p["weight_ih"], p["weight_hh"]], 1)))
        conv.bias.copy_(torch.tensor(p["bias"]))
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 4, 2, 3)))  # [T,B,I,R,C]
    dyt = torch.from_numpy(np.ascontiguousarray(dy.transpose(1, 0, 4, 2, 3)))  # [T,B,F,R,C]

    def forward(x):  # x [T,B,I,R,C] -> y [T,B,F,R,C]
        h = x.new_zeros((x.shape[1], F) + x.shape[3:])
        c, ys = h, []
        for x_t in x:
            i, f, g, o = conv(torch.cat([x_t, h], 1)).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            ys.append(h)
        return torch.stack(ys)

    def infer():
        with torch.no_grad():
            return forward(xt)

    def train():
        conv.zero_grad()
        x = xt.detach().requires_grad_()
        forward(x).backward(dyt)
        return x.grad

    def results():
        y, dx = (a.numpy().transpose(1, 0, 3, 4, 2) for a in (infer(), train()))
        w = conv.weight.grad.numpy()
        return dict(y=y, dx=dx, weight_ih=w[:, :I], weight_hh=w[:, I:],
                    bias=conv.bias.grad.numpy())
    return infer, train, results


def _keras(layer, x, dy):
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import jax.numpy as jnp
    import keras
    if keras.backend.backend() != "jax":
        raise RuntimeError(f"keras runs on {keras.backend.backend()!r}: it was imported "
                           "before KERAS_BACKEND=jax was set")
    from .packing import convlstm_from_keras
    model = keras.layers.ConvLSTM2D(layer.filters, layer.kernel_size, padding="same",
                                    return_sequences=True)
    model.build(x.shape)
    model.set_weights(layer.export_weights("keras"))
    weights = [v.value for v in model.trainable_variables]  # kernel, recurrent_kernel, bias
    state = [v.value for v in model.non_trainable_variables]
    xj, dyj = jax.device_put(x), jax.device_put(dy)
    forward = jax.jit(lambda w, x: model.stateless_call(w, state, x)[0])

    def loss(w, x, dy):
        return jnp.sum(model.stateless_call(w, state, x, training=True)[0] * dy)
    gradient = jax.jit(jax.grad(loss, argnums=(0, 1)))

    def infer():
        return forward(weights, xj).block_until_ready()

    def train():
        return jax.block_until_ready(gradient(weights, xj, dyj))

    def results():
        y = np.asarray(infer())
        dw, dx = train()
        shapes = {k: v.shape for k, v in layer.params.items()}
        return dict(y=y, dx=np.asarray(dx),
                    **convlstm_from_keras([np.asarray(a) for a in dw], shapes, np.float32))
    return infer, train, results


_LIBRARY = {"numlstm": _numlstm, "torch": _torch, "keras": _keras}


def build(lib, shape, mode):
    """A function making one call of `lib` at `shape` in `mode` (the module docstring)."""
    infer, train, _ = _LIBRARY[lib](*_problem(shape))
    return infer if mode == "inference" else train


# -- parity -------------------------------------------------------------------------------
def probe_shapes(shapes):
    """The parity check's shapes: PROBE's T, B, R, C with each distinct (I, F, k)."""
    return list(dict.fromkeys(PROBE + tuple(s[4:]) for s in shapes))


def check_parity(outputs, atol=1e-4, rtol=1e-4):
    """outputs: {lib: {name: array}}, numlstm's the reference. Raise ParityError naming
    the first mismatches where |peer - numlstm| > atol + rtol * |numlstm|; return
    {peer: the worst |peer - numlstm|}."""
    ref, worst, lines = outputs["numlstm"], {}, []
    for lib, out in outputs.items():
        if lib == "numlstm":
            continue
        for name, want in ref.items():
            got = np.asarray(out[name])
            if got.shape != want.shape:
                raise ParityError(f"{lib} {name}: shape {got.shape}, numlstm's {want.shape}")
            diff = np.abs(got.astype(np.float64) - want)
            worst[lib] = max(worst.get(lib, 0.0), float(diff.max()))
            bad = np.argwhere(diff > atol + rtol * np.abs(want))
            if len(bad):
                lines.append(f"  {lib} {name}: {len(bad)} of {want.size} entries differ")
                lines += [f"    {name}{list(map(int, i))}: {lib} {got[tuple(i)]:.6g}, numlstm "
                          f"{want[tuple(i)]:.6g}" for i in bad[:4]]
    if lines:
        raise ParityError(f"the libraries disagree beyond {atol:g} + {rtol:g} * |numlstm| "
                          f"(the first mismatches):\n" + "\n".join(lines))
    return worst


def _probe(shapes, libraries, folder):
    """Run in the probe process: each library's outputs at each shape, saved in folder."""
    for lib in libraries:
        arrays = {}
        for n, shape in enumerate(shapes):
            _, _, results = _LIBRARY[lib](*_problem(tuple(shape)))
            arrays.update({f"{n}/{name}": a for name, a in results().items()})
        np.savez(os.path.join(folder, lib + ".npz"), **arrays)


def parity(shapes, libraries=LIBRARIES, env=None, atol=1e-4, rtol=1e-4):
    """Compare the peers with numlstm at probe_shapes(shapes), in one fresh process;
    return {peer: the worst |peer - numlstm|} or raise ParityError."""
    probes = probe_shapes(shapes)
    libraries = ["numlstm"] + [lib for lib in libraries if lib != "numlstm"]
    with tempfile.TemporaryDirectory() as folder:
        spec = dict(probe=probes, libraries=libraries, folder=folder)
        done = subprocess.run([sys.executable, "-m", MODULE], input=json.dumps(spec),
                              capture_output=True, text=True, env=env)
        if done.returncode:
            raise RuntimeError(f"the parity process ended with status {done.returncode}:\n"
                               f"{done.stderr[-3000:]}")
        saved = {lib: dict(np.load(os.path.join(folder, lib + ".npz"))) for lib in libraries}
    worst = {}
    for n, shape in enumerate(probes):
        outputs = {lib: {k.split("/", 1)[1]: v for k, v in arrays.items()
                         if k.startswith(f"{n}/")} for lib, arrays in saved.items()}
        try:
            for lib, e in check_parity(outputs, atol, rtol).items():
                worst[lib] = max(worst.get(lib, 0.0), e)
        except ParityError as err:
            raise ParityError(f"ConvLSTM2D at T,B,R,C,I,F,k = {shape}: {err}") from None
    return worst


# -- the parent ---------------------------------------------------------------------------
def run(shapes, libraries=LIBRARIES, modes=MODES, load=0, copies=1, rounds=3, repeats=5,
        min_seconds=0.3, env=None):
    """Check parity, then time every library at every shape (T,B,R,C,I,F[,k]) and mode,
    each in its own process, `rounds` rounds (bench_isolated.measure); return one row
    dict per (shape, mode): each library's median ms and GFLOP/s, each peer's ratio
    (its ms / numlstm's) and parity (its worst |difference| from numlstm's over the
    probes, see parity()). load, copies, env: as bench_isolated.run's."""
    shapes = [shape7(s) for s in shapes]
    bench_isolated.check_run(libraries, LIBRARIES, modes, MODES, copies, load)
    tasks = [(list(shape), mode) for shape in shapes for mode in modes]
    peers = [lib for lib in libraries if lib != "numlstm"]
    worst = parity(shapes, peers, env) if peers else {}
    measured = bench_isolated.measure_tasks(libraries, tasks, MODULE, repeats, min_seconds,
                                            load=load, copies=copies, rounds=rounds, env=env)
    rows = []
    for i, (shape, mode) in enumerate(tasks):
        row = dict(cell="convlstm2d", **dict(zip(KEYS, shape)), mode=mode, load=load,
                   copies=copies, rounds=rounds, dtype="float32",
                   gflop=flops(*shape, mode) / 1e9)
        for lib in libraries:
            ms = 1e3 * float(np.median(measured[lib, i]))
            row[lib + "_ms"] = ms
            row[lib + "_gflops"] = row["gflop"] / ms * 1e3
        for lib in peers:
            if "numlstm" in libraries:
                row[lib + "_ratio"] = row[lib + "_ms"] / row["numlstm_ms"]
            row[lib + "_parity"] = worst[lib]
        rows.append(row)
    return rows


COLUMNS = ("GFLOP/s: the convolutions' multiply-adds in the direct form (2*T*B*R*C*k*k*(I+F)*4F; "
           "a training step 3x) per second; %roof: that as a share of the roof above (with 3x3 "
           "kernels numlstm runs Winograd's form, 2.25x fewer multiply-adds: over 100% is "
           "possible); ratio: the peer's time / numlstm's (> 1: numlstm is faster)")


def table(rows, libraries, roof, out=print):
    """Print the rows as bench_isolated.table does, shapes T,B,R,C,I,F,k."""
    bench_isolated.table(rows, libraries, roof, out, keys=KEYS, columns=COLUMNS)


if __name__ == "__main__":
    _spec = json.loads(sys.stdin.readline())
    if "probe" in _spec:
        _probe(_spec["probe"], _spec["libraries"], _spec["folder"])
    else:
        bench_isolated._worker(
            _spec, lambda shape, mode, tmpdir: build(_spec["lib"], tuple(shape), mode))
