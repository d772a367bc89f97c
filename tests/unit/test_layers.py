"""The package's layers, as DESIGN.md draws them, checked on the source (not by convention).

- ``core/`` is pure: the standard library, pydantic, and ``core`` itself (plus the two leaf
  helpers ``errors`` and ``_async``).
- Only ``adapters/`` imports a broker or database library; only ``adapters/celery/`` imports
  celery or billiard.
- ``adapters/`` never imports the app, the CLI or the test toolkit; ``jobs.py`` imports no
  concrete adapter (only the ``adapters`` table and ``adapters.base``).
- No two modules import each other at import time.

Imports under ``if TYPE_CHECKING:`` do not count; imports inside functions do (except for
the cycle check, which is about import time).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "unified_jobs"
DRIVERS = {"celery", "kombu", "redis", "sqlalchemy", "billiard", "psycopg", "amqp"}
CORE_MAY_IMPORT = {"pydantic", "unified_jobs.core", "unified_jobs.errors", "unified_jobs._async"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, *, top_level_only: bool = False) -> Iterator[str]:
    """The absolute module names ``path`` imports at run time (relative imports resolved)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]

    def walk(nodes: list[ast.stmt]) -> Iterator[str]:
        for node in nodes:
            if isinstance(node, ast.If) and _type_checking(node):
                yield from walk(node.orelse)
                continue
            if isinstance(node, ast.Import):
                yield from (alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    yield f"{base}.{node.module}" if node.module else base
                else:
                    assert node.module is not None
                    yield node.module
                    # ``from unified_jobs import adapters`` imports the submodule too
                    if node.module.startswith("unified_jobs"):
                        submodules = (f"{node.module}.{alias.name}" for alias in node.names)
                        yield from (name for name in submodules if is_module(name))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and top_level_only:
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list) and children and isinstance(children[0], ast.AST):
                    yield from walk(children)  # type: ignore[arg-type]

    return walk(ast.parse(path.read_text(encoding="utf-8")).body)


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def in_package(path: Path, *parts: str) -> bool:
    return path.relative_to(PACKAGE).parts[: len(parts)] == parts


def is_under(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("path", [p for p in sources() if in_package(p, "core")], ids=module_name)
def test_core_is_pure(path: Path) -> None:
    bad = [
        name
        for name in imports(path)
        if name.split(".")[0] not in sys.stdlib_module_names and not is_under(name, CORE_MAY_IMPORT)
    ]
    assert bad == [], f"{module_name(path)} imports {bad}; core/ may import only {sorted(CORE_MAY_IMPORT)}"


def test_only_adapters_import_brokers_and_only_the_celery_package_imports_celery() -> None:
    found = []
    for path in sources():
        for name in imports(path):
            top = name.split(".")[0]
            if top in DRIVERS and not in_package(path, "adapters"):
                found.append(f"{module_name(path)} imports {name}")
            if top in ("celery", "billiard") and not in_package(path, "adapters", "celery"):
                found.append(f"{module_name(path)} imports {name}")
    assert found == []


def test_adapters_never_import_the_app_the_cli_or_the_test_toolkit() -> None:
    found = [
        f"{module_name(path)} imports {name}"
        for path in sources()
        if in_package(path, "adapters")
        for name in imports(path)
        if is_under(name, {"unified_jobs.jobs", "unified_jobs.cli", "unified_jobs.testing"})
    ]
    assert found == []


def test_the_app_imports_no_concrete_adapter() -> None:
    names = [n for n in imports(PACKAGE / "jobs.py") if is_under(n, {"unified_jobs.adapters"})]
    assert names and set(names) <= {"unified_jobs.adapters", "unified_jobs.adapters.base"}, names


def test_no_import_cycle_at_import_time() -> None:
    modules = {module_name(p): p for p in sources()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports(path, top_level_only=True):
            # ``import a.b.c`` imports a, a.b and a.b.c; keep the ones that are our modules.
            parts = imported.split(".")
            targets |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules.keys()
        # a package's __init__ runs before its submodules: an import of the parent is not a cycle
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    cycles = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []
