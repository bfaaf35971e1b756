"""The package's folders follow the data flow, and imports follow the folders.

config -> schedule -> engine -> flows -> run -> observe -> results -> analysis -> present -> live -> sandbox ->
runner -> cli: a module imports from its own folder and from folders before it. The imports that still go the other
way are listed below, each with what it is waiting for; a new one fails this test, and so does
any import cycle between modules' top-level imports.
"""

from __future__ import annotations

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "loadforge")
LAYERS = ("foundation", "config", "schedule", "engine", "flows", "run", "observe", "results", "analysis",
          "present", "live", "sandbox", "runner", "cli")

# (importer, imported): imports that still go against the flow, each with what it waits for.
KNOWN_UPWARD = {
    # Not debt: the arrival count comes from the engine's own C function, so that Python and
    # the engine can never lay different schedules.
    ("loadforge.schedule", "loadforge._core"),
}


def modules() -> dict[str, str]:
    out = {}
    root = os.path.dirname(PACKAGE)
    for dirpath, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    out["loadforge._core"] = ""
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("errors", "units", "limits", "__init__"):
        return "foundation"
    # capacity and simulate drive runs (or model them) as runner does: the same layer.
    return {"_core": "engine", "capacity": "runner", "simulate": "runner"}.get(parts[1], parts[1])


def imports(mods: dict[str, str]) -> list[tuple[str, str, bool]]:
    """(importer, imported module, at top level) for every import of a loadforge module."""
    out = []
    for name, path in mods.items():
        if not path:
            continue
        tree = ast.parse(open(path).read())
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("loadforge")):
                continue
            targets = [f"{node.module}.{a.name}" for a in node.names
                       if f"{node.module}.{a.name}" in mods] or [node.module]
            out += [(name, t, id(node) in top) for t in targets if t in mods]
    return out


def test_imports_follow_the_folders():
    mods = modules()
    upward = {(a, b) for a, b, _ in imports(mods)
              if LAYERS.index(layer(b)) > LAYERS.index(layer(a))}
    assert upward <= KNOWN_UPWARD, sorted(upward - KNOWN_UPWARD)


def test_no_import_cycle_at_module_level():
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for a, b, top in imports(mods):
        if top and a != b:
            graph[a].add(b)
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, "import cycle: " + " -> ".join([*path, m, n])
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def private_uses(mods: dict[str, str]) -> list[str]:
    """Every use of another module's `_private` name in the package: `from loadforge.x import
    _y` (a name, not a module) and `m._y` where `m` is a loadforge module imported by name."""
    found = []
    for name, path in mods.items():
        if not path:
            continue
        tree = ast.parse(open(path).read())
        aliases: dict[str, str] = {}      # local name -> the loadforge module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("loadforge"):
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if full in mods:
                        aliases[a.asname or a.name] = full
                    elif a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{name}:{node.lineno} imports {node.module}.{a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                    and f"{aliases[node.value.id]}.{node.attr}" not in mods):
                found.append(f"{name}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    # A module's `_name` is its own: another module that needs it calls a public face instead
    # (STYLE.md "A coordinator coordinates"). The tests may reach into privates.
    assert private_uses(modules()) == []


def test_the_private_name_check_finds_an_import_and_a_call(tmp_path):
    pkg = tmp_path / "loadforge"
    (pkg / "run").mkdir(parents=True)
    (pkg / "run" / "a.py").write_text("def _helper():\n    pass\n")
    (pkg / "run" / "b.py").write_text("from loadforge.run.a import _helper\n")
    (pkg / "run" / "c.py").write_text("from loadforge.run import a\n\na._helper()\n")
    (pkg / "run" / "d.py").write_text("from loadforge.run import a\n\na.helper()\n")
    mods = {f"loadforge.run.{m}": str(pkg / "run" / f"{m}.py") for m in "abcd"}
    assert private_uses(mods) == ["loadforge.run.b:1 imports loadforge.run.a._helper",
                                  "loadforge.run.c:3 uses loadforge.run.a._helper"]
