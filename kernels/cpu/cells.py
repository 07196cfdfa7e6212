"""The packed cells: the typed layouts the CPU kernels read, one per cell and path.

pack_lstm_cpu, pack_gru_cpu and pack_rnn_cpu return one of these; the other
kernels of the cell read its fields. `kind` (a class attribute) names the path:
"tiled" (float32, the register-tiled loops), "blas" (per-step BLAS loops:
float64, the LSTM's layer_norm, the GRU's reset_after=False) and, for the GRU,
"norm" (layer_norm).

Dimensions: I input features, H hidden units, P the units of h (H without a
projection), G = gates * H (LSTM 4, GRU 3, RNN 1). The tiled layouts pad H to
Hp (and P to Pp, I to Ip) and keep the weights in blocks of CB columns
([nblk, K, CB], products.in_blocks's layout) so that a block of units owns its
gate columns ([i f g o] for the LSTM, [r | z | n] for the GRU); Gp = gates * Hp.
Options shared by the LSTM's paths: clip (cell_clip; inf: none), coupled
(input_forget: f = 1 - i), gclip (gate_clip; inf: none), proj (a projection,
proj_size), acts (gates.make_acts's tuple, for the weights' dtype), peep (the
peepholes, i, f and o rows, or None).
"""
from typing import NamedTuple, Optional

import numpy as np


class TiledLSTM(NamedTuple):
    """The float32 LSTM (lstm_tiled.py's loops)."""
    H: int
    Hp: int
    P: int
    Pp: int
    cols: np.ndarray        # [4H]: the tiled gate column of torch's row j
    bias: np.ndarray        # [1,Gp]: b_ih + b_hh in the tiled columns
    clip: float
    coupled: bool
    gclip: float
    proj: bool
    acts: tuple
    peep: Optional[np.ndarray]  # [3,Hp] or None
    # (Gl = ceil(H/16) * CB: the gate columns of the blocks that hold units, lstm.py)
    w_in: np.ndarray        # [Gl/CB, I, CB]: x @ W_ih^T
    w_fwd: np.ndarray       # [Gl/CB, P, CB]: h @ W_hh^T (the P units, no padding)
    w_bwd: np.ndarray       # [Pp/CB, Gl, CB]: dG @ W_hh
    w_dx: np.ndarray        # [Ip/CB, Gl, CB]: dG @ W_ih, I padded to Ip
    w_proj: np.ndarray      # [Pp/CB, H, CB]: m @ W_hr^T ([0,1,CB]: no projection)
    w_proj_bwd: np.ndarray  # [Hp/CB, P, CB]: dh @ W_hr ([0,1,CB]: no projection)
    kind = "tiled"


class BlasLSTM(NamedTuple):
    """The LSTM's per-step BLAS loops (lstm_blas.py): float64, and layer_norm."""
    H: int
    P: int
    w_ih: np.ndarray        # [G,I]
    w_hh: np.ndarray        # [G,P]
    bias: np.ndarray        # [G]: b_ih + b_hh
    ln: Optional[tuple]     # layer_norm's (ln_ih [G], ln_hh [G], ln_c [H], ln_c_bias [H])
    tiles: Optional[dict]   # float32 only: W_hh and W_hr in blocks for the tiled step
                            # products, {"w_fwd", "w_bwd", "w_proj", "w_proj_bwd"}
    w_hh_t: np.ndarray      # [P,G]
    w_hr: np.ndarray        # [P,H], or [0,0]: no projection
    w_hr_t: np.ndarray      # [H,P], or [0,0]
    peep: Optional[np.ndarray]  # [3,H] or None
    clip: float
    coupled: bool
    gclip: float
    proj: bool
    acts: tuple
    kind = "blas"


class TiledGRU(NamedTuple):
    """The float32 GRU with reset_after (gru_tiled.py's loops); blocks of U units
    own [r | z | n]."""
    H: int
    Hp: int
    cols: np.ndarray        # [3H]: the tiled gate column of torch's row j
    acts: tuple
    b_in: np.ndarray        # [1,Gp]: b_ih in the tiled columns
    b_rec: np.ndarray       # [1,Gp]: b_hh in the tiled columns
    w_in: np.ndarray        # [Gp/CB, I, CB]: x @ W_ih^T
    w_fwd: np.ndarray       # [Gp/CB, H, CB]: h @ W_hh^T (the H units, no padding)
    w_bwd: np.ndarray       # [Hp/CB, Gp, CB]: dG @ W_hh
    w_dx: np.ndarray        # [Ip/CB, Gp, CB]: dG @ W_ih
    reset_after = True
    kind = "tiled"


class BlasGRU(NamedTuple):
    """The GRU's per-step BLAS loops (gru_blas.py): float64, and reset_after=False."""
    H: int
    reset_after: bool
    acts: tuple
    w_ih: np.ndarray        # [G,I]
    b_ih: np.ndarray        # [G]
    b_hh: np.ndarray        # [G]
    w_rz: np.ndarray        # [2H,H]: W_hh's r and z rows
    w_n: np.ndarray         # [H,H]: W_hh's n rows
    w_rz_t: np.ndarray      # [H,2H]
    w_n_t: np.ndarray       # [H,H]
    tiles: Optional[dict]   # float32 only: {"w_rz", "w_n", "w_rz_bwd", "w_n_bwd"} in blocks
    kind = "blas"


class NormGRU(NamedTuple):
    """The layer-normalised GRU (reset_after only; gru_blas.py's norm loops)."""
    H: int
    acts: tuple
    w_ih: np.ndarray        # [G,I]
    b_ih: np.ndarray        # [G]
    b_hh: np.ndarray        # [G]
    w_hh: np.ndarray        # [G,H]
    w_hh_t: np.ndarray      # [H,G]
    ln: tuple               # (ln_ih [G], ln_hh [G])
    tiles: Optional[dict]   # float32 only: {"w_hh", "w_hh_bwd"} in blocks
    reset_after = True
    kind = "norm"


class TiledRNN(NamedTuple):
    """The float32 RNN (rnn.py's loops)."""
    H: int
    Hp: int
    relu: bool              # the activation is relu (else tanh)
    rows: np.ndarray        # [H]: the tiled row of torch's row j
    bias: np.ndarray        # [1,Hp]: b_ih + b_hh
    w_in: np.ndarray        # [Hp/CB, I, CB]: x @ W_ih^T
    w_fwd: np.ndarray       # [Hp/CB, H, CB]: h @ W_hh^T (the H units, no padding)
    w_bwd: np.ndarray       # [Hp/CB, Hp, CB]: dG @ W_hh
    w_dx: np.ndarray        # [Ip/CB, Hp, CB]: dG @ W_ih
    kind = "tiled"


class BlasRNN(NamedTuple):
    """The float64 RNN (rnn.py's BLAS loops)."""
    H: int
    relu: bool
    w_ih: np.ndarray        # [H,I]
    w_hh: np.ndarray        # [H,H]
    bias: np.ndarray        # [H]: b_ih + b_hh
    w_hh_t: np.ndarray      # [H,H]
    kind = "blas"
