"""The layers, checked on the source: every module under farm/ and workers/ is
parsed with ``ast`` (nothing is imported), and the test fails on

- an import cycle, counting imports inside functions too (a lazy import is still a dependency);
- ``sqlalchemy``, or an ORM row class, used outside farm/store (the store returns plain data);
- ``workers`` imported outside farm/cli (the CLI starts workers; nothing else knows Celery's tasks exist);
- a session opened outside farm/store;
- farm/jobs/contract.py or policy.py importing anything above them, farm/store or farm/spec importing the rest of
  farm/jobs, the planner importing the store or the artifact stores;
- a CLI command module importing another;
- a module over 400 lines or a function over 80 (docs/architecture.md says why each rule holds).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("farm", "workers")

# Modules outside farm/store that still use ORM rows (or sqlalchemy). issue 11: sealed store, not yet. Each is a
# big module on a job's path whose store calls hand it rows; it leaves this set when it reads plain data. The test
# fails when one of them no longer needs to be here (remove it) or when a module not listed starts to leak.
KNOWN_LEAKS: set[str] = set()


@dataclass(frozen=True)
class Import:
    target: str  # the imported module, resolved to a module of this tree when it is one
    names: tuple[str, ...]  # for ``from X import a, b``: a, b; else ()
    line: int


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = modules()


def resolve(name: str) -> str:
    """The module of this tree that ``name`` (a module, or a name inside one) lives in; else ``name``."""
    probe = name
    while probe and probe not in MODULES:
        probe = probe.rpartition(".")[0]
    return probe or name


def imports(module: str) -> Iterator[Import]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(resolve(alias.name), (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            names = tuple(a.name for a in node.names)
            # ``from farm.store import fleet`` depends on farm.store.fleet, not only on the package.
            targets = {resolve(f"{base}.{n}") for n in names} if base in MODULES else {resolve(base)}
            for target in targets:
                yield Import(target, names, node.lineno)


GRAPH = {m: {i.target for i in imports(m) if i.target in MODULES and i.target != m} for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def orm_classes() -> set[str]:
    tree = ast.parse(MODULES["farm.store.models"].read_text(encoding="utf-8"))
    return {n.name for n in tree.body if isinstance(n, ast.ClassDef) and n.name != "Base"}


def store_leaks(module: str, rows: set[str]) -> list[str]:
    """Where ``module`` uses sqlalchemy or an ORM row class (``queries.Job``, ``from ...models import Job``)."""
    found = []
    store_aliases: set[str] = set()
    for imp in imports(module):
        if imp.target.partition(".")[0] == "sqlalchemy":
            found.append(f"line {imp.line}: imports {imp.target}")
        elif imp.target == "farm.store.models":
            found.append(f"line {imp.line}: imports farm.store.models")
        elif imp.target.startswith("farm.store."):
            if set(imp.names) & rows:
                found.append(f"line {imp.line}: imports ORM row {sorted(set(imp.names) & rows)} from {imp.target}")
            store_aliases.update(imp.names or (imp.target.rpartition(".")[2],))
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in rows
            and isinstance(node.value, ast.Name)
            and node.value.id in store_aliases
        ):
            found.append(f"line {node.lineno}: uses ORM row {node.value.id}.{node.attr}")
    return found


def test_the_checker_sees_real_imports() -> None:
    # The rules below are only as good as the graph: it must hold edges it cannot miss.
    assert "farm.store.db" in GRAPH["farm.store.migrate"]
    assert "farm.quant.static" in GRAPH["farm.quant.registry"]
    assert "farm.store.fleet" in GRAPH["workers.heartbeat"]  # a function-level import
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    found = cycles(GRAPH)
    assert found == [], "import cycles (module- or function-level imports): " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_sqlalchemy_and_orm_rows_stay_in_the_store() -> None:
    rows = orm_classes()
    assert {"Job", "Sweep", "Metric"} <= rows
    leaking = {}
    for module in MODULES:
        if module == "farm.store" or module.startswith("farm.store."):
            continue
        found = store_leaks(module, rows)
        if found:
            leaking[module] = found
    new = {m: leaking[m] for m in sorted(set(leaking) - KNOWN_LEAKS)}
    assert not new, f"sqlalchemy or ORM rows used outside farm/store (read through a store function): {new}"
    sealed = sorted(KNOWN_LEAKS - set(leaking))
    assert not sealed, f"no longer leak the store: remove from KNOWN_LEAKS: {sealed}"


def test_workers_are_imported_only_by_the_cli() -> None:
    offenders = []
    for module in MODULES:
        if module.partition(".")[0] == "workers" or module == "farm.cli" or module.startswith("farm.cli."):
            continue
        offenders += [f"{module} line {i.line}" for i in imports(module) if i.target.partition(".")[0] == "workers"]
    assert offenders == [], f"workers imported outside farm/cli: {offenders}"


def command_modules() -> set[str]:
    """The modules farm/cli's command groups load commands from: the values of ``COMMANDS`` and of each group's
    ``lazy={...}`` map (``"module:attribute"``), as written in the source."""
    found = set()
    for module, path in MODULES.items():
        if module != "farm.cli" and not module.startswith("farm.cli."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            maps = []
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "COMMANDS" for t in node.targets
            ):
                maps.append(node.value)
            elif isinstance(node, ast.keyword) and node.arg == "lazy":
                maps.append(node.value)
            for value in maps:
                if isinstance(value, ast.Dict):
                    found.update(
                        f"farm.cli.{v.value.partition(':')[0]}"
                        for v in value.values
                        if isinstance(v, ast.Constant) and isinstance(v.value, str)
                    )
    return found


def test_a_cli_command_module_imports_no_other_command_module() -> None:
    # What two commands share is rendering (farm/cli/render.py, sweep_views.py, ...) or lives outside the CLI.
    commands = command_modules()
    assert {"farm.cli.sweep", "farm.cli.worker", "farm.cli.results", "farm.cli.analyze"} <= commands
    assert commands <= set(MODULES), f"a command names a module that does not exist: {commands - set(MODULES)}"
    offenders = [
        f"{module} line {i.line}: imports {i.target}"
        for module in sorted(commands)
        for i in imports(module)
        if i.target in commands and i.target != module
    ]
    assert offenders == [], f"helpers imported across command modules: {offenders}"
    # Module names match the command groups: `farm sweep` is farm/cli/sweep.py, with no `farm_` prefixes.
    assert sorted(m for m in MODULES if m.startswith("farm.cli.farm_")) == []


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_session_is_opened_outside_the_store() -> None:
    # ``db.session()`` outside farm/store hands a Session (and the ORM rows it yields) to code that should only see
    # plain data: it would not import sqlalchemy, so the check above would not see it.
    offenders = []
    for module, path in MODULES.items():
        if in_package(module, "farm.store"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "session":
                offenders.append(f"{module} line {node.lineno}")
    assert offenders == [], f"a session opened outside farm/store (call a store function instead): {offenders}"


# The leaves of a job's life: what they may import from this tree.
LEAVES = {
    "farm.jobs.policy": set(),
    "farm.jobs.contract": {"farm.errors", "farm.quant.bench_config", "farm.quant.config", "farm.quant.params"},
}


def test_the_contract_and_the_policy_are_leaves() -> None:
    for leaf, allowed in LEAVES.items():
        found = {i.target for i in imports(leaf) if i.target in MODULES}
        assert found <= allowed, f"{leaf} imports {sorted(found - allowed)}: it must stay a leaf everyone can import"


def test_the_store_and_the_planner_import_only_the_leaves_of_farm_jobs() -> None:
    offenders = []
    for module in MODULES:
        if not (in_package(module, "farm.store") or in_package(module, "farm.spec")):
            continue
        offenders += [
            f"{module} line {i.line}: imports {i.target}"
            for i in imports(module)
            if in_package(i.target, "farm.jobs") and i.target not in LEAVES
        ]
        # The planner makes no network call and runs nothing: no store, no artifact store, no engine steps.
        if in_package(module, "farm.spec"):
            offenders += [
                f"{module} line {i.line}: imports {i.target}"
                for i in imports(module)
                if in_package(i.target, "farm.store") or in_package(i.target, "farm.artifacts")
            ]
    assert offenders == [], f"imports upward from farm/store or farm/spec: {offenders}"


# Modules and functions over the size a reader takes in at once. Each exception names why one concept needs it.
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
LONG_MODULES: dict[str, str] = {}
LONG_FUNCTIONS: dict[str, str] = {}


def test_modules_and_functions_stay_small() -> None:
    long_modules, long_functions = set(), set()
    for module, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.add(module)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    long_functions.add(f"{module}.{node.name}")
    assert long_modules <= set(LONG_MODULES), (
        f"over {MAX_MODULE_LINES} lines: {sorted(long_modules - set(LONG_MODULES))}"
    )
    assert long_functions <= set(LONG_FUNCTIONS), (
        f"functions over {MAX_FUNCTION_LINES} lines: {sorted(long_functions - set(LONG_FUNCTIONS))}"
    )
    assert not (set(LONG_MODULES) - long_modules), "no longer long: remove from LONG_MODULES"
    assert not (set(LONG_FUNCTIONS) - long_functions), "no longer long: remove from LONG_FUNCTIONS"
