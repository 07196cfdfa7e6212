"""The documentation runs: the README's example and install commands, every Python
block of the site's guide pages (in the navigation's order, one namespace, as a
reader who pastes them one after another), and `mkdocs build --strict`."""
import pathlib
import re
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# The pages whose Python blocks run, in mkdocs.yml's order.
PAGES = ["index", "guide", "options", "cli", "interop", "backends", "quantization",
         "convlstm", "seq2seq"]


def _blocks(text, lang):
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _page(name):
    return (ROOT / "docs" / f"{name}.md").read_text()


def _run(blocks, namespace):
    for where, code in blocks:
        try:
            exec(compile(code, where, "exec"), namespace)
        except Exception as err:  # say which block broke
            raise AssertionError(f"{where} failed:\n{code}") from err


def test_readme_fits_on_a_screen_and_its_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (it saves a model)
    assert len(README.splitlines()) <= 200
    blocks = _blocks(README, "python")
    assert blocks, "the README shows one short example"
    _run([(f"README.md python block {n}", b) for n, b in enumerate(blocks)], {})


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    commands = [b.strip() for b in _blocks(README, "bash")[:2]]
    assert "numlstm train" in commands[0] and "pip install" in commands[0]
    assert "pytest" in commands[1] and "pip install" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
    start = (ROOT / "docs" / "index.md").read_text()
    assert commands[0] in start and commands[1] in start  # Getting started says the same


def test_guide_pages_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = [(f"docs/{p}.md python block {n}", b)
              for p in PAGES for n, b in enumerate(_blocks(_page(p), "python"))]
    assert len(blocks) >= 18  # the 17 of the old README's tour, and Getting started's
    _run(blocks, {})


def test_guide_summary_table_is_what_summary_prints():
    guide = _page("guide")
    namespace = {}
    _run([("docs/guide.md python block 0", _blocks(guide, "python")[0])], namespace)
    shown = re.search(r"`summary\(\)` prints what Keras's does:\n\n```\n(.*?)```", guide,
                      flags=re.S).group(1)
    assert namespace["model"].summary(print_fn=lambda s: None) == shown.rstrip("\n")


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert page.name in nav, f"docs/{page.name} is not in mkdocs.yml's nav"


def test_site_builds_strict(tmp_path):
    """What CI builds: the site, warnings as errors (a broken link, a docstring that
    mkdocstrings cannot render, a page outside the nav)."""
    mkdocs = [sys.executable, "-m", "mkdocs"]
    site = tmp_path / "site"
    proc = subprocess.run(mkdocs + ["build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / "index.html").is_file() and (site / "reference" / "index.html").is_file()
    shutil.rmtree(site)
