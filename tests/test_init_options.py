"""Initialisation options (issue: recurrent options): orthogonal recurrent weights and
the forget-gate bias of 1.0."""
import numpy as np
import pytest

import numlstm


@pytest.mark.parametrize("cls,gates", [(numlstm.LSTM, 4), (numlstm.GRU, 3), (numlstm.RNN, 1)])
def test_orthogonal_recurrent_weights(cls, gates):
    layer = cls(5, 7, num_layers=2, bidirectional=True, recurrent_init="orthogonal",
                dtype=np.float64, seed=3)
    for name, w in layer.params.items():
        if name.startswith("weight_hh"):
            for g in range(gates):
                block = w[g * 7:(g + 1) * 7]
                np.testing.assert_allclose(block.T @ block, np.eye(7), atol=1e-12,
                                           err_msg=f"{name} block {g}")
        else:  # everything else keeps torch's uniform init
            assert np.abs(w).max() <= 1 / np.sqrt(7)
    blocks = [layer.params["weight_hh_l0"][g * 7:(g + 1) * 7] for g in range(gates)]
    assert all(not np.allclose(blocks[0], b) for b in blocks[1:])  # drawn independently
    again = cls(5, 7, num_layers=2, bidirectional=True, recurrent_init="orthogonal",
                dtype=np.float64, seed=3)
    for k, v in layer.params.items():
        np.testing.assert_array_equal(again.params[k], v)


def test_unit_forget_bias():
    lstm = numlstm.LSTM(3, 4, num_layers=2, unit_forget_bias=True, seed=0)
    plain = numlstm.LSTM(3, 4, num_layers=2, seed=0)
    for sfx in ("_l0", "_l1"):
        b_ih, b_hh = lstm.params["bias_ih" + sfx], lstm.params["bias_hh" + sfx]
        np.testing.assert_array_equal(b_ih[4:8] + b_hh[4:8], np.ones(4, np.float32))
        for b, ref in ((b_ih, plain.params["bias_ih" + sfx]),
                       (b_hh, plain.params["bias_hh" + sfx])):
            np.testing.assert_array_equal(np.delete(b, np.s_[4:8]), np.delete(ref, np.s_[4:8]))
    # the default draws exactly what it always drew
    np.testing.assert_array_equal(plain.params["weight_hh_l1"],
                                  numlstm.LSTM(3, 4, num_layers=2, seed=0).params["weight_hh_l1"])


def test_init_options_in_the_config_and_refused_where_meaningless():
    lstm = numlstm.LSTM(3, 4, recurrent_init="orthogonal", unit_forget_bias=True)
    config = lstm.get_config()
    assert config["recurrent_init"] == "orthogonal" and config["unit_forget_bias"] is True
    assert "recurrent_init='orthogonal'" in repr(lstm)
    with pytest.raises(ValueError, match="recurrent_init: expected 'uniform' or 'orthogonal'"):
        numlstm.LSTM(3, 4, recurrent_init="glorot")
    with pytest.raises(ValueError, match="unit_forget_bias: only an LSTM has a forget gate"):
        numlstm.GRU(3, 4, unit_forget_bias=True)
    with pytest.raises(TypeError, match="unit_forget_bias: expected True or False"):
        numlstm.LSTM(3, 4, unit_forget_bias="yes")
