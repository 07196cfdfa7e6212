"""ONNX export and import of recurrent layers and Sequential models.

Needs the `onnx` package (pip install "numlstm[interop]"); numlstm imports this
module only when export_onnx or import_onnx is called.

What a file holds (opset 17, dynamic `batch` and `time` axes):

    LSTM, GRU, RNN   one ONNX LSTM / GRU / RNN operator per layer (not unrolled), with
                     the num_directions axis; W, R, B are the packer's "onnx" layout;
                     an LSTM's input_forget and gate_clip are the node's input_forget
                     and clip, its peepholes the P input and its activation and
                     recurrent_activation the activations [f, g, h] = [recurrent,
                     activation, activation] (HardSigmoid with alpha 1/6, beta 1/2;
                     a user's function is refused). An LSTM with cell_clip is
                     refused: ONNX's clip bounds the gate pre-activations, not the
                     cell state (onnxruntime computes so), which is numlstm's
                     gate_clip.
                     A GRU with reset_after=True is a GRU node with
                     linear_before_reset=1, its activations [f, g] = [recurrent,
                     activation] as the LSTM's. Between stacked layers, Transpose and
                     Reshape turn Y [T,D,B,H] into the next layer's [T,B,D*H].
    lengths          an int64 input "lengths" [batch] (with lengths=True), cast to
                     int32 and passed to every recurrent node as sequence_lens
    Embedding        Gather (weight [V,E], ids)
    Dense            MatMul (x, weight^T) and Add (bias), then Relu/Tanh/Sigmoid
    Dropout          nothing: it is the identity at inference
    merge modes      Gather of each direction, then Add / Mul (ave: Add, Mul by 0.5)

A layer's file has input "x" ([time,batch,I], or [batch,time,I] with batch_first),
optionally "lengths", "h0" and "c0" ([L*D,batch,H], with initial_state=True), and
outputs "y" (or "y_forward" and "y_backward" for merge_mode=None), "h_n" (and
"c_n"). A Sequential model's file has input "x" (token ids int64 [batch,time] after
an Embedding, else [batch,time,F] or [batch,F]), optionally "lengths", and output
"y", what predict() returns.

Every file is float32 unless dtype=np.float64 is asked for: onnxruntime (1.32)
runs its LSTM, GRU and RNN operators in float32 only. The metadata entry
"numlstm" holds the layer or model configuration, so that import_onnx rebuilds
the same object and reads its weights back from the file's initializers.
"""
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .files import write_atomically
from .layers import LAYER_TYPES, Dense, Dropout, Embedding, Recurrent
from .model import Sequential

OPSET = 17
FORMAT, VERSION = "numlstm-onnx", 1
_ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}
_OPS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
_ACTIVATIONS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}
# The LSTM's and GRU's activations as ONNX names them, with (alpha, beta) where ONNX's
# default differs from numlstm's: HardSigmoid defaults to alpha 0.2, numlstm's slope is 1/6.
_GATE_ACTIVATIONS = {"sigmoid": ("Sigmoid", None), "tanh": ("Tanh", None),
                    "relu": ("Relu", None), "hard_sigmoid": ("HardSigmoid", (1 / 6, 0.5))}


class _Graph:
    """Nodes and initializers of one graph, with fresh names for intermediate values."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.nodes, self.inits, self._n = [], [], 0

    def const(self, name, value, dtype=None):
        arr = np.array(value, dtype or self.dtype, order="C")  # keeps 0-d arrays 0-d
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, values):
        return self.const(self._fresh("const"), np.array(values, np.int64), np.int64)

    def _fresh(self, base):
        self._n += 1
        return f"{base}_{self._n}"

    def op(self, op, inputs, outputs=1, name=None, **attrs):
        """Add a node; returns its output name (or names when outputs > 1 or a list)."""
        if isinstance(outputs, int):
            outs = [self._fresh(op.lower()) for _ in range(outputs)]
        else:
            outs = list(outputs)
        self.nodes.append(helper.make_node(op, list(inputs), outs,
                                           name=name or self._fresh(op), **attrs))
        return outs[0] if len(outs) == 1 else outs


# -- the pieces of a graph --------------------------------------------------------------
def _recurrent(g, layer, x, prefix, lens=None, h0=None, c0=None):
    """x [T,B,I] (time-major) through every layer of `layer` -> (Y of the top layer
    [T,D,B,H], [Y_h per layer], [Y_c per layer])."""
    s = layer.spec
    D, H = s.directions, s.hidden_size
    attrs = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
    if s.cell == "gru":
        attrs["linear_before_reset"] = int(s.reset_after)
    if s.cell == "rnn":
        attrs["activations"] = ["Relu" if s.nonlinearity == "relu" else "Tanh"] * D
    if s.cell == "lstm" and s.input_forget:
        attrs["input_forget"] = 1
    if s.cell == "lstm" and s.gate_clip is not None:
        attrs["clip"] = float(s.gate_clip)
    if s.cell != "rnn" and (s.activation, s.recurrent_activation) != ("tanh", "sigmoid"):
        # LSTM [f, g, h] = [gates, candidate, cell output]; GRU [f, g] = [r and z, n]
        names = (s.recurrent_activation, s.activation) + (
            (s.activation,) if s.cell == "lstm" else ())
        fgh = [_GATE_ACTIVATIONS[n] for n in names] * D
        attrs["activations"] = [name for name, _ in fgh]
        params = [p for _, p in fgh if p is not None]  # consumed in order by those
        if params:                                     # that take them (HardSigmoid)
            attrs["activation_alpha"] = [p[0] for p in params]
            attrs["activation_beta"] = [p[1] for p in params]
    hs, cs, y = [], [], None
    for l, weights in enumerate(layer.export_weights("onnx")):
        if l:  # Y [T,D,B,H] -> [T,B,D*H]
            x = g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1, 3]),
                                 g.ints([0, 0, D * H])])
        inputs = [x] + [g.const(f"{prefix}.{k}_l{l}", weights[k]) for k in "WRB"]
        inputs.append(lens or "")
        for state in (h0, c0)[:2 if s.cell == "lstm" else 1]:
            inputs.append("" if state is None else g.op(
                "Slice", [state, g.ints([l * D]), g.ints([(l + 1) * D]), g.ints([0])]))
        if s.cell == "lstm" and s.peephole:
            inputs += [""] * (7 - len(inputs)) + [g.const(f"{prefix}.P_l{l}", weights["P"])]
        outs = g.op(_OPS[s.cell], inputs, 3 if s.cell == "lstm" else 2,
                    name=f"{prefix}/{_OPS[s.cell]}_l{l}", **attrs)
        y, hs = outs[0], hs + [outs[1]]
        cs += outs[2:]
    return y, hs, cs


def _direction(g, arr, d, axis):
    return g.op("Gather", [arr, g.ints(d)], axis=axis)


def _merge(g, pair, mode, dtype):
    a, b = pair
    if mode == "concat":
        return g.op("Concat", [a, b], axis=-1)
    if mode == "mul":
        return g.op("Mul", [a, b])
    total = g.op("Add", [a, b])
    if mode == "ave":
        return g.op("Mul", [total, g.const(g._fresh("half"), 0.5)])
    return total


def _sequence_out(g, layer, y):
    """The top layer's Y [T,D,B,H] -> the layer's y [T,B,W] (a pair for merge None)."""
    s = layer.spec
    if s.directions == 1:
        return g.op("Squeeze", [y, g.ints([1])])
    if layer.merge_mode == "concat":
        return g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1, 3]),
                                g.ints([0, 0, 2 * s.hidden_size])])
    pair = [_direction(g, y, d, 1) for d in range(2)]
    return pair if layer.merge_mode is None else _merge(g, pair, layer.merge_mode, g.dtype)


def _last_out(g, layer, y_h):
    """The top layer's Y_h [D,B,H] -> the output at each sequence's last valid step
    [B,W] (the reverse direction's after reading the whole sequence)."""
    if layer.spec.directions == 1:
        return _direction(g, y_h, 0, 0)
    pair = [_direction(g, y_h, d, 0) for d in range(2)]
    return _merge(g, pair, layer.merge_mode, g.dtype)


def _dense(g, layer, x, prefix):
    w = g.const(f"{prefix}.weight_T", layer.params["weight"].T)
    out = g.op("Add", [g.op("MatMul", [x, w]), g.const(f"{prefix}.bias", layer.params["bias"])])
    if layer.activation:
        out = g.op(_ACTIVATIONS[layer.activation], [out])
    return out


def _value(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _dims(shape, names=("batch", "time")):
    """A shape with None sizes named batch, time (in that order)."""
    names = iter(names)
    return [next(names) if d is None else int(d) for d in shape]


# -- export -----------------------------------------------------------------------------
def _check_exportable(layer):
    s = layer.spec
    if s.cell != "rnn" and not all(isinstance(a, str) for a in (s.activation,
                                                               s.recurrent_activation)):
        raise ValueError(f"export_onnx: this {s.cell.upper()} uses a user's activation "
                         f"function, which ONNX's {s.cell.upper()} operator cannot name")
    if layer.spec.cell == "lstm" and layer.spec.cell_clip is not None:
        raise ValueError("export_onnx: this LSTM clips its cell state (cell_clip), which "
                         "ONNX cannot say: the LSTM operator's clip bounds the gate "
                         "pre-activations instead (onnxruntime computes it so), which is "
                         "numlstm's gate_clip")
    if getattr(layer, "zoneout", 0):
        cell = layer.spec.cell.upper()
        raise ValueError(f"export_onnx: this {cell} uses zoneout, which mixes the old state "
                         f"into the new one at inference too; ONNX's {cell} operator cannot "
                         "say that")


def _layer_graph(g, layer, lengths, initial_state):
    s = layer.spec
    L, D, H, I = s.num_layers, s.directions, s.hidden_size, s.input_size
    elem = _ELEM[g.dtype]
    seq = ["batch", "time"] if layer.batch_first else ["time", "batch"]
    inputs = [_value("x", elem, seq + [I])]
    x = g.op("Transpose", ["x"], perm=[1, 0, 2]) if layer.batch_first else "x"
    lens = h0 = c0 = None
    if lengths:
        inputs.append(_value("lengths", TensorProto.INT64, ["batch"]))
        lens = g.op("Cast", ["lengths"], to=TensorProto.INT32)
    if initial_state:
        h0 = "h0"
        inputs.append(_value("h0", elem, [L * D, "batch", H]))
        if s.cell == "lstm":
            c0 = "c0"
            inputs.append(_value("c0", elem, [L * D, "batch", H]))
    prefix = layer.name or s.cell
    y, hs, cs = _recurrent(g, layer, x, prefix, lens, h0, c0)
    ys = _sequence_out(g, layer, y)
    names = ["y_forward", "y_backward"] if isinstance(ys, list) else ["y"]
    ys = ys if isinstance(ys, list) else [ys]
    width = H if len(names) == 2 else layer.output_size
    outputs = []
    for name, value in zip(names, ys):
        perm = [1, 0, 2] if layer.batch_first else None
        g.op("Transpose" if perm else "Identity", [value], [name],
             **({"perm": perm} if perm else {}))
        outputs.append(_value(name, elem, seq + [width]))
    for name, parts in (("h_n", hs), ("c_n", cs)):
        if parts:
            g.op("Concat" if len(parts) > 1 else "Identity", parts, [name],
                 **({"axis": 0} if len(parts) > 1 else {}))
            outputs.append(_value(name, elem, [L * D, "batch", H]))
    return inputs, outputs


def _sequential_graph(g, model, lengths):
    elem = _ELEM[g.dtype]
    shape = model._input_shape()
    if shape is None:
        raise ValueError("export_onnx: the model has only Dropout layers; there is "
                         "nothing to export")
    first = next(l for l in model.layers if not isinstance(l, Dropout))
    is_ids = isinstance(first, Embedding)
    inputs = [_value("x", TensorProto.INT64 if is_ids else elem, _dims(shape))]
    lens = None
    if lengths:
        inputs.append(_value("lengths", TensorProto.INT64, ["batch"]))
        lens = g.op("Cast", ["lengths"], to=TensorProto.INT32)
    x, time_major = "x", False  # time_major: x holds [T,B,...] rather than [B,T,...]
    sequence = len(shape) >= (2 if is_ids else 3)
    for layer in model.layers:
        prefix = layer.name
        if isinstance(layer, Dropout):
            continue
        if isinstance(layer, Embedding):
            if sequence and not time_major:
                x, time_major = g.op("Transpose", [x], perm=[1, 0]), True
            x = g.op("Gather", [g.const(f"{prefix}.weight", layer.params["weight"]), x],
                     axis=0)
        elif isinstance(layer, Dense):
            x = _dense(g, layer, x, prefix)
        elif isinstance(layer, Recurrent):
            if not time_major:
                x, time_major = g.op("Transpose", [x], perm=[1, 0, 2]), True
            y, hs, _ = _recurrent(g, layer, x, prefix, lens)
            if layer.return_sequences:
                x = _sequence_out(g, layer, y)
            else:
                x, time_major, sequence = _last_out(g, layer, hs[-1]), False, False
        else:
            raise TypeError(f"export_onnx: no ONNX form for {type(layer).__name__}")
    if sequence and time_major:
        x = g.op("Transpose", [x], perm=[1, 0, 2])
    g.op("Identity", [x], ["y"])
    return inputs, [_value("y", elem, _dims(model._shapes[-1]))]


def export_onnx(obj, path, lengths=False, initial_state=False, dtype=None):
    """Write a layer (LSTM, GRU, RNN) or a Sequential model to `path` as ONNX.

    lengths: add an int64 input "lengths" [batch] (each sequence's valid steps),
        passed to the recurrent operators as sequence_lens; without it every
        sequence runs for the whole time axis.
    initial_state: (layers only) add inputs "h0" (and "c0") [L*D,batch,H]; without
        them the state starts at zero.
    dtype: the file's floating type, np.float32 (None, the default: what onnxruntime
        runs) or np.float64.

    The model is checked with onnx.checker (full check, with shape inference)
    before it is written; the file is written atomically. Returns the ModelProto.
    See this module's docstring for the inputs, outputs and operators.
    """
    dtype = np.float32 if dtype is None else dtype
    try:
        ok = np.dtype(dtype) in _ELEM
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(f"dtype: expected np.float32 or np.float64, got {dtype!r}")
    for name, flag in (("lengths", lengths), ("initial_state", initial_state)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{name}: expected True or False, got {type(flag).__name__}")
    g = _Graph(dtype)
    for layer in (obj.layers if isinstance(obj, Sequential) else [obj]):
        if isinstance(layer, Recurrent):
            _check_exportable(layer)
    if isinstance(obj, Recurrent):
        kind, config = "layer", {"type": type(obj).__name__, "name": obj.name,
                                 "config": {**obj.get_config(),
                                            "dtype": np.dtype(dtype).name}}
        inputs, outputs = _layer_graph(g, obj, lengths, initial_state)
    elif isinstance(obj, Sequential):
        if initial_state:
            raise ValueError("export_onnx: initial_state=True is for a single recurrent "
                             "layer; a Sequential model's layers start at zero")
        config = obj.get_config()
        for entry in config["layers"]:
            if "dtype" in entry["config"]:
                entry["config"]["dtype"] = np.dtype(dtype).name
        kind = "sequential"
        inputs, outputs = _sequential_graph(g, obj, lengths)
    else:
        raise TypeError(f"export_onnx: expected an LSTM, GRU or RNN layer or a Sequential "
                        f"model, got {type(obj).__name__}")
    graph = helper.make_graph(g.nodes, "numlstm", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="numlstm", ir_version=8)
    meta = {"format": FORMAT, "version": VERSION, "kind": kind, "config": config,
            "lengths": bool(lengths), "initial_state": bool(initial_state)}
    helper.set_model_props(model, {"numlstm": json.dumps(meta)})
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    write_atomically(os.fspath(path), lambda f: f.write(data))
    return model


# -- import -----------------------------------------------------------------------------
def _load_layer(layer, prefix, inits):
    def take(name):
        if name not in inits:
            raise ValueError(f"import_onnx: the file has no initializer {name!r} for layer "
                             f"{prefix!r}")
        return inits[name]

    if isinstance(layer, Recurrent):
        keys = "WRBP" if layer.spec.peephole else "WRB"
        layer.load_weights([{k: take(f"{prefix}.{k}_l{l}") for k in keys}
                            for l in range(layer.num_layers)], "onnx")
    elif isinstance(layer, Dense):
        layer.load_params({"weight": take(f"{prefix}.weight_T").T,
                           "bias": take(f"{prefix}.bias")})
    elif isinstance(layer, Embedding):
        layer.load_params({"weight": take(f"{prefix}.weight")})


def import_onnx(path):
    """Read a file written by export_onnx back: the layer or Sequential model, with the
    file's weights (read from its initializers) in the file's dtype. A file that is
    not one (unreadable, damaged, another program's) raises ValueError saying so."""
    path = os.fspath(path)
    try:
        model = onnx.load(path)
    except OSError:
        raise
    except Exception as err:  # protobuf's DecodeError and kin
        raise ValueError(f"import_onnx: {path} is not a readable ONNX file "
                         f"({type(err).__name__}: {err})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "numlstm" not in props:
        raise ValueError(f"import_onnx: {path} was not written by numlstm.export_onnx (it "
                         "has no 'numlstm' metadata entry)")
    try:
        meta = json.loads(props["numlstm"])
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or \
            meta.get("version") != VERSION:
        got = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else meta
        raise ValueError(f"import_onnx: expected {path}'s 'numlstm' metadata to be format "
                         f"{FORMAT!r} version {VERSION}, got {got!r}")
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    try:
        if meta.get("kind") == "layer":
            entry = meta["config"]
            if entry["type"] not in ("LSTM", "GRU", "RNN"):
                raise ValueError(f"unknown layer type {entry['type']!r}")
            obj = LAYER_TYPES[entry["type"]](**entry["config"])
            obj.name = entry["name"]
            _load_layer(obj, obj.name or obj.cell, inits)
            return obj
        if meta.get("kind") != "sequential":
            raise ValueError(f"unknown kind {meta.get('kind')!r}")
        obj = Sequential.from_config(meta["config"])
        for layer in obj.layers:
            _load_layer(layer, layer.name, inits)
        return obj
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"import_onnx: {path}'s numlstm metadata does not describe a "
                         f"model it can rebuild ({type(err).__name__}: {err})") from None
