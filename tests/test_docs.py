"""The README's examples run, and its install-and-test command is the one CI runs."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_python_blocks_run_in_order():
    blocks = _blocks("python")
    assert len(blocks) >= 5
    namespace = {}
    for n, code in enumerate(blocks):
        try:
            exec(compile(code, f"README.md python block {n}", "exec"), namespace)
        except Exception as err:  # say which block broke
            raise AssertionError(f"README python block {n} failed:\n{code}") from err


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    commands = [b.strip() for b in _blocks("bash")[:2]]
    assert "numlstm train" in commands[0] and "pip install" in commands[0]
    assert "pytest" in commands[1] and "pip install" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_readme_summary_table_is_what_summary_prints():
    namespace = {}
    exec(compile(_blocks("python")[0], "README.md python block 0", "exec"), namespace)
    shown = re.search(r"`summary\(\)` prints what Keras's does:\n\n```\n(.*?)```", README,
                      flags=re.S).group(1)
    assert namespace["model"].summary(print_fn=lambda s: None) == shown.rstrip("\n")
