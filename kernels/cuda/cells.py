"""The packed cells: the device arrays (and options) the CUDA kernels read, one
type per cell. pack_lstm_cuda, pack_gru_cuda and pack_rnn_cuda return them; the
packer copies the weights to the device once and the layer caches the cell until
its weights change.

Dimensions: I input features, H hidden units, P the units of h (H without a
projection), G = gates * H (LSTM 4, GRU 3, RNN 1). Weights in torch's layout.
"""
from typing import NamedTuple, Optional


class CudaLSTM(NamedTuple):
    """The LSTM (lstm.py; lstm_norm.py where ln is set)."""
    H: int
    P: int
    w_hr: object            # [P,H]: the projection (proj_size), or [0,0] for none
    peep: object            # [3,H]: the peepholes (i, f, o), or [0,1] for none
    ln: Optional[tuple]     # layer_norm's (ln_ih [G], ln_hh [G], ln_c [H], ln_c_bias [H])
    w_ih: object            # [G,I]
    w_hh: object            # [G,P]
    bias: object            # [G]: b_ih + b_hh
    clip: float             # cell_clip (inf: none)
    coupled: bool           # input_forget: f = 1 - i
    acts: tuple             # gates.make_acts's, for CUDA (gates.for_cuda)
    gclip: float            # gate_clip (inf: none)


class CudaGRU(NamedTuple):
    """The GRU (gru.py; gru_norm.py where ln is set)."""
    H: int
    reset_after: bool
    w_ih: object            # [G,I]
    w_hh: object            # [G,H]
    b_ih: object            # [G]
    b_hh: object            # [G]
    bias: object            # [G]: the input product's, b_ih + b_hh (b_ih alone in the n
                            # block with reset_after, where b_hn is added in the loop)
    acts: tuple             # gates.make_acts's, for CUDA
    ln: Optional[tuple]     # layer_norm's (ln_ih [G], ln_hh [G]), reset_after only


class CudaRNN(NamedTuple):
    """The plain RNN (rnn.py)."""
    H: int
    relu: bool              # the activation is relu (else tanh)
    w_ih: object            # [H,I]
    w_hh: object            # [H,H]
    bias: object            # [H]: b_ih + b_hh
