"""Sequential: a chain of layers with Keras's summary/compile/fit/evaluate/predict.

Arrays in a model are batch-first, as in Keras: B batch, T steps, F features.
A sequence is [B,T,F] (token ids [B,T]); a recurrent layer with
return_sequences=False turns it into a vector [B,F].
"""
import contextlib
import numbers
import time

import numpy as np

from .layers import LAYER_TYPES, ConvLSTM, Dense, Dropout, Embedding, Layer, Recurrent
from .losses import get_loss
from .optim import NonFiniteError, Optimizer, get_optimizer
from .validation import as_numeric, check_int, shape_str


class Model:
    """What every model form shares (Sequential, numlstm.Seq2Seq): its layers'
    parameters and gradients, the optimizer, the random state a checkpoint keeps.

    A subclass sets `layers` (each with a unique `name`) and `_rng` (the generator
    of its own shuffling), and defines get_config / from_config.
    """
    loss = optimizer = None
    on_nonfinite, skipped_steps = "raise", 0

    def summary(self, print_fn=print):
        """Print (and return) a table of layers, output shapes and parameter counts."""
        rows = [(f"{layer.name} ({type(layer).__name__})",
                 shape_str(shape) if shape else "?",
                 f"{sum(p.size for p in layer.params.values()):,}")
                for layer, shape in zip(self.layers, self._layer_shapes())]
        head = ("Layer (type)", "Output Shape", "Param #")
        w = [max(len(r[k]) for r in rows + [head]) + 2 for k in range(3)]
        line = "=" * (sum(w) + 2)
        fmt = lambda r: f"{r[0]:<{w[0]}} {r[1]:<{w[1]}} {r[2]:>{w[2]}}"  # noqa: E731
        total = self.count_params()
        size = sum(p.nbytes for layer in self.layers for p in layer.params.values())
        text = "\n".join(
            [f'Model: "{self.name}"', line, fmt(head), line]
            + [fmt(r) for r in rows]
            + [line, f"Total params: {total:,} ({size / 2 ** 10:,.1f} KiB)",
               f"Trainable params: {total:,}", "Non-trainable params: 0", line])
        print_fn(text)
        return text

    def count_params(self):
        return sum(p.size for layer in self.layers for p in layer.params.values())

    # -- parameters ----------------------------------------------------------------------
    def parameters(self):
        """[(key, param, grad)] over every layer, key = "<layer>/<name>"."""
        return [(f"{layer.name}/{name}", p, layer.grads[name])
                for layer in self.layers for name, p in layer.params.items()]

    def zero_grad(self):
        for layer in self.layers:
            layer.zero_grad()

    def get_weights(self):
        """{key: copy of the parameter} over every layer."""
        return {key: np.array(p) for key, p, _ in self.parameters()}

    def set_weights(self, weights):
        """Load {key: array} as get_weights() returns it; all names and shapes are
        checked before any layer changes."""
        if not hasattr(weights, "keys"):
            raise TypeError(f"weights: expected a dict {{'<layer>/<name>': array}} as "
                            f"get_weights() returns, got {type(weights).__name__}")
        want = {key: p.shape for key, p, _ in self.parameters()}
        got = {key: tuple(np.shape(v)) for key, v in weights.items()}
        if want != got:
            missing = sorted(set(want) - set(got))
            extra = sorted(set(got) - set(want))
            wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
            raise ValueError(f"weights: missing {missing}, unexpected {extra}, wrong "
                             f"shape {wrong}")
        checked = [layer.checked_params({name: weights[f"{layer.name}/{name}"]
                                         for name in layer.params})
                   for layer in self.layers]  # every layer's, before any changes
        for layer, params in zip(self.layers, checked):
            layer._replace_params(params)

    def compile(self, optimizer="adam", loss="mse", on_nonfinite="raise",
                **optimizer_args):
        """Choose the loss ("mse", "cross_entropy" or a loss object) and the optimizer
        ("sgd", "adam", "adamw" with `optimizer_args` such as lr=, clip_norm=,
        lr_schedule=; or an Optimizer object).

        on_nonfinite: what a training step does with a NaN or infinite loss or
        gradient: "raise" (default) raises numlstm.NonFiniteError naming the step,
        before any weight changes; "skip" leaves the weights and the optimizer as
        they were and counts the step in `skipped_steps`."""
        if isinstance(optimizer, Optimizer) and optimizer_args:
            raise ValueError("optimizer arguments go to the optimizer's constructor when "
                             "an Optimizer object is given")
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite: expected 'raise' or 'skip', got "
                             f"{on_nonfinite!r}")
        self.loss = get_loss(loss)
        self.optimizer = get_optimizer(optimizer, **optimizer_args)
        self.on_nonfinite = on_nonfinite
        self.skipped_steps = 0
        return self

    @staticmethod
    def _check_loop(epochs, batch_size, initial_epoch, on_epoch_end):
        """fit's loop arguments, checked -> (epochs, batch_size) as ints."""
        epochs = check_int(epochs, "epochs", 1)
        if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, numbers.Integral) \
                or not 0 <= initial_epoch <= epochs:
            raise ValueError(f"initial_epoch: expected an integer in [0, epochs={epochs}], "
                             f"got {initial_epoch!r}")
        if on_epoch_end is not None and not callable(on_epoch_end):
            raise TypeError(f"on_epoch_end: expected a callable, got {on_epoch_end!r}")
        return epochs, check_int(batch_size, "batch_size", 1)

    def _need_compiled(self, what):
        if self.loss is None:
            raise RuntimeError(f"{what}: call model.compile(optimizer=..., loss=...) first")

    def _update(self, value):
        """The optimizer's step from the gradients of a batch whose loss is value ->
        value. A NaN or infinite loss or gradient changes nothing; it raises
        NonFiniteError or is skipped, as compile(on_nonfinite=) says."""
        try:
            if not np.isfinite(value):
                raise NonFiniteError(f"update {self.optimizer.steps + 1}: the loss is "
                                     f"{value}; no parameter was changed")
            self.step_optimizer()
        except NonFiniteError:
            if self.on_nonfinite == "raise":
                raise
            self.skipped_steps += 1
        return value

    def step_optimizer(self):
        """One optimizer update from the gradients in each layer's `grads`."""
        with contextlib.ExitStack() as stack:
            triples = []
            for layer in self.layers:
                params = stack.enter_context(layer.updating())
                triples += [(f"{layer.name}/{name}", p, layer.grads[name])
                            for name, p in params.items()]
            return self.optimizer.step(triples)

    # -- checkpoints ---------------------------------------------------------------------
    def save(self, path, optimizer=None, step=0, extra=None):
        """Write a checkpoint (see numlstm.checkpoint); the compiled optimizer by default."""
        from .checkpoint import save_checkpoint
        save_checkpoint(path, self, optimizer or self.optimizer, step=step, extra=extra)

    def rng_states(self):
        return {"model": self._rng.bit_generator.state,
                **{layer.name: layer.rng_state() for layer in self.layers
                   if layer.rng_state() is not None}}

    def set_rng_states(self, states):
        self._rng.bit_generator.state = states["model"]
        for layer in self.layers:
            if layer.name in states:
                layer.set_rng_state(states[layer.name])


class Sequential(Model):
    """Layers applied one after another; the backward runs through the chain in reverse.

    Args:
        layers: Layer objects (numlstm.Embedding, LSTM, GRU, RNN, ConvLSTM2D, ConvLSTM1D,
            Dense, Dropout). Each
            is given a unique name, Keras style ("lstm", "lstm_1", ...), unless it has
            one.
        name: the model's name, shown by summary().
        seed: seeds the shuffling of fit(); layers keep their own seeds for their
            initial weights and dropout masks.

    Typical use::

        model = numlstm.Sequential([numlstm.Embedding(V, 32), numlstm.LSTM(32, 128),
                                    numlstm.Dense(128, V)])
        model.compile(optimizer="adam", loss="cross_entropy", lr=2e-3, clip_norm=1.0)
        history = model.fit(x, y, epochs=3, batch_size=32, validation_data=(xv, yv))
        logits = model.predict(x)

    Parameters are gathered as "<layer name>/<parameter name>"; `parameters()` yields
    (key, param, grad) for an optimizer.
    """

    def __init__(self, layers, name="sequential", seed=None):
        layers = list(layers)
        if not layers:
            raise ValueError("layers: expected at least one layer, got none")
        used = set()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}]: expected a numlstm layer, got "
                                f"{type(layer).__name__}")
            if any(layer is other for other in layers[:i]):
                raise ValueError(f"layers[{i}]: the same layer object appears twice")
            base = layer.name or type(layer).__name__.lower()
            name_i, n = base, 0
            while name_i in used:
                n += 1
                name_i = f"{base}_{n}"
            layer.name = name_i
            used.add(name_i)
            if isinstance(layer, Embedding) and i > 0:
                raise ValueError(f"layers[{i}]: an Embedding reads token ids, so it must be "
                                 f"the first layer; layers[{i - 1}] is a "
                                 f"{type(layers[i - 1]).__name__}")
        self.layers = layers
        self.name = name
        # (a NumPy integer seed would not survive the JSON of a checkpoint)
        self.seed = int(seed) if isinstance(seed, numbers.Integral) else seed
        self._rng = np.random.default_rng(seed)
        self.loss = self.optimizer = None
        self.on_nonfinite, self.skipped_steps = "raise", 0
        self._shapes = self._infer_shapes()

    # -- structure -----------------------------------------------------------------------
    def _input_shape(self):
        """The model's input shape, from its first layer that is not a Dropout."""
        first = next((l for l in self.layers if not isinstance(l, Dropout)), None)
        if isinstance(first, Embedding):
            return (None, None)
        if isinstance(first, Recurrent):
            return (None, None, first.input_size)
        if isinstance(first, ConvLSTM):
            return (None, None) + (None,) * first.rank + (first.in_channels,)
        if isinstance(first, Dense):
            return (None, first.in_features)
        return None

    def _layer_shapes(self):
        return self._shapes

    def _infer_shapes(self):
        """Each layer's output shape (None = any size); checks that neighbours fit."""
        shape = self._input_shape()
        shapes = []
        for i, layer in enumerate(self.layers):
            if shape is None:  # only Dropout layers: any shape passes
                shapes.append(None)
                continue
            try:
                shape = layer.output_shape(shape)
            except ValueError as err:
                before = f"the layer before gives {shape_str(shapes[-1])}" if shapes \
                    else "it is the first layer"
                raise ValueError(f"layer {i} ({layer.name}): {err}; {before}") from None
            shapes.append(shape)
        return shapes

    def get_config(self):
        return {"name": self.name, "seed": self.seed,
                "layers": [{"type": type(l).__name__, "name": l.name,
                            "config": l.get_config()} for l in self.layers]}

    @classmethod
    def from_config(cls, config):
        layers = []
        for entry in config["layers"]:
            if entry["type"] not in LAYER_TYPES:
                raise ValueError(f"unknown layer type {entry['type']!r}; expected one of "
                                 f"{sorted(LAYER_TYPES)}")
            layer = LAYER_TYPES[entry["type"]](**entry["config"])
            layer.name = entry["name"]
            layers.append(layer)
        return cls(layers, name=config["name"], seed=config.get("seed"))

    @classmethod
    def from_torch(cls, module, **options):
        """A model from torch modules: the TorchSequential that to_torch() returns, or a
        torch.nn.Sequential (or list) of Embedding, LSTM/GRU/RNN, Linear (with ReLU,
        Tanh or Sigmoid after it) and Dropout. Needs torch."""
        from .torch_io import sequential_from_torch
        return sequential_from_torch(module, **options)

    def to_torch(self):
        """A torch module (numlstm.torch_io.TorchSequential, eval mode) computing what
        this model computes: forward(x, lengths=None) -> predict(x, lengths=...)'s
        output. Needs torch."""
        from .torch_io import sequential_to_torch
        return sequential_to_torch(self)

    # -- checking data before any kernel runs -------------------------------------------
    def _output_shape(self, x):
        """The output's shape for input x (ValueError when x does not fit), with the
        first layer's own check of token ids."""
        first = next((l for l in self.layers if not isinstance(l, Dropout)), None)
        if isinstance(first, Embedding):
            first.check_ids(x)
        elif x.dtype.kind not in "fiu":
            raise TypeError(f"x: expected real numbers, got dtype {x.dtype}")
        shape = tuple(x.shape)
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except ValueError as err:
                raise ValueError(f"x of shape {tuple(x.shape)}: layer {i} ({layer.name}): "
                                 f"{err}") from None
        return shape

    def _check_data(self, x, y=None, lengths=None, what=""):
        """x (and y, lengths) as arrays, checked against the model and the loss."""
        x = as_numeric(x, what + "x")
        if x.ndim < 1 or len(x) < 1:
            raise ValueError(f"{what}x: expected at least one sample, got shape {x.shape}")
        out = self._output_shape(x)
        if y is not None:
            y = as_numeric(y, what + "y")
            if y.ndim < 1 or len(y) != len(x):
                raise ValueError(f"{what}x and {what}y: expected the same number of samples "
                                 f"(first axis), got {len(x)} and "
                                 f"{len(y) if y.ndim else 'a scalar'}")
            if self.loss is not None:
                self.loss.check_target(y, out)
        if lengths is not None:
            lengths = as_numeric(lengths, what + "lengths")
            T = x.shape[1] if x.ndim >= 2 else 1
            if lengths.dtype.kind not in "iu" or lengths.shape != (len(x),):
                raise ValueError(f"{what}lengths: expected {len(x)} integers (one per "
                                 f"sample), got {lengths.dtype} of shape {lengths.shape}")
            if lengths.min() < 1 or lengths.max() > T:
                raise ValueError(f"{what}lengths: expected values in [1, {T}], got min "
                                 f"{lengths.min()} max {lengths.max()}")
        return x, y, lengths

    # -- compute -------------------------------------------------------------------------
    def forward(self, x, training=False, lengths=None):
        """x -> the last layer's output (logits stay logits)."""
        for layer in self.layers:
            x = layer.forward(x, training=training, lengths=lengths)
        return x

    __call__ = forward

    def backward(self, dout):
        """The gradient of the output -> every layer's `grads` (added)."""
        for layer in reversed(self.layers):
            dout = layer.backward_output(dout)
            if dout is None:
                break
        return dout

    def train_step(self, x, y, lengths=None, distributed=None):
        """One update on one batch: forward, loss, backward, optimizer step -> loss.

        A NaN or infinite loss or gradient changes nothing; it raises NonFiniteError
        or is skipped, as compile(on_nonfinite=) says.

        distributed: None, "mpi" or a numlstm.distributed.Group. Every rank passes
        the same batch, trains on its own rows of it, and the gradients are summed
        over the ranks, so that every rank makes the update one process makes on the
        whole batch (up to float summation order) and gets the whole batch's loss.
        The first such step makes every rank's model rank 0's (numlstm.distributed)."""
        self._need_compiled("train_step")
        group = _group(distributed)
        if group is None:
            x, y, lengths = self._check_data(x, y, lengths)
            self.zero_grad()
            value = self._loss_and_grads(x, y, lengths)
        else:
            value = group.gradients(self, x, y, lengths)
        return self._update(value)

    def _loss_and_grads(self, x, y, lengths=None, rows=None):
        """Forward and backward of a checked batch -> the loss; the gradients are added
        to each layer's `grads` (not when the loss is NaN or infinite).

        rows=(start, stop): only those rows, as one part of data-parallel training:
        the loss is divided by the whole batch's count of terms and dropout masks are
        the whole batch's rows, so the parts' losses and gradients sum to the whole's."""
        if rows is None:
            out = self.forward(x, training=True, lengths=lengths)
            value, grad = self.loss.value_and_grad(out, y)
        else:
            start, stop = rows
            if start == stop:
                return 0.0
            part = slice(start, stop)
            for layer in self.layers:
                layer.batch_rows = (len(x), start)
            try:
                out = self.forward(x[part], training=True,
                                   lengths=None if lengths is None else lengths[part])
            finally:
                for layer in self.layers:
                    layer.batch_rows = None
            value, grad = self.loss.value_and_grad(out, y[part], count=self.loss.terms(y))
        if np.isfinite(value):
            self.backward(grad)
        return value

    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, shuffle=True,
            verbose=1, lengths=None, initial_epoch=0, on_epoch_end=None, distributed=None):
        """Train for `epochs` passes over (x, y) in batches; returns the history,
        {"loss": [per epoch], "val_loss": [...] (with validation_data), "tokens_per_s":
        [...]}. verbose=1 shows a progress bar per epoch (loss, tokens/s).

        initial_epoch: as Keras's, the epoch to start at (epochs counts from 0, so a
        run resumed after k epochs passes initial_epoch=k and the same `epochs`).
        on_epoch_end: called as on_epoch_end(epoch, history) after each epoch, e.g.
        to write a checkpoint. Batches skipped for a non-finite loss (compile's
        on_nonfinite="skip") are left out of the epoch's mean loss.

        distributed: None, "mpi" or a numlstm.distributed.Group: data-parallel
        training under an MPI launcher (`mpiexec -n N python script.py`). Every rank
        calls fit with the same data; the model starts as rank 0's, the ranks shuffle
        alike, each trains on its rows of every batch (see train_step), validation
        batches are shared out, and every rank returns the same history and ends
        with the same weights (checked). on_epoch_end runs on every rank: write files
        from rank 0 only (group.root). verbose shows rank 0's bar alone."""
        self._need_compiled("fit")
        group = _group(distributed)
        with _alone(group):
            epochs, x, y, lengths, validation_data = self._check_fit(
                x, y, epochs, batch_size, validation_data, lengths, initial_epoch,
                on_epoch_end)
        n, batch_size = len(x), int(batch_size)
        if group is not None:
            group.start(self, x, y, lengths)
            verbose = verbose and group.root
        history = {"loss": [], "tokens_per_s": []}
        if validation_data is not None:
            history["val_loss"] = []
        for epoch in range(int(initial_epoch), epochs):
            order = self._rng.permutation(n) if shuffle else np.arange(n)
            batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
            bar = progress(len(batches), f"epoch {epoch + 1}/{epochs}", verbose)
            total = seen = tokens = 0
            t0 = time.perf_counter()
            for idx in batches:
                lens = None if lengths is None else lengths[idx]
                loss = self.train_step(x[idx], y[idx], lens, distributed=group)
                if np.isfinite(loss):
                    total += loss * len(idx)
                    seen += len(idx)
                tokens += _tokens(x[idx])
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total / max(seen, 1):.4f}",
                                    tok_s=f"{tokens / (time.perf_counter() - t0):,.0f}",
                                    refresh=False)
            history["loss"].append(total / seen if seen else float("nan"))
            history["tokens_per_s"].append(tokens / (time.perf_counter() - t0))
            if validation_data is not None:
                history["val_loss"].append(self.evaluate(*validation_data,
                                                         batch_size=batch_size,
                                                         distributed=group))
                if bar is not None:
                    bar.set_postfix(loss=f"{history['loss'][-1]:.4f}",
                                    val_loss=f"{history['val_loss'][-1]:.4f}")
            if bar is not None:
                bar.close()
            if on_epoch_end is not None:
                with _alone(group):
                    on_epoch_end(epoch, history)
        if group is not None:
            group.check_weights(self)
        return history

    def _check_fit(self, x, y, epochs, batch_size, validation_data, lengths, initial_epoch,
                   on_epoch_end):
        """fit's arguments, checked -> epochs, x, y, lengths, validation_data."""
        epochs, _ = self._check_loop(epochs, batch_size, initial_epoch, on_epoch_end)
        x, y, lengths = self._check_data(x, y, lengths)
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data: expected a pair (x_val, y_val), got "
                                 f"{type(validation_data).__name__}"
                                 + (f" of {len(validation_data)}"
                                    if isinstance(validation_data, (tuple, list)) else ""))
            validation_data = self._check_data(*validation_data, what="validation ")[:2]
        return epochs, x, y, lengths, validation_data

    def evaluate(self, x, y, batch_size=256, lengths=None, distributed=None):
        """The loss over (x, y), averaged over samples (no training).

        distributed: None, "mpi" or a numlstm.distributed.Group: every rank passes
        the same data and evaluates every N-th batch; the sum over the ranks gives
        every rank the one-process number (up to float summation order). A model
        that no distributed call has used yet takes rank 0's weights first."""
        self._need_compiled("evaluate")
        group = _group(distributed)
        with _alone(group):
            check_int(batch_size, "batch_size", 1)
            x, y, lengths = self._check_data(x, y, lengths)
            n, batch_size = len(x), int(batch_size)
        starts = range(0, n, batch_size)
        if group is not None:
            group.start(self, x, y, lengths)
            starts = starts[group.rank::group.size]
        with _alone(group):
            total = 0.0
            for i in starts:
                lens = None if lengths is None else lengths[i:i + batch_size]
                out = self.forward(x[i:i + batch_size], lengths=lens)
                total += self.loss(out, y[i:i + batch_size]) * len(out)
        if group is not None:
            total = group.sum(total)
        return total / n

    def predict(self, x, batch_size=None, lengths=None):
        """The last layer's output for x (in batches of batch_size, default all at once)."""
        x, _, lengths = self._check_data(x, None, lengths)
        if batch_size is None:
            return self.forward(x, lengths=lengths)
        batch_size = check_int(batch_size, "batch_size", 1)
        outs = [self.forward(x[i:i + batch_size],
                             lengths=None if lengths is None else lengths[i:i + batch_size])
                for i in range(0, len(x), batch_size)]
        return np.concatenate(outs)


def _group(distributed):
    """None, or the numlstm.distributed.Group that `distributed` names."""
    if distributed is None:
        return None
    from .distributed import resolve
    return resolve(distributed)


def _alone(group):
    """Work of one rank between collective calls (see Group.alone)."""
    return contextlib.nullcontext() if group is None else group.alone()


def _tokens(x):
    """Steps processed: B*T for a sequence batch ([B,T] ids or [B,T,F]), else B."""
    is_sequence = x.ndim >= 3 or (x.ndim == 2 and x.dtype.kind in "iu")
    return x.shape[0] * x.shape[1] if is_sequence else x.shape[0]


def progress(total, desc, verbose):
    """fit's progress bar over `total` batches (tqdm), or None when not verbose."""
    if not verbose:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="batch", leave=True, dynamic_ncols=True)
