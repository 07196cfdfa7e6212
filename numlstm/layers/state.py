"""What a recurrent layer's call starts from and hands back: the state (given, carried
by a stateful layer, or zeros), its shapes and checks, and which side (host or GPU)
the call's arrays live on. Recurrent (recurrent.py) mixes it in; both of its APIs
go through these methods.

Dimensions: L layers, D directions, B batch, H the units of a state part (h has
the output's units, P with a projection; c the hidden size).
"""
from .. import dispatch
from ..validation import as_numeric


class CallState:
    """The state methods of Recurrent. They read the layer's spec, dtype,
    _state_parts ("h", or "h" and "c"), stateful and _carried, and the call's _ops
    and _device_io, which _begin sets."""

    def _state_shape(self, batch, part="h"):
        """[L*D,B,units] ([L*D,units] for batch 0) of a state part: h has the output's
        units (P with a projection), c the hidden size."""
        s = self.spec
        return (s.num_layers * s.directions,) + ((batch,) if batch else ()) + (
            s.hidden_size if part == "c" else s.out_size,)

    def _as_state(self, value, what, batch, part="h"):
        """value ([L*D,B,H], or [L*D,H] unbatched) as a C-contiguous [L*D,B,H] array
        of the call's backend."""
        arr = self._same_side(as_numeric(value, what), what)
        want = self._state_shape(batch, part)
        if tuple(arr.shape) != want:
            raise ValueError(f"{what}: expected shape {want}, got {tuple(arr.shape)}")
        arr = self._ops.contiguous(self._ops.from_host(arr), self.dtype)
        return arr if batch else arr.reshape(want[0], 1, want[1])

    def _begin(self, backend, x):
        """Note the backend of a call and which side (host or GPU) its arrays are on."""
        self._ops = backend.ops
        self._device_io = dispatch.is_device_array(x)

    def _same_side(self, arr, what):
        """arr, unless it is on the other side (host or GPU) from the call's x."""
        if dispatch.is_device_array(arr) != self._device_io:
            sides = ("a CUDA device array", "a host (NumPy) array")
            x_side, a_side = (sides if self._device_io else sides[::-1])
            raise RuntimeError(f"{what} is {a_side} but x is {x_side}: pass every array "
                               "of one call on the same side (host or GPU)")
        return arr

    def _emit(self, value):
        """An output for the user: on the host when the call's x was on the host."""
        if isinstance(value, tuple):
            return tuple(self._emit(v) for v in value)
        if self._ops.on_device and not self._device_io:
            return self._ops.to_host(value)
        return value

    def _state_parts_in(self, state, what):
        """The user's state (a pair for the LSTM, an array otherwise) -> a tuple of
        its parts, or None; parts given as None stay None."""
        if state is None:
            return None
        if len(self._state_parts) == 1:
            return (state,)
        names = ", ".join(self._state_parts)
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"{what}: expected a pair ({names}), got "
                             f"{type(state).__name__}" +
                             (f" of length {len(state)}" if hasattr(state, "__len__") else ""))
        return tuple(state)

    def _state_in(self, state, B, batched):
        """Checked tuple of [L*D,B,H] arrays; zeros when no state was given."""
        parts = self._state_parts_in(state, "state")
        if parts is None:
            parts = (None,) * len(self._state_parts)
        elif any(p is None for p in parts):
            raise ValueError("state: expected both " + " and ".join(
                f"{n}0" for n in self._state_parts) + ", got one of them as None")
        return self._state_arrays(parts, B, batched, "{}0")

    def _state_arrays(self, parts, B, batched, name):
        """Each part checked as a [L*D,B,H] array (name.format("h") in errors), or
        zeros where it is None."""
        bdim = B if batched else 0
        return tuple(self._ops.zeros(self._state_shape(B, n), self.dtype) if p is None else
                     self._as_state(p, name.format(n), bdim, n)
                     for n, p in zip(self._state_parts, parts))

    def _state_out(self, parts, batched):
        parts = tuple(p if batched else p[:, 0, :] for p in parts)
        return parts if len(parts) > 1 else parts[0]

    def reset_state(self):
        """Forget the state a stateful layer carries; the next call starts from zeros."""
        self._carried = None

    def _initial_state(self, state, B, batched):
        """The state a call starts from: the given one, else the carried one of a
        stateful layer, else zeros."""
        if state is None and self.stateful and self._carried is not None:
            if dispatch.is_device_array(self._carried[0]) != self._ops.on_device:
                raise RuntimeError(f"stateful {type(self).__name__}: the carried state "
                                   "lives on another backend than this call's; call "
                                   "reset_state() first")
            if self._carried[0].shape[1] != B:
                raise ValueError(f"stateful {type(self).__name__}: the carried state is for "
                                 f"a batch of {self._carried[0].shape[1]}, got a batch of "
                                 f"{B}; call reset_state() to start a new batch")
            return self._carried
        return self._state_in(state, B, batched)

    def _carry(self, state_n):
        if self.stateful:
            self._carried = tuple(self._ops.copy(p) for p in state_n)
