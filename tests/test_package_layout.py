"""The package's shape: what a plain `pip install .` installs, no module-level import
cycle, no private name taken from another module, no module over 800 lines."""
import ast
import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _modules():
    """{dotted name: path} of numlstm's modules (kernels/ installs as numlstm.kernels)."""
    out = {}
    for top, prefix in ((ROOT / "numlstm", "numlstm"), (ROOT / "kernels", "numlstm.kernels")):
        for path in top.rglob("*.py"):
            parts = path.relative_to(top).with_suffix("").parts
            name = ".".join((prefix,) + parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(name, path, modules):
    """(module imported, names taken) of each relative import at the module's top."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[:len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            yield from ((s, []) for s in subs)
            if not subs:
                yield target, [a.name for a in node.names]


def test_every_package_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {n for n, p in _modules().items() if p.name == "__init__.py"}
    assert found == listed, f"pyproject.toml's packages: add {found - listed}"


def test_no_import_cycle_and_no_private_name_across_modules():
    modules = _modules()
    edges = {}
    for name, path in modules.items():
        edges[name] = set()
        for target, names in _imports(name, path, modules):
            edges[name].add(target)
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{name} imports {private} from {target}"
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in edges.get(node, ()):
            assert state.get(nxt) != "open", f"import cycle: {' -> '.join(stack + [nxt])}"
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_no_module_over_800_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > 800}
    assert not long, long


def test_the_readme_and_the_site_say_nothing_of_removed_files():
    text = (ROOT / "README.md").read_text() + "".join(
        p.read_text() for p in (ROOT / "docs").glob("*.md"))
    for gone in ("BENCHMARKS.md", "numlstm/layers.py", "tests/interop_report.py"):
        assert not re.search(re.escape(gone), text), gone
