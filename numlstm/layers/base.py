"""The Layer protocol every layer follows, and dropout's masks.

A layer holds its parameters (`params`, torch's names) and their gradients
(`grads`); in a Sequential model it is called as forward(x, training, lengths)
-> output and backward_output(dout) -> the input's gradient, batch-first.
"""
import contextlib

import numpy as np

from .. import dispatch
from ..packing import as_array
from ..validation import check_finite_params


def host(value):
    """A small array (lengths, a mask) on the host, wherever it was given."""
    if dispatch.is_device_array(value):
        return dispatch.BACKENDS["cuda"].ops.to_host(dispatch.BACKENDS["cuda"].ops
                                                     .from_host(value))
    return value


def keep_mask(rng, shape, p, batch_rows=None, axis=0):
    """Dropout's keep mask (True: kept) for an array of `shape` whose batch is `axis`;
    with batch_rows = (B_total, start), the mask of the B_total-row batch that this
    array is rows start.. of (the generator advances as for the whole batch)."""
    if batch_rows is None:
        return rng.random(shape) >= p
    total, start = batch_rows
    full = list(shape)
    full[axis] = total
    rows = np.arange(start, start + shape[axis])
    return np.take(rng.random(full), rows, axis=axis) >= p


def dropout_mask(rng, shape, p, dtype, batch_rows=None, axis=0):
    """Inverted dropout's multiplier: 1/(1-p) where keep_mask keeps, 0 elsewhere, in
    dtype (Dropout, the recurrent layers' dropout between layers and their
    recurrent_dropout)."""
    dtype = np.dtype(dtype)
    return keep_mask(rng, shape, p, batch_rows, axis).astype(dtype) / dtype.type(1.0 - p)


class Layer:
    """What a layer offers a Sequential model (and an optimizer).

    Arrays in a model are batch-first: a sequence is [B,T,F], a vector [B,F].

        forward(x, training=False, lengths=None) -> out
        backward_output(dout) -> dx (None for an Embedding: integer inputs have no
            gradient); parameter gradients are added to `grads`
        params / grads        {name: array}, torch's names and shapes
        output_shape(shape)   the output's shape for an input shape (None for an
                              unknown size), ValueError when the input does not fit
        updating()            a context in which `params` may be changed in place
        get_config()          the constructor's arguments, JSON-serialisable

    Calling a layer, `layer(x)`, is its torch-style call, as the matching torch
    module's: for Dense, Embedding and Dropout that is forward(x) (torch's Linear,
    Embedding and Dropout return the output), for LSTM, GRU and RNN it is
    time-major and returns (y, state), as torch.nn.LSTM's does. A Sequential model
    calls forward on every layer, whatever the kind, so layers inside a model all
    take and return one batch-first array.

    batch_rows: None, or (B_total, start) while the layer runs on rows start.. of a
    larger batch of B_total rows (set by Sequential for data-parallel training):
    dropout then draws the whole batch's mask and keeps these rows, so that each
    part is masked exactly as one process masks the whole batch.
    """
    name = None
    batch_rows = None

    @property
    def params(self):
        return dict(self._params)

    def zero_grad(self):
        """Set every gradient in `grads` to zero."""
        for g in self.grads.values():
            g.fill(0)

    @contextlib.contextmanager
    def updating(self):
        """Yield the parameters as writable arrays; changes take effect on exit."""
        for arr in self._params.values():
            arr.flags.writeable = True
        try:
            yield self._params
        finally:
            for arr in self._params.values():
                arr.flags.writeable = False
            self._params_changed()

    def _params_changed(self):
        pass

    def _init_params(self, params):
        self._replace_params(params)
        self.grads = {name: np.zeros_like(p) for name, p in params.items()}

    def _replace_params(self, params):
        for arr in params.values():
            arr.flags.writeable = False
        self._params = params
        self._params_changed()

    def checked_params(self, params):
        """params ({name: array}, the names and shapes of `params`) as copies of this
        layer's dtype, refusing anything else, and NaN or inf, before any change."""
        who = self.name or type(self).__name__
        if not hasattr(params, "keys"):
            raise TypeError(f"{who}: expected a dict of parameters, got "
                            f"{type(params).__name__}")
        want = {k: v.shape for k, v in self._params.items()}
        got = {k: tuple(np.shape(v)) for k, v in params.items()}
        if got != want:
            raise ValueError(f"{who}: expected parameters {want}, got {got}")
        arrays = {k: as_array(params[k], f"{who} {k}", self.dtype) for k in want}
        check_finite_params(arrays, who)
        return arrays

    def load_params(self, params):
        """Replace the parameters with arrays of the same names and shapes (copied)."""
        self._replace_params(self.checked_params(params))

    def rng_state(self):
        """The state of the generator behind dropout masks (None if the layer has none)."""
        rng = getattr(self, "_drop_rng", None)
        return None if rng is None else rng.bit_generator.state

    def set_rng_state(self, state):
        if state is not None:
            self._drop_rng.bit_generator.state = state

    def __call__(self, x, training=False):
        return self.forward(x, training)

    def backward(self, dout):
        return self.backward_output(dout)
