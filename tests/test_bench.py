"""The comparison command and the memory count of the training cache."""
import numpy as np

from numlstm import bench, cli


def test_training_cache_holds_gates_c_and_h_and_nothing_else():
    m = bench.training_memory(T=96, B=5, H=64)
    assert m["expected"] == 96 * 5 * 6 * 64 * 4
    assert m["expected"] <= m["retained"] <= 1.02 * m["expected"] + 65536
    # The peak adds the output handed to the caller, not another cache.
    assert m["peak"] <= m["retained"] + 96 * 5 * 64 * 4 * 1.1 + 262144


def test_compare_alternates_with_torch_and_derives_figures():
    lines = []
    rows = bench.compare([(4, 2, 8)], repeats=2, out=lines.append)
    assert [r["mode"] for r in rows] == ["inference", "training"]
    for r in rows:
        flops = bench.lstm_flops(4, 2, 8, 8, r["mode"] == "training")
        for lib in ("numlstm", "torch"):
            assert np.isclose(r[f"{lib}_gflops"], flops / r[f"{lib}_ms"] / 1e6)
            assert np.isclose(r[f"{lib}_tokens_per_s"], 8 / (r[f"{lib}_ms"] / 1e3))
        assert np.isclose(r["ratio"], r["torch_ms"] / r["numlstm_ms"])
    assert lines[0].startswith("float32 matmul rate")
    assert any(line.startswith("training      4    2     8 |") for line in lines)


def test_bench_command_writes_json(tmp_path, capsys):
    path = tmp_path / "rows.json"
    assert cli.main(["bench", "--shapes", "3,2,8", "--repeats", "1", "--json",
                     str(path)]) == 0
    assert "ratio = torch time / numlstm time" in capsys.readouterr().out
    import json
    assert len(json.loads(path.read_text())) == 2


def test_memory_command(capsys):
    assert cli.main(["bench", "--memory", "16", "2", "8"]) == 0
    assert "the cache must hold gates, c and h" in capsys.readouterr().out
