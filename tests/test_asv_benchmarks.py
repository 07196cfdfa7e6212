"""The asv suite loads and runs (one small point of each class), so it cannot rot."""
import importlib.util
import pathlib

SUITES = pathlib.Path(__file__).resolve().parent.parent / "asv_bench" / "benchmarks"


def _suite(name="lstm"):
    spec = importlib.util.spec_from_file_location(f"asv_{name}_suite", SUITES / f"{name}.py")
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


def test_asv_seq2seq_benchmarks_run():
    suite = _suite("seq2seq")
    assert suite.Decoding.param_names == ["B", "T", "beam"]
    train = suite.Training()
    train.setup(2, 3)
    train.time_train_step(2, 3)
    for beam in (1, 2):
        decode = suite.Decoding()
        decode.setup(2, 3, beam)
        outs = decode.decode(beam, 3)
        assert len(outs) == 2 and all(len(out) <= 3 for out in outs)
        decode.time_decode(2, 3, beam)
        assert decode.track_sequences_per_s_decode(2, 3, beam) > 0
