"""The package's shape: rooms import one way down a chain, no cycles, no hidden imports.

Every module under tools/ggufops is read with `ast` (nothing is imported). A module belongs to
a room: the top-level modules are the foundation, each subpackage is a room of its own. A
module may import its own room, the foundation and the rooms below it in CHAIN; never a room
above it. Module-level imports must form no cycle. A ggufops import inside a function is
allowed only where LAZY names it and says why.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tools" / "ggufops"
FOUNDATION = "foundation"
# Lowest first: a room may import only itself, the foundation and rooms to its left.
CHAIN = [FOUNDATION, "registry", "llama", "artifacts", "gates", "gitops", "fleet", "serve",
         "agent", "demo", "cli"]
ENTRY_POINT = "ggufops.__main__"  # `python -m ggufops`: part of the CLI

# (importing module, imported module) -> why the import waits until a function runs
LAZY = {
    ("ggufops.gitops.deploy", "ggufops.registry.validate"):
        "jsonschema loads only when a promotion check runs, not on `rollback --push`",
    ("ggufops.cli.gates", "ggufops.artifacts.pull"): "boto3/S3 only for `bench --pull`",
    ("ggufops.cli.gates", "ggufops.gates.runtimegate"):
        "S3 and child-process code only for `gate --runtime`",
    ("ggufops.cli.gitops", "ggufops.git"): "pr-comment alone needs git plumbing",
    ("ggufops.cli.registry_cmds", "ggufops.artifacts.dvc"):
        "S3 code only for `validate --check-artifacts`",
    ("ggufops.cli.runtime", "ggufops.redact"): "logging set up only when a host command runs",
    ("ggufops.cli.runtime", "ggufops.serve.app"):
        "`agent` must not load llama.cpp/numpy; only `serve` does",
    ("ggufops.cli.runtime", "ggufops.agent.loop"): "`serve` must not load the agent",
    ("ggufops.cli.runtime", "ggufops.agent.status"): "`serve` must not load the agent",
    ("ggufops.cli.runtime", "ggufops.fleet.status"): "`serve` must not load the agent",
    ("ggufops.cli.fleet", "ggufops.fleet.ops"): "S3 and git code only when `fleet` runs",
    ("ggufops.cli.registry_cmds", "ggufops.fleet.compat"):
        "S3 code only for `validate --check-fleet`",
    ("ggufops.llama.loadchild", "ggufops.llama.llm"):
        "register's load check child answers for a broken [llama] install instead of a traceback",
    ("ggufops.cli.fleet", "ggufops.fleet.view"): "S3 and git code only when `fleet` runs",
    ("ggufops.cli.gitops", "ggufops.fleet.ops"): "S3 code only for `history --hosts`",
    ("ggufops.cli.gitops", "ggufops.fleet.status"): "label parsing only for `rollback --selector`",
    ("ggufops.cli.runtime", "ggufops.agent.trust"): "`serve` must not load the agent",
    ("ggufops.cli.runtime", "ggufops.agent.webhook"): "`serve` must not load the agent",
    ("ggufops.cli.runtime", "ggufops.gitops.headpointer"):
        "S3 code only for `publish-head`, not for `serve` or `agent`",
}


@dataclass(frozen=True)
class Edge:
    source: str  # dotted module name
    target: str  # dotted module (or package) name
    line: int
    in_function: bool
    type_only: bool


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room_of(module: str, packages: set[str]) -> str:
    """`ggufops.x` is the foundation (unless x is a package); `ggufops.x.y` is room x."""
    parts = module.split(".")
    if module == ENTRY_POINT:
        return "cli"
    if len(parts) == 1:
        return FOUNDATION
    if len(parts) == 2 and module not in packages:
        return FOUNDATION
    return parts[1]


def imported_names(node: ast.Import | ast.ImportFrom, modules: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "ggufops"]
    if node.level or not node.module or node.module.split(".")[0] != "ggufops":
        return []
    targets = []
    for alias in node.names:
        candidate = f"{node.module}.{alias.name}"
        targets.append(candidate if candidate in modules else node.module)
    return targets


def edges_of(module: str, source: str, modules: set[str]) -> Iterator[Edge]:
    tree = ast.parse(source)
    yield from _walk(module, tree, modules, in_function=False, type_only=False)


def _walk(module: str, node: ast.AST, modules: set[str], *, in_function: bool,
          type_only: bool) -> Iterator[Edge]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            for target in imported_names(child, modules):
                if target != "ggufops":
                    yield Edge(module, target, child.lineno, in_function, type_only)
            continue
        yield from _walk(module, child, modules,
                         in_function=in_function or isinstance(child, ast.FunctionDef
                                                               | ast.AsyncFunctionDef),
                         type_only=type_only or _is_type_checking(child))


def _is_type_checking(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING")


def read_package(root: Path) -> dict[str, str]:
    """Dotted module name -> its source, for every .py file under `root`."""
    return {module_name(p, root): p.read_text() for p in sorted(root.rglob("*.py"))}


def all_edges(sources: dict[str, str]) -> list[Edge]:
    modules = set(sources)
    return [e for name, text in sources.items() for e in edges_of(name, text, modules)]


def packages_of(sources: dict[str, str]) -> set[str]:
    return {m for m in sources if any(other.startswith(m + ".") for other in sources)}


def chain_violations(sources: dict[str, str]) -> list[str]:
    packages = packages_of(sources)
    rank = {room: i for i, room in enumerate(CHAIN)}
    found = []
    for e in all_edges(sources):
        here, there = room_of(e.source, packages), room_of(e.target, packages)
        if here not in rank or there not in rank:
            found.append(f"{e.source}:{e.line}: room {here!r} or {there!r} is not in CHAIN")
        elif rank[there] > rank[here]:
            found.append(f"{e.source}:{e.line} imports {e.target}: {here} may not import "
                         f"{there}, which is above it in {CHAIN}")
    return found


def import_cycles(sources: dict[str, str]) -> list[list[str]]:
    """Every cycle of module-level imports (each reported once, from its first module)."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for e in all_edges(sources):
        if not e.in_function and not e.type_only and e.target in graph:
            graph[e.source].add(e.target)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return cycles


def hidden_imports(sources: dict[str, str]) -> list[str]:
    return [f"{e.source}:{e.line} imports {e.target} inside a function; import it at the top, "
            "or name it in LAZY with the reason"
            for e in all_edges(sources)
            if e.in_function and (e.source, e.target) not in LAZY]


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    return read_package(PACKAGE)


def test_every_room_is_in_the_chain(sources: dict[str, str]) -> None:
    rooms = {room_of(m, packages_of(sources)) for m in sources}
    assert rooms == set(CHAIN)


def test_imports_follow_the_chain(sources: dict[str, str]) -> None:
    assert chain_violations(sources) == []


def test_no_import_cycle(sources: dict[str, str]) -> None:
    assert import_cycles(sources) == []


def test_no_function_level_imports_but_the_named_lazy_ones(sources: dict[str, str]) -> None:
    assert hidden_imports(sources) == []


def test_every_lazy_import_still_exists(sources: dict[str, str]) -> None:
    lazy_now = {(e.source, e.target) for e in all_edges(sources) if e.in_function}
    assert set(LAZY) - lazy_now == set()


# --- the checks themselves can fail ---------------------------------------------------------

TOY = {
    "ggufops": "",
    "ggufops.errors": "",
    "ggufops.registry": "",
    "ggufops.registry.registry": "from ggufops.errors import X\n",
    "ggufops.serve": "",
    "ggufops.serve.app": "from ggufops.registry import registry\n",
}


def test_an_upward_import_is_reported() -> None:
    bad = {**TOY, "ggufops.registry.registry": "from ggufops.serve.app import handler\n"}
    found = chain_violations(bad)
    assert len(found) == 1
    assert found[0].startswith("ggufops.registry.registry:1 imports ggufops.serve.app")


def test_the_foundation_importing_a_room_is_reported() -> None:
    bad = {**TOY, "ggufops.errors": "from ggufops.registry import registry\n"}
    assert [v.split(":")[0] for v in chain_violations(bad)] == ["ggufops.errors"]


def test_a_cycle_is_reported_and_a_lazy_one_is_not() -> None:
    bad = {**TOY, "ggufops.errors": "import ggufops.registry.registry\n"}
    assert import_cycles(bad) == [["ggufops.errors", "ggufops.registry.registry",
                                   "ggufops.errors"]]
    lazy = {**TOY, "ggufops.errors": "def f():\n    import ggufops.registry.registry\n"}
    assert import_cycles(lazy) == []


def test_a_function_level_import_is_reported() -> None:
    bad = {**TOY, "ggufops.serve.app": "def f():\n    from ggufops.registry import registry\n"}
    assert hidden_imports(bad) == ["ggufops.serve.app:2 imports ggufops.registry.registry "
                                   "inside a function; import it at the top, or name it in "
                                   "LAZY with the reason"]
