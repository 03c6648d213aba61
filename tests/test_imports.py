"""The house rules of the layout (ARCHITECTURE.md), checked on the source: data flows one way —
config -> orchestration -> rev2net -> MLflow -> analysis — with no import cycle anywhere, and each
MLflow tag name and each model family or variant name is spelled in exactly one module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from orchestration import records
from rev2net import registry

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("rev2net", "orchestration", "analysis")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _imports(name: str, path: Path) -> set[str]:
    """Every module `name` imports, at module level or inside functions (absolute names)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}   # `from pkg import module`
    return found


def _project_edges() -> dict[str, set[str]]:
    return {name: {m for m in _imports(name, path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("package, forbidden", [
    ("rev2net", ("orchestration", "analysis", "ray", "mlflow")),
    ("orchestration", ("analysis",)),
])
def test_imports_flow_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    wrong = sorted(f"{name} imports {m}" for name, path in MODULES.items() if _top(name) == package
                   for m in _imports(name, path) if _top(m) in forbidden)
    assert not wrong, "wrong-way imports: " + "; ".join(wrong)


def test_no_import_cycle() -> None:
    edges = _project_edges()
    state: dict[str, int] = {}   # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if nxt.startswith(node + "."):   # a package importing its own submodule lazily (__getattr__)
                continue
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    assert {"orchestration.plan", "orchestration.tuner"} <= edges["orchestration.stage"], "the graph was read"
    assert "rev2net.data.config" in edges["rev2net.data.synthetic"], "imports inside functions count too"
    for module in sorted(edges):
        if module not in state:
            visit(module)


LITERALS = {name: {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            for name, tree in TREES.items()}


def _literal_homes(value: str) -> list[str]:
    return sorted(name for name, values in LITERALS.items() if value in values)


TAG_NAMES = sorted({v for k, v in vars(records).items() if (k.startswith("TAG_") or k == "PARENT") and isinstance(v, str)})


@pytest.mark.parametrize("tag", TAG_NAMES)
def test_each_tag_name_is_spelled_once(tag: str) -> None:
    assert _literal_homes(tag) == ["orchestration.records"]


@pytest.mark.parametrize("name", sorted(set(registry.FAMILIES) | set(registry.VARIANTS)))
def test_each_model_name_is_spelled_once(name: str) -> None:
    homes = _literal_homes(name)
    assert len(homes) == 1 and homes[0] in ("rev2net.registry", "rev2net.spec"), homes
