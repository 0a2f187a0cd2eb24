"""The shape of the code, checked: no import cycles between stdd's modules (imports made only
for type checkers excepted), no private name imported from another module, and no module over
~400 lines without a reason written at its top."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "stdd"
LIMIT = 400


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def runtime_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for each import that runs when the module is imported (not under
    `if TYPE_CHECKING:`), resolved to absolute stdd module names."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []

    def visit(nodes, top: bool):
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                out.extend((a.name, []) for a in node.names if a.name.startswith("stdd"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod.startswith("stdd"):
                    out.append((mod, [a.name for a in node.names]))
            elif top and isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(getattr(node, "body", []), top)
                for h in getattr(node, "handlers", []):
                    visit(h.body, top)
                visit(getattr(node, "orelse", []), top)
                visit(getattr(node, "finalbody", []), top)

    visit(tree.body, True)
    return out


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def test_no_import_cycles_at_import_time():
    mods = all_modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for target, names in runtime_imports(p):
            for cand in [f"{target}.{n}" for n in names] + [target]:
                if cand in mods and cand != m:
                    graph[m].add(cand)
                    break
    # a package's __init__ re-exporting its modules is not a cycle with them
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str):
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_imported_across_modules():
    bad = []
    for m, p in all_modules().items():
        for target, names in runtime_imports(p):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{m} imports {n} from {target}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_modules_stay_small_or_say_why(path):
    lines = path.read_text().splitlines()
    if len(lines) <= LIMIT + 30:
        return
    head = "\n".join(lines[:40]).lower()
    assert "why this module is long" in head or "longer than" in head, \
        f"{path.relative_to(PKG)} has {len(lines)} lines and no reason at its top"


def test_the_benchmarks_use_no_private_name_of_stdd():
    bench = PKG.parent / "bench"
    bad = []
    for p in sorted(bench.glob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stdd"):
                bad += [f"{p.name} imports {a.name} from {node.module}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "\n".join(bad)
