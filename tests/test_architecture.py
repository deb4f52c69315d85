"""The architecture held by a test: each heavy or edge library is imported by one part only, the
domain never imports the flows, and ``mailpipe/`` has no import cycle (docs/architecture.md).

Every import statement counts, lazy ones inside functions too: a lazy import still ties the
module to the library.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# library -> the only files (glob patterns, relative to the repository) that may import it.
BOUNDARIES: dict[str, tuple[str, ...]] = {
    "psycopg": ("mailpipe/db.py",),
    "psycopg_pool": ("mailpipe/db.py",),
    "aiosmtplib": ("mailpipe/smtp.py", "mailpipe/smtp/*.py"),
    "great_expectations": ("mailpipe/quality/gx.py",),
    "prefect": (
        "flows/*.py",
        "mailpipe/deploy/*.py",
        "mailpipe/runtime.py",
        "mailpipe/cli/run.py",
    ),
}
# Modules that run where no Prefect API exists and must stay importable without it.
DOMAIN = "mailpipe"


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, absolute (relative imports resolved), lazy ones too."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            yield name
            # `from mailpipe import queue` imports the module mailpipe.queue
            yield from (f"{name}.{alias.name}" for alias in node.names)


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in _runtime_nodes_of(child))
            continue
        yield from _runtime_nodes_of(node)


def _runtime_nodes_of(node: ast.AST) -> Iterator[ast.AST]:
    yield node
    yield from _runtime_nodes(node)


def allowed(path: Path, patterns: tuple[str, ...]) -> bool:
    relative = path.relative_to(ROOT).as_posix()
    return any(fnmatch(relative, pattern) for pattern in patterns)


@pytest.mark.parametrize("library", sorted(BOUNDARIES))
def test_each_library_is_imported_inside_its_boundary_only(library: str) -> None:
    offenders = [
        path.relative_to(ROOT).as_posix()
        for path in python_files("mailpipe", "flows")
        if any(name == library or name.startswith(f"{library}.") for name in imports(path))
        and not allowed(path, BOUNDARIES[library])
    ]
    assert offenders == [], f"{library} imported outside {BOUNDARIES[library]}"


# Where flows are run or found: the deploy subpackage (the project folder, serve) and the CLI's
# run command (``mailpipe run``, which the demo uses too).
RUNS_FLOWS = ("mailpipe/deploy/*.py", "mailpipe/cli/run.py")


def test_the_domain_never_imports_the_flows() -> None:
    offenders = [
        path.relative_to(ROOT).as_posix()
        for path in python_files("mailpipe")
        if any(name == "flows" or name.startswith("flows.") for name in imports(path))
        and not allowed(path, RUNS_FLOWS)
    ]
    assert offenders == []


def test_mailpipe_has_no_import_cycle() -> None:
    modules = {module_name(p): p for p in python_files(DOMAIN)}
    graph = {
        name: {
            target
            for imported in imports(path)
            for target in (imported, imported.rpartition(".")[0])
            if target in modules and target != name
        }
        for name, path in modules.items()
    }
    # A package's __init__ importing its own submodules is its public face, not a cycle.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(f"{t}.")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_modules_are_small_or_say_why() -> None:
    """No module over ~400 lines without a reason written at its top (its docstring says why
    it is "over 400 lines")."""
    long = []
    for path in python_files("mailpipe", "flows"):
        text = path.read_text()
        if text.count("\n") > 420 and "over 400 lines" not in (
            ast.get_docstring(ast.parse(text)) or ""
        ):
            long.append(f"{path.relative_to(ROOT).as_posix()} ({text.count(chr(10))} lines)")
    assert long == []


def test_flows_are_thin() -> None:
    fat = [
        p.name
        for p in python_files("flows")
        if p.name != "__init__.py" and len(p.read_text().splitlines()) > 60
    ]
    assert fat == []
