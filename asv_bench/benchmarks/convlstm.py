"""Throughput of one ConvLSTM2D layer over sequence length T, filters F and batch B.

32x32 frames of one channel, kernel 3, padding "same", called as in a Sequential
model (batch-first, return_sequences=True), on the CPU. `time_inference` is a
forward that keeps nothing; `time_training` is layer.zero_grad(), a forward with
training=True and backward_output with dx and every weight gradient. For numlstm
against torch and Keras at the issue's sizes: `numlstm bench --isolated --cell
convlstm2d`.
"""
import numpy as np

import numlstm
from numlstm.bench_convlstm import flops

T_VALUES = [4, 10]
F_VALUES = [8, 32]
B_VALUES = [1, 4]
SIZE, CHANNELS, KERNEL = 32, 1, 3


class ConvLSTM2D:
    params = [T_VALUES, F_VALUES, B_VALUES]
    param_names = ["T", "F", "B"]
    number = 1
    repeat = (1, 5, 60.0)
    timeout = 600

    def setup(self, T, F, B):
        rng = np.random.default_rng(0)
        self.layer = numlstm.ConvLSTM2D(CHANNELS, F, KERNEL, padding="same",
                                        return_sequences=True, batch_first=True, seed=0)
        self.x = rng.standard_normal((B, T, SIZE, SIZE, CHANNELS)).astype(np.float32)
        self.dy = rng.standard_normal((B, T, SIZE, SIZE, F)).astype(np.float32)
        self.train()  # compile or load the kernels outside the timing
        self.layer.forward(self.x)

    def train(self):
        self.layer.zero_grad()
        self.layer.forward(self.x, training=True)
        self.layer.backward_output(self.dy)

    def time_inference(self, T, F, B):
        self.layer.forward(self.x)

    def time_training(self, T, F, B):
        self.train()

    def track_gflops_training(self, T, F, B):
        """GFLOP/s of a training step: the convolutions' multiply-adds
        (3 * 2*T*B*R*C*k*k*(I+F)*4F) over the median time of 3 steps."""
        import time
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            self.train()
            times.append(time.perf_counter() - t0)
        return flops(T, B, SIZE, SIZE, CHANNELS, F, KERNEL, "training") / float(
            np.median(times)) / 1e9
    track_gflops_training.unit = "GFLOP/s"
