"""Weight layouts as descriptors, one converter between any two, and kernel packing.

Dimensions: I input features of a layer, H hidden units, G = 4H (LSTM), 3H (GRU)
or H (RNN), L layers, D directions (1 or 2).

A layout is described by four facts (Layout below), not by a hand-written pair
of converters; a new framework is one more descriptor:

    gate_order   per cell, the order of the gate blocks in torch's letters
                 (LSTM: i input, f forget, g cell candidate, o output;
                 GRU: r reset, z update, n new; RNN: one block, h)
    orientation  "out_in": W [G,in] as torch and ONNX; "in_out": W [in,G] as Keras
    bias         per cell, "two": b_ih and b_hh; "one": their sum;
                 "rows": b_ih and b_hh stacked as one [2,G] array (Keras's GRU with
                 reset_after=True); "concat": [b_ih, b_hh] as one 2G vector (ONNX's B)
    container    how the arrays of all layers and directions are held

| layout | cell | gate order | W_ih      | W_hh      | bias                      | container        |
|--------|------|------------|-----------|-----------|---------------------------|------------------|
| torch  | LSTM | i,f,g,o    | [G,I]     | [G,H]     | b_ih [G], b_hh [G]        | dict, state_dict |
|        | GRU  | r,z,n      |           |           |                           | names            |
|        | RNN  | -          |           |           |                           |                  |
| keras  | LSTM | i,f,c,o    | [I,G]     | [H,G]     | bias [G]                  | per layer: the   |
|        | GRU  | z,r,h      |           |           | [2,G] (reset_after=True)  | list a layer's   |
|        |      |            |           |           | [G] (reset_after=False)   | get_weights()    |
|        | RNN  | -          |           |           | [G]                       | returns          |
| onnx   | LSTM | i,o,f,c    | W [D,G,I] | R [D,G,H] | B [D,2G] = [Wb, Rb]       | per layer:       |
|        | GRU  | z,r,h      |           |           |                           | {"W","R","B"}    |
|        | RNN  | -          |           |           |                           |                  |
| haste  | LSTM | i,g,f,o    | [I,G]     | [H,G]     | bias [G]                  | as keras, in     |
|        | GRU  | z,r,h      |           |           | bias [G], recurrent_bias  | haste's order of |
|        |      |            |           |           | [G] (reset after only)    | parameters       |

A projected LSTM (proj_size) has one more array per cell, torch's weight_hr [P,H]
(and W_hh [G,P]); torch's layout alone holds it, and the others refuse such a layer.
An LSTM with peepholes has weight_peephole [3H] per cell (torch has no name for it:
numlstm's, in the order i, f, o); ONNX holds it as the LSTM operator's P input
[D,3H] (order i, o, f), and the Keras and haste layouts refuse such a layer. A
layer-normalised LSTM (layer_norm) has four more per cell, in numlstm's names:
weight_ln_ih, weight_ln_hh [G] and weight_ln_c, bias_ln_c [H] (a layer-normalised
GRU the first two); torch's layout alone holds them.

torch's layout is the canonical one: the layer stores its parameters that way,
and every conversion goes through it, so `convert` between any two layouts is
from_canonical(to_canonical(...)). A one-bias layout carries only the sum
b_ih + b_hh: importing it sets b_ih to the sum and b_hh to zero, which computes
the same function for the LSTM, the RNN and the GRU with reset_after=False (all
biases outside any product). A GRU with reset_after=True multiplies b_hn by r,
so its two biases cannot be summed: Keras keeps them as two rows, and exporting
it to a one-bias layout is refused.

Containers: for Keras, export gives one list per layer ([kernel, recurrent_kernel,
bias], then the same three for the backward direction when bidirectional, as a
`Bidirectional` wrapper's get_weights() returns them); import also takes a bare
list when there is one layer. For ONNX, export gives one {"W","R","B"} dict per
layer (one ONNX LSTM/GRU/RNN node each; a GRU node with linear_before_reset=1 for
reset_after=True); import also takes a bare dict for one layer. haste (LMNT's CUDA
LSTM and GRU) keeps one layer and direction per module, with parameters kernel,
recurrent_kernel, bias (and recurrent_bias for its GRU, which applies the reset
gate after the product, torch's form); its lists follow the Keras container. It
has no Elman RNN and no GRU with reset_after=False, and refuses both.
"""
from dataclasses import dataclass

import numpy as np

from .kernels.gates import make_acts
from .kernels.reference import GRU_GATE_ORDER, LSTM_GATE_ORDER
from .kernels.table import GATES

# The canonical (torch) gate order of each cell.
CANONICAL_ORDER = {"lstm": LSTM_GATE_ORDER, "gru": GRU_GATE_ORDER, "rnn": "h"}


@dataclass(frozen=True, eq=False)
class Layout:
    name: str
    gate_order: dict  # cell -> order in torch's letters
    orientation: str  # "out_in" | "in_out"
    bias: dict        # cell (or "gru:reset_before") -> "two" | "one" | "rows" | "concat"
    container: str    # "named" | "keras" | "onnx" | "cells"

    def bias_for(self, spec):
        """The bias convention of this layout for the cells of spec."""
        if spec.cell == "gru" and not spec.reset_after and "gru:reset_before" in self.bias:
            return self.bias["gru:reset_before"]
        return self.bias[spec.cell]

    def check(self, spec):
        """Refuse a cell (or GRU form) this layout cannot hold, saying which."""
        if spec.cell not in self.gate_order:
            raise ValueError(f"layout {self.name!r} has no {spec.cell.upper()} cell; it "
                             f"holds {', '.join(c.upper() for c in self.gate_order)}")
        if self.bias_for(spec) is None:
            raise ValueError(f"layout {self.name!r} has no GRU with reset_after=False")
        if spec.proj_size and self.container not in ("named", "cells"):
            raise ValueError(f"layout {self.name!r} has no recurrent projection "
                             f"(proj_size={spec.proj_size}); only the torch layout holds "
                             "weight_hr")
        if spec.peephole and self.container not in ("named", "cells", "onnx"):
            raise ValueError(f"layout {self.name!r} has no peepholes; the torch layout "
                             "(weight_peephole) and ONNX's (P) hold them")
        if spec.layer_norm and self.container not in ("named", "cells"):
            raise ValueError(f"layout {self.name!r} has no layer-normalised "
                             f"{spec.cell.upper()}; only the torch layout holds its gains "
                             "(weight_ln_ih, ...)")
        return self


def _same(value):
    return {cell: value for cell in CANONICAL_ORDER}


LAYOUTS = {
    "torch": Layout("torch", dict(CANONICAL_ORDER), "out_in", _same("two"), "named"),
    "keras": Layout("keras", {"lstm": "ifgo", "gru": "zrn", "rnn": "h"}, "in_out",
                    {"lstm": "one", "gru": "rows", "gru:reset_before": "one", "rnn": "one"},
                    "keras"),
    "onnx": Layout("onnx", {"lstm": "iofg", "gru": "zrn", "rnn": "h"}, "out_in",
                   _same("concat"), "onnx"),
    "haste": Layout("haste", {"lstm": "igfo", "gru": "zrn"}, "in_out",
                    {"lstm": "one", "gru": "two", "gru:reset_before": None}, "keras"),
}


# A layer-normalised LSTM's parameters per cell (layers.LSTM's layer_norm): the gains
# of the input and recurrent products [G], and the cell state's gain and bias [H]; the
# GRU's: the first two.
LAYER_NORM_PARAMS = ("weight_ln_ih", "weight_ln_hh", "weight_ln_c", "bias_ln_c")


@dataclass(frozen=True)
class RecurrentSpec:
    """The shapes and cell that fix a stack of recurrent layers.

    cell: "lstm", "gru" or "rnn"; reset_after: the GRU's form (see layers.GRU);
    nonlinearity: the RNN's activation, "tanh" or "relu"; cell_clip, gate_clip (None
    or a number > 0), input_forget, proj_size (0 for none), peephole, activation and
    recurrent_activation (names of gates.ACTIVATIONS, or a user's pair of functions),
    layer_norm: the LSTM's options (see layers.LSTM; the GRU has the activations and
    layer_norm too).
    """
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    cell: str = "lstm"
    reset_after: bool = True
    nonlinearity: str = "tanh"
    cell_clip: float = None
    input_forget: bool = False
    gate_clip: float = None
    proj_size: int = 0
    peephole: bool = False
    activation: object = "tanh"
    recurrent_activation: object = "sigmoid"
    layer_norm: bool = False

    @property
    def out_size(self):
        """Units of h and of each direction's output: proj_size, else hidden_size (torch's
        real hidden size); the cell state c keeps hidden_size."""
        return self.proj_size or self.hidden_size

    def kernel_options(self):
        """The options a cell's kernels take, as keyword arguments of pack_<cell>_*."""
        return {"lstm": dict(cell_clip=self.cell_clip, input_forget=self.input_forget,
                             gate_clip=self.gate_clip,
                             acts=make_acts(self.recurrent_activation, self.activation)),
                "gru": dict(reset_after=self.reset_after,
                            acts=make_acts(self.recurrent_activation, self.activation)),
                "rnn": dict(nonlinearity=self.nonlinearity)}[self.cell]

    @property
    def directions(self):
        return 2 if self.bidirectional else 1

    @property
    def gates(self):
        """G / H: the number of gate blocks."""
        return GATES[self.cell]

    def layer_input_size(self, layer):
        return self.input_size if layer == 0 else self.directions * self.out_size

    def cells(self):
        """(layer, direction) pairs in torch's order."""
        return [(l, d) for l in range(self.num_layers) for d in range(self.directions)]

    def torch_shapes(self):
        """{name: shape} of every parameter in the torch layout, in state_dict order."""
        H, G = self.hidden_size, self.gates * self.hidden_size
        shapes = {}
        for l, d in self.cells():
            sfx = torch_suffix(l, d)
            shapes["weight_ih" + sfx] = (G, self.layer_input_size(l))
            shapes["weight_hh" + sfx] = (G, self.out_size)
            shapes["bias_ih" + sfx] = (G,)
            shapes["bias_hh" + sfx] = (G,)
            if self.proj_size:
                shapes["weight_hr" + sfx] = (self.proj_size, H)
            if self.peephole:
                shapes["weight_peephole" + sfx] = (3 * H,)
            shapes.update({name + sfx: (G,) if name.endswith(("ih", "hh")) else (H,)
                           for name in self.layer_norm_params()})
        return shapes

    def extras(self):
        """The names of a cell's parameters past the four of every cell, in the order
        the "cells" container appends them (the packers' keywords w_hr, peephole, ln_ih,
        ln_hh, ln_c, ln_c_bias)."""
        return [name for name, on in (("weight_hr", self.proj_size),
                                      ("weight_peephole", self.peephole)) if on] + list(
            self.layer_norm_params())

    def layer_norm_params(self):
        """layer_norm's parameter names of a cell (LAYER_NORM_PARAMS's: the LSTM's four,
        the GRU's first two), or () without it."""
        if not self.layer_norm:
            return ()
        return LAYER_NORM_PARAMS if self.cell == "lstm" else LAYER_NORM_PARAMS[:2]


LSTMSpec = RecurrentSpec  # the name the LSTM-only versions used


def torch_suffix(layer, direction):
    return f"_l{layer}" + ("_reverse" if direction else "")


def get_layout(layout):
    if isinstance(layout, Layout):
        return layout
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[layout]


def as_array(value, what, dtype=None):
    """A NumPy copy of value (NumPy array, torch tensor, list), refusing non-numbers."""
    if hasattr(value, "detach"):  # torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    arr = np.array(value, copy=True)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{what}: expected a real numeric array, got dtype {arr.dtype}")
    return arr.astype(dtype) if dtype is not None else arr


def permute_gates(w, src_order, dst_order, axis=0):
    """Reorder the gate blocks of w along axis from src_order to dst_order."""
    if src_order == dst_order:
        return w
    blocks = np.split(w, len(src_order), axis=axis)
    by_gate = dict(zip(src_order, blocks))
    return np.concatenate([by_gate[g] for g in dst_order], axis=axis)


def _cell_from_canonical(w_ih, w_hh, b_ih, b_hh, layout, spec):
    """One direction of one layer: torch arrays -> (W_ih, W_hh, *biases) of layout."""
    src, order = CANONICAL_ORDER[spec.cell], layout.gate_order[spec.cell]
    w_ih, w_hh, b_ih, b_hh = (permute_gates(a, src, order) for a in (w_ih, w_hh, b_ih, b_hh))
    if layout.orientation == "in_out":
        w_ih, w_hh = w_ih.T, w_hh.T
    bias = layout.bias_for(spec)
    if bias == "two":
        biases = (b_ih, b_hh)
    elif bias == "rows":
        biases = (np.stack([b_ih, b_hh]),)
    elif bias == "one":
        if spec.cell == "gru" and spec.reset_after:
            raise ValueError(f"layout {layout.name!r} keeps one bias vector, which cannot "
                             "hold a GRU with reset_after=True (b_hn is multiplied by r)")
        biases = (b_ih + b_hh,)
    else:
        biases = (np.concatenate([b_ih, b_hh]),)
    return (np.ascontiguousarray(w_ih), np.ascontiguousarray(w_hh)) + tuple(
        np.ascontiguousarray(b) for b in biases)


def _cell_to_canonical(w_ih, w_hh, biases, layout, spec):
    """Inverse of _cell_from_canonical."""
    if layout.orientation == "in_out":
        w_ih, w_hh = w_ih.T, w_hh.T
    bias = layout.bias_for(spec)
    if bias in ("two", "rows"):
        b_ih, b_hh = biases if bias == "two" else biases[0]
    elif bias == "one":
        b_ih, b_hh = biases[0], np.zeros_like(biases[0])
    else:
        b_ih, b_hh = np.split(biases[0], 2)
    order, dst = layout.gate_order[spec.cell], CANONICAL_ORDER[spec.cell]
    return tuple(np.ascontiguousarray(permute_gates(a, order, dst))
                 for a in (w_ih, w_hh, b_ih, b_hh))


def _expect_shape(arr, shape, what):
    if arr.shape != tuple(shape):
        raise ValueError(f"{what}: expected shape {tuple(shape)}, got {arr.shape}")


def _cell_shapes(spec, layer, layout):
    """Expected shapes of (W_ih, W_hh, *biases) of one cell in layout."""
    I, H, G = spec.layer_input_size(layer), spec.out_size, spec.gates * spec.hidden_size
    w_ih, w_hh = ((G, I), (G, H)) if layout.orientation == "out_in" else ((I, G), (H, G))
    biases = {"two": [(G,), (G,)], "one": [(G,)], "rows": [(2, G)],
              "concat": [(2 * G,)]}[layout.bias_for(spec)]
    return [w_ih, w_hh] + biases


def from_canonical(params, layout, spec):
    """torch-layout parameters {name: array} -> the structure of `layout`."""
    layout = get_layout(layout).check(spec)
    cells = {(l, d): _cell_from_canonical(*(params[p + torch_suffix(l, d)] for p in (
        "weight_ih", "weight_hh", "bias_ih", "bias_hh")), layout, spec)
        for l, d in spec.cells()}
    # W_hr [P,H] and the peepholes [3H] as they are (Layout.check: the layouts without
    # them refuse such a layer)
    extras = spec.extras()
    cells = {c: arrays + tuple(np.ascontiguousarray(params[n + torch_suffix(*c)])
                               for n in extras)
             for c, arrays in cells.items()}
    if layout.container == "named":
        out = {}
        for (l, d), arrays in cells.items():
            sfx = torch_suffix(l, d)
            out.update({p + sfx: a for p, a in zip(
                ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] + extras, arrays)})
        return out
    if layout.container == "keras":
        return [[a for d in range(spec.directions) for a in cells[l, d]]
                for l in range(spec.num_layers)]
    if layout.container == "onnx":
        out = [{k: np.stack([cells[l, d][n] for d in range(spec.directions)])
                for n, k in enumerate("WRB")} for l in range(spec.num_layers)]
        if spec.peephole:  # ONNX's P: [D,3H], i, o, f
            for l, entry in enumerate(out):
                entry["P"] = np.stack([permute_gates(cells[l, d][-1], "ifo", "iof")
                                       for d in range(spec.directions)])
        return out
    if layout.container == "cells":
        return [cells[c] for c in spec.cells()]
    raise ValueError(f"layout {layout.name!r} has an unknown container {layout.container!r}")


def _per_layer(weights, spec, kind, is_entry):
    """Accept a list with one entry per layer, or a bare entry for a one-layer stack."""
    if spec.num_layers == 1 and is_entry(weights):
        return [weights]
    if not isinstance(weights, (list, tuple)):
        raise TypeError(f"{kind} weights: expected a list with one entry per layer "
                        f"({spec.num_layers}), got {type(weights).__name__}")
    if len(weights) != spec.num_layers:
        raise ValueError(f"{kind} weights: expected {spec.num_layers} layer entries, "
                         f"got {len(weights)}")
    return list(weights)


def _is_keras_entry(w):
    """A layer's get_weights() list: arrays, not lists of arrays."""
    return isinstance(w, (list, tuple)) and len(w) > 0 and not isinstance(w[0], (list, tuple))


def to_canonical(weights, layout, spec, dtype):
    """The structure of `layout` -> torch-layout parameters {name: array of dtype}.

    Checks every name and shape before converting anything, and raises
    ValueError/TypeError saying what was expected and what came.
    """
    layout = get_layout(layout).check(spec)
    cells, peepholes = {}, {}
    if layout.container == "named":
        if not hasattr(weights, "keys"):
            raise TypeError(f"torch weights: expected a dict of arrays (a state_dict), "
                            f"got {type(weights).__name__}")
        shapes = spec.torch_shapes()
        missing = [k for k in shapes if k not in weights]
        extra = [k for k in weights if k not in shapes]
        if missing or extra:
            raise ValueError(f"torch weights: missing {missing}, unexpected {extra}")
        arrays = {k: as_array(weights[k], k, dtype) for k in shapes}
        for k, shape in shapes.items():
            _expect_shape(arrays[k], shape, k)
        return arrays
    if layout.container == "keras":
        layers = _per_layer(weights, spec, layout.name, _is_keras_entry)
        per_dir = len(_cell_shapes(spec, 0, layout))
        names = "kernel, recurrent_kernel, bias" + (", recurrent_bias" if per_dir == 4
                                                    else "")
        for l, entry in enumerate(layers):
            want = per_dir * spec.directions
            if len(entry) != want:
                raise ValueError(f"{layout.name} weights of layer {l}: expected {want} "
                                 f"arrays ({names} per direction), got {len(entry)}")
            for d in range(spec.directions):
                arrs = [as_array(a, f"{layout.name} layer {l} array {d * per_dir + n}",
                                 dtype)
                        for n, a in enumerate(entry[d * per_dir:(d + 1) * per_dir])]
                cells[l, d] = arrs
    elif layout.container == "onnx":
        layers = _per_layer(weights, spec, "onnx", lambda w: isinstance(w, dict))
        keys = "WRBP" if spec.peephole else "WRB"
        for l, entry in enumerate(layers):
            if not isinstance(entry, dict) or set(entry) != set(keys):
                got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
                raise ValueError(f"onnx weights of layer {l}: expected a dict with keys "
                                 f"{', '.join(map(repr, keys))}, got {got}")
            stacked = {k: as_array(entry[k], f"onnx layer {l} {k}", dtype) for k in keys}
            for k, a in stacked.items():
                if a.ndim < 1 or a.shape[0] != spec.directions:
                    raise ValueError(f"onnx layer {l} {k}: expected num_directions="
                                     f"{spec.directions} on axis 0, got shape {a.shape}")
            if spec.peephole:
                _expect_shape(stacked["P"], (spec.directions, 3 * spec.hidden_size),
                              f"onnx layer {l} P")
            for d in range(spec.directions):
                cells[l, d] = [stacked[k][d] for k in "WRB"]
                if spec.peephole:
                    peepholes[l, d] = permute_gates(stacked["P"][d], "iof", "ifo")
    else:
        raise ValueError(f"layout {layout.name!r} cannot be imported")
    for (l, d), arrs in cells.items():
        for n, (a, shape) in enumerate(zip(arrs, _cell_shapes(spec, l, layout))):
            _expect_shape(a, shape, f"{layout.name} layer {l} direction {d} array {n}")
    params = {}
    for (l, d), arrs in cells.items():
        w_ih, w_hh, b_ih, b_hh = _cell_to_canonical(arrs[0], arrs[1], arrs[2:], layout, spec)
        sfx = torch_suffix(l, d)
        params.update({"weight_ih" + sfx: w_ih, "weight_hh" + sfx: w_hh,
                       "bias_ih" + sfx: b_ih, "bias_hh" + sfx: b_hh})
        if (l, d) in peepholes:
            params["weight_peephole" + sfx] = peepholes[l, d]
    return {k: params[k] for k in spec.torch_shapes()}


def convert(weights, src, dst, spec, dtype=np.float64):
    """Convert weights from layout src to layout dst (any two of LAYOUTS); spec, a
    RecurrentSpec, gives the shapes (a layer's is `layer.spec`)."""
    if not isinstance(spec, RecurrentSpec):
        raise TypeError(f"spec: expected a numlstm.packing.RecurrentSpec (a layer's "
                        f"`spec`), got {type(spec).__name__}")
    return from_canonical(to_canonical(weights, src, spec, dtype), dst, spec)


class PackCache:
    """The kernel layout of each backend, rebuilt only when the parameters change.

    Owners call `invalidate()` whenever they replace or modify parameters.
    """

    def __init__(self):
        self._version = 0
        self._packed = {}

    def invalidate(self):
        self._version += 1
        self._packed.clear()

    def get(self, backend, params, spec):
        key = backend.name
        hit = self._packed.get(key)
        if hit is None or hit[0] != self._version:
            hit = (self._version, backend.pack(params, spec))
            self._packed[key] = hit
        return hit[1]


# -- ConvLSTM (numlstm.ConvLSTM1D / ConvLSTM2D) ---------------------------------------------
# Keras's ConvLSTM keeps kernel [*k,I,4F], recurrent_kernel [*k,F,4F], bias [4F], gates
# i, f, c, o; numlstm's are torch Conv orientation weight_ih [4F,I,*k], weight_hh
# [4F,F,*k], bias [4F], gates i, f, g, o: the same gate order, so a conversion moves
# axes only. The two functions are inverses.
CONVLSTM_KERAS_NAMES = ("kernel", "recurrent_kernel", "bias")


def convlstm_to_keras(params):
    """numlstm's ConvLSTM parameters -> Keras's get_weights() list (copies)."""
    to = lambda w: np.ascontiguousarray(np.moveaxis(w, (0, 1), (-1, -2)))  # noqa: E731
    return [to(params["weight_ih"]), to(params["weight_hh"]), np.array(params["bias"])]


def convlstm_from_keras(weights, shapes, dtype):
    """Keras's [kernel, recurrent_kernel, bias] -> numlstm's parameters {name: array},
    checked against `shapes` ({name: numlstm shape}) before anything converts."""
    if not isinstance(weights, (list, tuple)) or len(weights) != 3:
        raise TypeError(f"keras weights: expected a list [kernel, recurrent_kernel, bias] "
                        f"(layer.get_weights()), got {type(weights).__name__}"
                        + (f" of {len(weights)}" if isinstance(weights, (list, tuple))
                           else ""))
    out = {}
    for keras_name, name, w in zip(CONVLSTM_KERAS_NAMES, ("weight_ih", "weight_hh", "bias"),
                                   weights):
        a = as_array(w, f"keras {keras_name}", dtype)
        want = shapes[name] if name == "bias" else (
            shapes[name][2:] + (shapes[name][1], shapes[name][0]))
        _expect_shape(a, want, f"keras {keras_name}")
        out[name] = a if name == "bias" else np.ascontiguousarray(
            np.moveaxis(a, (-1, -2), (0, 1)))
    return out
