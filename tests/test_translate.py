"""`numlstm train --task translate` and `numlstm translate`: the dates, the pairs
file and its errors, metrics recomputed from the checkpoint, decoding from the
command line, and a run killed and resumed that ends as an uninterrupted one."""
import datetime
import json
import os
import signal
import time

import numpy as np
import pytest

import numlstm
from numlstm.cli import main
from numlstm.translate import CharVocab, date_pairs, scores
from helpers import checkpoint_step, one_error_line, run_numlstm

SMALL = ["--hidden", "8", "--embed", "8", "--batch-size", "16", "--quiet"]


def test_date_pairs_write_the_same_date_each_way(rng):
    pairs = date_pairs(rng, 600)
    months = [datetime.date(2000, m, 1).strftime("%B") for m in range(1, 13)]
    shapes = set()
    for source, target in pairs:
        d = datetime.date.fromisoformat(target)
        assert 1950 <= d.year <= 2049 and str(d.year) in source
        named = [m for m in months if m[:3].lower() in source.lower()]
        if named:  # a month written as a word is the target's month
            assert named == [months[d.month - 1]]
        else:  # numbers only: day and month both appear as numbers
            numbers = [int(n) for n in source.replace("/", " ").replace(".", " ").split()]
            assert d.day in numbers and d.month in numbers
        shapes.add("".join("9" if c.isdigit() else "a" if c.isalpha() else c
                           for c in source.lower()).replace("99", "9").replace("aa", "a"))
    assert len(shapes) >= 12


def test_scores_and_vocab_round_trip():
    assert scores(["2020-01-02", "1999-12-31"], ["2020-01-02", "1999-12-30"]) == \
        (0.5, 19 / 20)
    vocab = CharVocab.of(["ab", "ca"], 3)
    ids, lengths = vocab.encode(["abc", "c"], end=2)
    assert ids.tolist() == [[3, 4, 5, 2], [5, 2, 0, 0]] and lengths.tolist() == [4, 2]
    assert vocab.decode(ids[0]) == "abc" and vocab.unknown("abz") == ["z"]


def _pairs_file(path, n=120, seed=0):
    """Words and their reversals, as a pairs file."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        word = "".join(rng.choice(list("abcde"), rng.integers(2, 6)))
        lines.append(f"{word}\t{word[::-1]}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [line.split("\t") for line in lines]


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("translate")
    pairs = _pairs_file(folder / "pairs.tsv")
    out = str(folder / "run")
    assert main(["train", "--task", "translate", "--pairs", str(folder / "pairs.tsv"),
                 "--steps", "40", "--out", out] + SMALL) == 0
    return dict(out=out, pairs=pairs, file=str(folder / "pairs.tsv"))


def test_translate_metrics_match_the_checkpoint(pairs_run):
    with open(os.path.join(pairs_run["out"], "metrics.json")) as f:
        m = json.load(f)
    val = pairs_run["pairs"][-12:]
    assert m["task"] == "translate" and m["pairs"] == 120 and m["validation_pairs"] == 12
    ck = numlstm.load_checkpoint(pairs_run["out"])
    assert isinstance(ck.model, numlstm.Seq2Seq) and ck.step == 40
    src, tgt = CharVocab(ck.extra["src_chars"], 1), CharVocab(ck.extra["tgt_chars"], 3)
    x, lengths = src.encode([s for s, _ in val])
    for beam, name in ((1, ""), (4, "_beam4")):
        decoded = ck.model.decode(x, lengths, max_len=ck.extra["max_len"], beam_size=beam)
        out = [tgt.decode(d) for d in decoded]
        exact, chars = scores(out, [t for _, t in val])
        assert m[f"val_exact_match{name}"] == exact
        assert m[f"val_char_accuracy{name}"] == chars
        assert m[f"decode_seq_per_s_{'greedy' if beam == 1 else 'beam4'}"] > 0
    for png in ("loss.png", "attention.png"):
        with open(os.path.join(pairs_run["out"], png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_translate_command_decodes_and_refuses_bad_text(pairs_run, capsys, tmp_path):
    ck = numlstm.load_checkpoint(pairs_run["out"])
    src, tgt = CharVocab(ck.extra["src_chars"], 1), CharVocab(ck.extra["tgt_chars"], 3)
    x, lengths = src.encode(["abc", "edd"])
    decoded = ck.model.decode(x, lengths, max_len=ck.extra["max_len"], beam_size=2)
    want = [tgt.decode(d) for d in decoded]
    capsys.readouterr()
    assert main(["translate", "--checkpoint", pairs_run["out"], "--beam", "2", "abc",
                 "edd"]) == 0
    assert capsys.readouterr().out.splitlines() == want
    assert main(["translate", "--checkpoint", pairs_run["out"], "abz"]) == 2
    one_error_line(capsys, "'abz'", "never saw", "'z'")
    assert main(["translate", "--checkpoint", pairs_run["out"], ""]) == 2
    one_error_line(capsys, "empty text")
    other = str(tmp_path / "adding")
    assert main(["train", "--task", "adding", "--steps", "2", "--seq-len", "4", "--hidden",
                 "4", "--out", other, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["translate", "--checkpoint", other, "abc"]) == 2
    one_error_line(capsys, "--checkpoint", "'adding'")


@pytest.mark.parametrize("body,needles", [
    ("a\tb\n\nc\td\n", ["line 2 is empty"]),
    ("a\tb\nc d\n", ["line 2 has 0 tabs", "'c d'"]),
    ("a\tb\tc\n", ["line 1 has 2 tabs"]),
    ("a\tb\n\td\n", ["line 2 has an empty source"]),
    ("a\tb\n" * 5, ["at least 10 pairs", "got 5"]),
])
def test_bad_pairs_files_are_one_line_errors(tmp_path, capsys, body, needles):
    path = tmp_path / "pairs.tsv"
    path.write_text(body, encoding="utf-8")
    assert main(["train", "--task", "translate", "--pairs", str(path), "--steps", "1",
                 "--out", str(tmp_path / "run")] + SMALL) == 2
    one_error_line(capsys, "--pairs", *needles)


def test_pairs_file_that_is_not_utf8_or_missing(tmp_path, capsys):
    path = tmp_path / "latin1.tsv"
    path.write_bytes("caf\xe9\tcoffee\n".encode("latin-1"))
    assert main(["train", "--task", "translate", "--pairs", str(path)] + SMALL) == 2
    one_error_line(capsys, "not UTF-8")
    assert main(["train", "--task", "translate", "--pairs", str(tmp_path / "none")]
                + SMALL) == 2
    one_error_line(capsys, "no such file")
    assert main(["train", "--task", "adding", "--pairs", str(path)] + SMALL) == 2
    one_error_line(capsys, "--pairs goes with the translate task")


def test_resume_refuses_other_pairs(pairs_run, tmp_path, capsys):
    other = tmp_path / "other.tsv"
    _pairs_file(other, seed=1)
    assert main(["train", "--task", "translate", "--pairs", str(other), "--resume",
                 pairs_run["out"], "--out", str(tmp_path / "r"), "--steps", "41"]
                + SMALL) == 2
    one_error_line(capsys, "other pairs")


def test_translate_killed_and_resumed_ends_as_an_uninterrupted_run(tmp_path):
    """The default task (generated dates), small: SIGKILL the run after a checkpoint,
    resume it; the end is the uninterrupted run's, bit for bit (a constant schedule:
    the cosine one's shape depends on --steps). (tests/test_reliability.py kills the
    adding task at five random moments; one kill here keeps the suite short.)"""
    total = 150
    args = ["train", "--task", "translate", "--steps", str(total), "--checkpoint-every", "5",
            "--schedule", "constant"] + SMALL
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    assert run_numlstm(args + ["--out", straight]).wait(timeout=600) == 0
    os.makedirs(killed)
    for target in (40,):
        proc = run_numlstm(args + ["--resume", killed])
        deadline = time.perf_counter() + 300
        while checkpoint_step(killed) < target:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.perf_counter() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert target <= checkpoint_step(killed) < total
    assert run_numlstm(args + ["--resume", killed]).wait(timeout=600) == 0
    a, b = numlstm.load_checkpoint(straight), numlstm.load_checkpoint(killed)
    assert a.step == b.step == total
    for key, w in a.model.get_weights().items():
        np.testing.assert_array_equal(b.model.get_weights()[key], w, err_msg=key)
    assert a.extra["curve"] == b.extra["curve"]
