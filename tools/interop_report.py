"""Worst errors of numlstm against Keras 3 (JAX, CPU) and onnxruntime, per kind of layer.

    python tools/interop_report.py

Not a test (the tests assert tolerances); this prints the figures the interop
issue's note asks for: for each kind, the largest |numlstm - other| over random
weights and inputs, uni- and bidirectional, with and without lengths (a mask for
Keras, compared at valid steps), several (T, B) and all outputs (y, final states),
and the operators of an exported Sequential model. float32 throughout.
"""
import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import numlstm  # noqa: E402

KINDS = {  # name: (numlstm class, its options, Keras class, Keras options)
    "LSTM": (numlstm.LSTM, {}, keras.layers.LSTM, {}),
    "GRU (reset_after=True)": (numlstm.GRU, {}, keras.layers.GRU, {}),
    "GRU (reset_after=False)": (numlstm.GRU, {"reset_after": False}, keras.layers.GRU,
                                {"reset_after": False}),
    "RNN (tanh)": (numlstm.RNN, {}, keras.layers.SimpleRNN, {}),
    "RNN (relu)": (numlstm.RNN, {"nonlinearity": "relu"}, keras.layers.SimpleRNN,
                   {"activation": "relu"}),
}
SHAPES = [(1, 1), (7, 4), (25, 3)]  # (T, B)
I, H = 6, 8


def _worst(pairs):
    return max(float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
               for a, b in pairs)


def keras_errors(rng, kind):
    cls, opts, kcls, kopts = KINDS[kind]
    worst = 0.0
    for bidirectional in (False, True):
        for T, B in SHAPES:
            inner = kcls(H, return_sequences=True, return_state=True, **kopts)
            theirs = keras.layers.Bidirectional(inner) if bidirectional else inner
            x = rng.standard_normal((B, T, I)).astype(np.float32)
            lengths = rng.integers(1, T + 1, B)
            mask = np.arange(T)[None, :] < lengths[:, None]
            theirs(x)
            ours = cls(I, H, bidirectional=bidirectional, batch_first=True, **opts)
            ours.load_weights(theirs.get_weights(), "keras")
            per_dir = 2 if cls is numlstm.LSTM else 1
            for m in (None, mask):
                out = [np.asarray(o) for o in theirs(x, mask=m)]
                y, state = ours(x, mask=m)
                states = state if isinstance(state, tuple) else (state,)
                valid = 1.0 if m is None else m[..., None]
                pairs = [(y * valid, out[0] * valid)]
                D = 2 if bidirectional else 1
                for d in range(D):
                    for p in range(per_dir):
                        pairs.append((states[p][d], out[1 + d * per_dir + p]))
                worst = max(worst, _worst(pairs))
    return worst


def onnx_errors(rng, kind, folder):
    cls, opts, _, _ = KINDS[kind]
    worst = 0.0
    for num_layers, bidirectional in ((1, False), (2, True)):
        layer = cls(I, H, num_layers=num_layers, bidirectional=bidirectional,
                    seed=int(rng.integers(1 << 30)), **opts)
        path = os.path.join(folder, "layer.onnx")
        numlstm.export_onnx(layer, path, lengths=True, initial_state=True)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        D = 2 if bidirectional else 1
        for T, B in SHAPES:
            x = rng.standard_normal((T, B, I)).astype(np.float32)
            lengths = rng.integers(1, T + 1, B)
            h0 = rng.standard_normal((num_layers * D, B, H)).astype(np.float32)
            c0 = rng.standard_normal((num_layers * D, B, H)).astype(np.float32)
            feeds = {"x": x, "lengths": lengths, "h0": h0}
            state0 = h0
            if cls is numlstm.LSTM:
                feeds["c0"], state0 = c0, (h0, c0)
            got = session.run(None, feeds)
            y, state = layer(x, state0, lengths=lengths)
            want = [y] + list(state if isinstance(state, tuple) else (state,))
            worst = max(worst, _worst(zip(got, want)))
    return worst


def sequential_report(rng, folder):
    model = numlstm.Sequential([
        numlstm.Embedding(50, 16, seed=1), numlstm.LSTM(16, 32, num_layers=2, seed=2),
        numlstm.Dropout(0.1),
        numlstm.GRU(32, 16, bidirectional=True, return_sequences=False, seed=3),
        numlstm.Dense(32, 10, activation="relu", seed=4), numlstm.Dense(10, 3, seed=5)])
    path = os.path.join(folder, "model.onnx")
    exported = numlstm.export_onnx(model, path, lengths=True)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for T, B in SHAPES:
        ids = rng.integers(0, 50, (B, T))
        lengths = rng.integers(1, T + 1, B)
        (got,) = session.run(None, {"x": ids, "lengths": lengths})
        worst = max(worst, _worst([(got, model.predict(ids, lengths=lengths))]))
    ops = {}
    for node in exported.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return worst, ops, [layer.name for layer in model.layers]


def main():
    rng = np.random.default_rng(0)
    print(f"keras {keras.__version__} ({keras.backend.backend()}), onnxruntime "
          f"{ort.__version__}, float32; shapes (T, B) {SHAPES}, I={I}, H={H}")
    print(f"{'kind':<26}{'vs Keras':>12}{'vs onnxruntime':>18}")
    with tempfile.TemporaryDirectory() as folder:
        for kind in KINDS:
            print(f"{kind:<26}{keras_errors(rng, kind):>12.2e}"
                  f"{onnx_errors(rng, kind, folder):>18.2e}")
        worst, ops, names = sequential_report(rng, folder)
    print(f"Sequential {names} vs onnxruntime: {worst:.2e}")
    print("its ONNX operators (count): " + ", ".join(f"{k} ({v})" for k, v in
                                                      sorted(ops.items())))


if __name__ == "__main__":
    main()
