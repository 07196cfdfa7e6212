"""The asv suite loads and runs (one small point of each class), so it cannot rot."""
import importlib.util
import pathlib

SUITE = pathlib.Path(__file__).resolve().parent.parent / "asv_bench" / "benchmarks" / "lstm.py"


def _suite():
    spec = importlib.util.spec_from_file_location("asv_lstm_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_asv_grid_and_benchmarks_run():
    suite = _suite()
    assert suite.Inference.params == [["cpu", "cuda"], [16, 128, 1024], [64, 256, 1024], [1, 16, 128]]
    assert suite.Training.param_names == ["backend", "T", "H", "B"]
    for cls in (suite.Inference, suite.Training):
        bench = cls()
        bench.setup("cpu", 4, 8, 2)
        for name in dir(bench):
            if name.startswith(("time_", "peakmem_")):
                getattr(bench, name)("cpu", 4, 8, 2)
        assert 0 < bench.track_time_per_token("cpu", 4, 8, 2) < 1
    assert suite.Inference.track_time_per_token.unit == "seconds"  # asv formats seconds


def test_cuda_skips_without_a_gpu():
    """The tests run the CUDA kernels in the simulator, which the suite must not time."""
    import pytest
    with pytest.raises(NotImplementedError):
        _suite().Inference().setup("cuda", 4, 8, 2)
