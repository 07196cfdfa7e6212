"""Seq2Seq: a training step (teacher forcing) and decoding (greedy and beam search)
over batch B and target length T, at the translate task's model size (a
bidirectional LSTM encoder of 64 units a direction, a decoder of 128, Luong
attention, 40 source and 14 target ids), sources of 2T steps, on the CPU.

`track_sequences_per_s_decode` is the derived figure: decoded sequences a second,
the median of 3 decodes (greedy and a beam of 4; `numlstm train --task translate`
prints the same for its validation set).
"""
import time

import numpy as np

import numlstm

B_VALUES = [1, 64]
T_VALUES = [10, 30]
BEAMS = [1, 4]


def _model_and_batch(B, T):
    rng = np.random.default_rng(0)
    model = numlstm.Seq2Seq(40, 14, embed=32, hidden=64, bidirectional=True,
                            attention="luong", seed=0).compile("adam", lr=1e-3)
    x = rng.integers(1, 40, (B, 2 * T))
    y = rng.integers(3, 14, (B, T))
    return model, x, y


class Training:
    params = [B_VALUES, T_VALUES]
    param_names = ["B", "T"]
    number = 1
    repeat = (1, 5, 60.0)

    def setup(self, B, T):
        self.model, self.x, self.y = _model_and_batch(B, T)
        self.model.train_step(self.x, self.y)  # compile or load the kernels first

    def time_train_step(self, B, T):
        self.model.train_step(self.x, self.y)


class Decoding:
    params = [B_VALUES, T_VALUES, BEAMS]
    param_names = ["B", "T", "beam"]
    number = 1
    repeat = (1, 5, 60.0)

    def setup(self, B, T, beam):
        self.model, self.x, _ = _model_and_batch(B, T)
        self.decode(beam, T)

    def decode(self, beam, T):
        # (an untrained model rarely says eos: every sequence runs to max_len = T)
        return self.model.decode(self.x, max_len=T, beam_size=beam)

    def time_decode(self, B, T, beam):
        self.decode(beam, T)

    def track_sequences_per_s_decode(self, B, T, beam):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            self.decode(beam, T)
            times.append(time.perf_counter() - t0)
        return B / float(np.median(times))
    track_sequences_per_s_decode.unit = "sequences/s"
