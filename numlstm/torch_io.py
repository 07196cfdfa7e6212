"""Layers and models to and from PyTorch modules.

torch stays optional: this module imports it, and numlstm imports this module only
when `from_torch` or `to_torch` is called.

    numlstm.LSTM / GRU / RNN   <->  torch.nn.LSTM / GRU / RNN (same names, shapes, gates)
    numlstm.Dense              <->  torch.nn.Linear, followed by ReLU/Tanh/Sigmoid when
                                    the Dense has that activation
    numlstm.Embedding          <->  torch.nn.Embedding
    numlstm.Dropout            <->  torch.nn.Dropout
    numlstm.Sequential         <->  TorchSequential (below); from_torch also reads a
                                    torch.nn.Sequential (or list) of the modules above

Modules come back in eval mode, the mode in which they compute what numlstm's
layers compute by default (training=False); call `.train()` to train them.

What does not move: a stateful layer's carried state (torch modules keep none);
an nn.Embedding's padding_idx, scale_grad_by_freq and sparse (its weights move,
and the forward pass is the same, but numlstm's Embedding trains every row).
"""
import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .layers import CELLS, Dense, Dropout, Embedding, Recurrent
from .model import Sequential

_TORCH_RNNS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
_ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}
_ACTIVATION_MODULES = {name: cls for cls, name in _ACTIVATIONS.items()}


def _dtype(module):
    """The NumPy dtype of a module's parameters (float32 or float64)."""
    dtypes = {p.dtype for p in module.parameters()}
    if len(dtypes) != 1 or not dtypes <= {torch.float32, torch.float64}:
        raise TypeError(f"{type(module).__name__}: expected float32 or float64 parameters, "
                        f"got {sorted(map(str, dtypes))}")
    return np.float32 if dtypes == {torch.float32} else np.float64


def _state(module):
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def _torch_dtype(layer):
    return torch.float64 if layer.dtype == np.float64 else torch.float32


def _load(module, arrays):
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
    return module.eval()


# -- recurrent layers -------------------------------------------------------------------
def recurrent_from_torch(cls, module, **options):
    """A numlstm layer of class cls (LSTM, GRU, RNN) with the configuration and weights
    of a torch.nn.LSTM/GRU/RNN; options (backend=, seed=, ...) go to the constructor."""
    want = _TORCH_RNNS[cls.cell]
    if type(module) is not want:
        raise TypeError(f"{cls.__name__}.from_torch: expected a torch.nn.{want.__name__}, "
                        f"got {type(module).__name__}")
    config = dict(input_size=module.input_size, hidden_size=module.hidden_size,
                  num_layers=module.num_layers, bidirectional=module.bidirectional,
                  batch_first=module.batch_first, dropout=module.dropout)
    if module.proj_size:
        config["proj_size"] = module.proj_size
    if cls.cell == "rnn":
        config["nonlinearity"] = module.nonlinearity
    if cls.cell == "gru":
        config["reset_after"] = True  # torch's GRU form
    clash = {k: (v, config[k]) for k, v in options.items() if k in config and v != config[k]}
    if clash:
        raise ValueError(f"{cls.__name__}.from_torch: options that contradict the module: "
                         + ", ".join(f"{k}={v!r} (the module has {m!r})"
                                     for k, (v, m) in clash.items()))
    layer = cls(**{**config, "dtype": _dtype(module), **options})
    weights = _state(module)
    if not module.bias:  # bias=False: zero biases compute the same function
        for name, shape in layer.spec.torch_shapes().items():
            weights.setdefault(name, np.zeros(shape))
    layer.load_weights(weights, "torch")
    return layer


def _check_torch_form(layer):
    """Raise ValueError unless torch's recurrent module of this cell computes what
    `layer` computes (merge modes aside: a TorchSequential carries those)."""
    s = layer.spec
    if s.cell == "gru" and (s.activation, s.recurrent_activation) != ("tanh", "sigmoid"):
        raise ValueError("to_torch: torch.nn.GRU has only sigmoid gates and a tanh "
                         f"candidate; this GRU has activation={s.activation!r}, "
                         f"recurrent_activation={s.recurrent_activation!r} "
                         "(numlstm.export_onnx carries them)")
    if s.cell == "gru" and not s.reset_after:
        raise ValueError("to_torch: torch.nn.GRU applies the reset gate after the product "
                         "(reset_after=True); this GRU has reset_after=False")
    if s.cell == "lstm" and (s.cell_clip is not None or s.input_forget or
                             s.gate_clip is not None):
        raise ValueError("to_torch: torch.nn.LSTM has no cell_clip, gate_clip or "
                         "input_forget; this LSTM uses them (numlstm.export_onnx carries "
                         "gate_clip and input_forget)")
    if s.cell == "lstm" and (s.peephole or s.activation != "tanh" or
                             s.recurrent_activation != "sigmoid"):
        raise ValueError("to_torch: torch.nn.LSTM has no peepholes and only sigmoid gates "
                         "and tanh cells; this LSTM has peephole="
                         f"{s.peephole}, activation={s.activation!r}, recurrent_activation="
                         f"{s.recurrent_activation!r} (numlstm.export_onnx carries them)")
    if s.layer_norm:
        cell = s.cell.upper()
        raise ValueError(f"to_torch: torch.nn.{cell} has no layer normalisation; this {cell} "
                         "has layer_norm=True")
    if getattr(layer, "zoneout", 0):
        cell = layer.spec.cell.upper()
        raise ValueError(f"to_torch: this {cell} uses zoneout, which mixes the old state into "
                         f"the new one at inference too; torch.nn.{cell} has no such option")


def _torch_module(layer, batch_first):
    """torch's recurrent module with layer's configuration and weights (eval mode)."""
    s = layer.spec
    options = {"nonlinearity": s.nonlinearity} if s.cell == "rnn" else {}
    if s.proj_size:
        options["proj_size"] = s.proj_size
    module = _TORCH_RNNS[s.cell](s.input_size, s.hidden_size, num_layers=s.num_layers,
                                 bidirectional=s.bidirectional, batch_first=batch_first,
                                 dropout=layer.dropout, dtype=_torch_dtype(layer), **options)
    return _load(module, layer.export_weights("torch"))


def recurrent_to_torch(layer):
    """The torch.nn.LSTM/GRU/RNN computing what `layer` computes (eval mode)."""
    _check_torch_form(layer)
    if layer.merge_mode != "concat":
        raise ValueError(f"to_torch: torch.nn.{type(layer).__name__} concatenates the two "
                         f"directions; merge_mode={layer.merge_mode!r} has no torch form "
                         "(a Sequential model's to_torch() carries it)")
    return _torch_module(layer, layer.batch_first)


# -- other layers -----------------------------------------------------------------------
def _dense_from_torch(linear, activation=None):
    dense = Dense(linear.in_features, linear.out_features, activation=activation,
                  dtype=_dtype(linear))
    weights = _state(linear)
    weights.setdefault("bias", np.zeros(linear.out_features))
    dense.load_params(weights)
    return dense


def _embedding_from_torch(module):
    if module.max_norm is not None:
        raise ValueError("from_torch: nn.Embedding with max_norm renormalises rows at "
                         "lookup, which numlstm.Embedding does not do")
    emb = Embedding(module.num_embeddings, module.embedding_dim, dtype=_dtype(module))
    emb.load_params(_state(module))
    return emb


def _layer_to_torch(layer):
    """The module computing layer in a TorchSequential, and the options its forward
    needs."""
    if isinstance(layer, Recurrent):
        _check_torch_form(layer)
        return _torch_module(layer, batch_first=True), {
            "return_sequences": layer.return_sequences, "merge_mode": layer.merge_mode}
    if isinstance(layer, Dense):
        linear = _load(nn.Linear(layer.in_features, layer.out_features,
                                 dtype=_torch_dtype(layer)), layer.params)
        return linear, {"activation": layer.activation}
    if isinstance(layer, Embedding):
        return _load(nn.Embedding(layer.num_embeddings, layer.embedding_dim,
                                  dtype=_torch_dtype(layer)), layer.params), {}
    if isinstance(layer, Dropout):
        return nn.Dropout(layer.p).eval(), {}
    raise TypeError(f"to_torch: no torch form for {type(layer).__name__}")


class TorchSequential(nn.Module):
    """A numlstm.Sequential as a torch module: the same layers as torch modules, and
    what torch's recurrent modules leave to their caller (batch-first data,
    `lengths` as packed sequences, return_sequences=False, merge modes).

    forward(x, lengths=None): x [B,T] ids or [B,T,F] features, lengths [B] or None ->
    the last layer's output, as Sequential.predict returns it.
    """

    def __init__(self, modules, options, configs=None, name="sequential"):
        super().__init__()
        self.layers = nn.ModuleList(modules)
        self.options = list(options)
        # what Sequential.from_torch needs to rebuild the numlstm model exactly
        self.numlstm_configs = configs
        self.numlstm_name = name

    def forward(self, x, lengths=None):
        for module, opts in zip(self.layers, self.options):
            weights = next(module.parameters(), None)
            if weights is not None and x.is_floating_point() and x.dtype != weights.dtype:
                x = x.to(weights.dtype)  # layers of different dtypes, as numlstm allows
            if isinstance(module, nn.RNNBase):
                x = self._recurrent(module, x, lengths, **opts)
            else:
                x = module(x)
                act = opts.get("activation")
                if act is not None:
                    x = {"relu": torch.relu, "tanh": torch.tanh,
                         "sigmoid": torch.sigmoid}[act](x)
        return x

    @staticmethod
    def _recurrent(module, x, lengths, return_sequences, merge_mode):
        T = x.shape[1]
        if lengths is not None:
            lens = torch.as_tensor(lengths).cpu().long()
            packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
            y, state = module(packed)
            y = pad_packed_sequence(y, batch_first=True, total_length=T)[0]
        else:
            y, state = module(x)
        h_n = state[0] if isinstance(state, tuple) else state
        if module.bidirectional:
            # The top layer's directions: forward at each sequence's last valid step,
            # backward after reading the whole sequence (step 0), as Keras returns them.
            pair = y.chunk(2, dim=-1) if return_sequences else (h_n[-2], h_n[-1])
            if merge_mode == "concat":
                return torch.cat(pair, dim=-1)
            a, b = pair
            return {"sum": a + b, "mul": a * b, "ave": (a + b) / 2}[merge_mode]
        return y if return_sequences else h_n[-1]


def sequential_to_torch(model):
    modules, options = zip(*(_layer_to_torch(layer) for layer in model.layers))
    return TorchSequential(modules, options, model.get_config(), model.name).eval()


def sequential_from_torch(module, **options):
    """A numlstm.Sequential from a TorchSequential, or from a torch.nn.Sequential (or
    a list) of Embedding, LSTM/GRU/RNN, Linear (optionally followed by ReLU, Tanh or
    Sigmoid) and Dropout modules. Recurrent modules in a plain nn.Sequential pass
    on their whole output sequence. options go to Sequential (name=, seed=)."""
    if isinstance(module, TorchSequential) and module.numlstm_configs is not None:
        model = Sequential.from_config({**module.numlstm_configs, **options})
        for layer, m in zip(model.layers, module.layers):
            if isinstance(layer, Recurrent):
                layer.load_weights(_state(m), "torch")
            elif layer.params:
                layer.load_params(_state(m))
        return model
    if isinstance(module, TorchSequential):
        modules, extra = list(module.layers), list(module.options)
    elif isinstance(module, (nn.Sequential, nn.ModuleList, list, tuple)):
        modules = list(module)
        extra = [{} for _ in modules]
    else:
        raise TypeError(f"Sequential.from_torch: expected a TorchSequential, an "
                        f"nn.Sequential or a list of modules, got {type(module).__name__}")
    layers, i = [], 0
    while i < len(modules):
        m, opts = modules[i], extra[i]
        if isinstance(m, nn.Linear):
            act = opts.get("activation")
            if act is None and i + 1 < len(modules) and type(modules[i + 1]) in _ACTIVATIONS:
                act = _ACTIVATIONS[type(modules[i + 1])]
                i += 1
            layers.append(_dense_from_torch(m, act))
        elif isinstance(m, nn.Embedding):
            layers.append(_embedding_from_torch(m))
        elif isinstance(m, nn.Dropout):
            layers.append(Dropout(m.p))
        elif type(m) in _TORCH_RNNS.values():
            cell = next(c for c, cls in _TORCH_RNNS.items() if type(m) is cls)
            layers.append(recurrent_from_torch(CELLS[cell], m, **opts))
        else:
            raise TypeError(f"Sequential.from_torch: module {i} is a "
                            f"{type(m).__name__}; expected Embedding, LSTM, GRU, RNN, "
                            f"Linear (with ReLU/Tanh/Sigmoid after it) or Dropout")
        i += 1
    return Sequential(layers, **options)


__all__ = ["TorchSequential", "recurrent_from_torch", "recurrent_to_torch",
           "sequential_from_torch", "sequential_to_torch"]
