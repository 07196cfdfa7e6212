"""Throughput of one LSTM layer over sequence length T, hidden size H and batch B.

I = H. `inference` is a forward that keeps nothing; `training` is a forward with
training=True plus the backward with dx and every weight gradient. Each backend
of numlstm is a parameter; "cuda" skips itself where no GPU is (or where
Numba's simulator stands in for one). On the GPU, x and dy live on the device
and each timed step ends with a synchronisation, so a time is the kernels'
alone, with no copies between host and device.
"""
import numpy as np

import numlstm
from numlstm.dispatch import gpu_available

T_VALUES = [16, 128, 1024]
H_VALUES = [64, 256, 1024]
B_VALUES = [1, 16, 128]
BACKENDS = ["cpu", "cuda"]


class _LSTMBench:
    params = [BACKENDS, T_VALUES, H_VALUES, B_VALUES]
    param_names = ["backend", "T", "H", "B"]
    number = 1
    repeat = (1, 5, 120.0)
    timeout = 1200
    training = False

    def setup(self, backend, T, H, B):
        if backend == "cuda" and not gpu_available():
            raise NotImplementedError("backend cuda needs a GPU; none here")
        rng = np.random.default_rng(0)
        self.lstm = numlstm.LSTM(H, H, backend=backend, seed=0)
        self.x = rng.standard_normal((T, B, H)).astype(np.float32)
        self.dy = rng.standard_normal((T, B, H)).astype(np.float32)
        self.sync = lambda: None
        if backend == "cuda":
            from numba import cuda
            self.x, self.dy, self.sync = cuda.to_device(self.x), cuda.to_device(self.dy), \
                cuda.synchronize
        self.step()  # compile or load the kernels outside the timing

    def step(self):
        if self.training:
            self.lstm(self.x, training=True)
            self.lstm.backward(self.dy)
        else:
            self.lstm(self.x)
        self.sync()

    def time_step(self, backend, T, H, B):
        self.step()

    def track_time_per_token(self, backend, T, H, B):
        """Seconds per token (T*B of them a call), the median of 3 calls: a unit asv
        formats (it shows 1.2μs; tokens/s is its inverse, which asv would print as a
        bare number)."""
        import time
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - t0)
        return float(np.median(times)) / (T * B)
    track_time_per_token.unit = "seconds"

    def peakmem_step(self, backend, T, H, B):
        self.step()


# asv skips classes named with a leading underscore and finds the inherited
# benchmarks on these two.
class Inference(_LSTMBench):
    """A forward that keeps nothing."""
    training = False


class Training(_LSTMBench):
    """A forward with training=True, then the backward with every gradient."""
    training = True
