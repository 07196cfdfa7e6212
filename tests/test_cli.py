"""The numlstm command."""
import subprocess
import sys

from numlstm import cli


def test_demo_runs_and_checks_itself(capsys):
    assert cli.main(["demo", "--steps", "4", "--batch", "2", "--input-size", "3",
                     "--hidden-size", "5", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "forward  x (4, 2, 3) -> y (4, 2, 10)" in out
    assert "backward dy (4, 2, 10) -> dx (4, 2, 3)" in out
    assert "max relative error" in out


def test_console_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "numlstm", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "numlstm demo" in out
