"""The package structure ARCHITECTURE.md describes, checked from the source: imports run one way,
there are no import circles between files, and no library file outgrows one idea (400 lines)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("config", "data", "datasets", "model", "quantization", "training", "compressors", "search")
# a package may import only the packages listed for it (ARCHITECTURE.md: the layers)
ALLOWED = {
    "config": {"config"},
    "data": {"data", "config"},
    "datasets": {"datasets", "data", "config"},  # generators of volumes, written with data's writers
    "model": {"model", "data", "config"},
    "quantization": {"quantization", "model", "data", "config"},
    "training": {"training", "quantization", "model", "data", "datasets", "config"},
    "compressors": {"compressors", "training", "quantization", "model", "data", "datasets", "config"},
    "search": {"search", "training", "model", "data", "config"},
}
MAX_LINES = 400
NAMESPACE = "neurcomp"  # every project import goes through it (neurcomp/__init__.py)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _source_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            files[_module_name(path)] = path
    for path in sorted(ROOT.glob("Neurcomp*.py")):
        files[_module_name(path)] = path
    return files


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules ``path`` imports, anywhere in the file (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            name = name.removeprefix(NAMESPACE + ".")
            while name and name not in modules:  # the longest prefix that is a project module
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    files = _source_files()
    modules = set(files)
    graph = {}
    for name, path in files.items():
        deps = _imports(path, modules) - {name}
        # importing a package runs its __init__: a module's own package is not an edge back to it
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    return graph


def test_packages_depend_one_way():
    wrong = []
    for module, deps in _graph().items():
        package = module.split(".")[0]
        if package not in ALLOWED:
            continue
        wrong += [f"{module} imports {d}" for d in sorted(deps) if d.split(".")[0] not in ALLOWED[package]]
    assert not wrong, "\n".join(wrong)


def test_no_import_circles_between_files():
    graph = _graph()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_no_source_file_over_400_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in _source_files().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)


def test_every_project_import_goes_through_the_namespace():
    """``from config.options import ...`` would load a second copy of a module, or a notebook's own
    config.py: the project imports itself only as ``neurcomp.<package>``."""
    bare = []
    files = list(_source_files().values()) + sorted((ROOT / "tests").glob("*.py")) \
        + sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / NAMESPACE).glob("*.py"))
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            bare += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                     if n.split(".")[0] in PACKAGES]
    assert not bare, "\n".join(bare)
