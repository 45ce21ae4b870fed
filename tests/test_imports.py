"""The package's shape, read from its modules' imports with ``ast``: no circle, and no
module imports one of a higher tier (the tiers are the README's module map)."""

from __future__ import annotations

import ast
from pathlib import Path

import daemon

PACKAGE = Path(daemon.__file__).parent

# Highest first. A module may import modules of its own tier or lower ones.
TIERS: list[tuple[str, set[str]]] = [
    ("entry points", {"__main__", "cli"}),
    ("the daemon and the commands", {"service", "ops"}),
    ("the flow of a file", {"recovery", "pipeline"}),
    ("rooms", {"admission", "checks", "jobs", "filing", "tracker", "watcher", "web",
               "instances", "view", "notify"}),
    ("what they work on", {"work", "placing", "ledger", "client", "failedrows", "jsonfile",
                           "normalise", "csvfile", "csvsplit", "spool"}),
    ("the tools under those", {"store", "folders", "rawfile", "fileref", "results", "answers",
                               "inboxevents",
                               "ratelimit",
                               "retry", "metrics", "trouble", "tasks", "http_server",
                               "systemd"}),
    ("foundations", {"settings", "config", "logs", "exits", "__init__"}),
]


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]  # a subpackage is named for its folder
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules *path* imports, at any depth in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name == "daemon":
                found.add("__init__")
            elif name.startswith("daemon.") and name[len("daemon."):] in modules:
                found.add(name[len("daemon."):])
    found.discard(_name(path))
    return found


def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def _tier(module: str) -> int:
    top = module.split(".")[0]
    if top == "sim":
        return len(TIERS)  # the simulator: its own world, below everything
    for rank, (_label, members) in enumerate(TIERS):
        if top in members:
            return rank
    raise AssertionError(f"daemon/{module}.py is in no tier: add it to TIERS and the "
                         "README's module map")


def _circle(imports: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: being walked, 2: done
    path: list[str] = []

    def walk(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for dep in sorted(imports.get(module, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := walk(dep)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(imports):
        if module not in state and (found := walk(module)):
            return found
    return None


def test_no_module_imports_round_in_a_circle() -> None:
    circle = _circle(graph())
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_no_module_imports_from_a_higher_tier() -> None:
    upward = [f"{module} ({TIERS[_tier(module)][0]}) imports {dep} "
              f"({TIERS[_tier(dep)][0] if _tier(dep) < len(TIERS) else 'the simulator'})"
              for module, deps in graph().items() for dep in sorted(deps)
              if _tier(dep) < _tier(module)]
    assert upward == []


def test_the_simulator_stands_alone() -> None:
    """It serves tests, benchmarks and --sandbox; nothing of the daemon leaks into it."""
    outside = {f"{module} imports {dep}" for module, deps in graph().items()
               if module.startswith("sim") for dep in deps if not dep.startswith("sim")}
    assert outside == set()


def test_the_checks_find_a_circle_and_an_upward_import() -> None:
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set()}) is None
    assert _tier("ledger") > _tier("pipeline") > _tier("service")
