"""The dependency arrows of docs/architecture.md hold: domain -> filesystem -> transport.

Counted: imports that run when a module is imported (module level, outside
``if TYPE_CHECKING:``). A lazy import inside a function (``repo.panel()`` building the
widgets, ``cli`` loading a command) is a deliberate call upward and is not an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "modelrepo"

#: the bottom layers: all they may import
ONLY: dict[str, set[str]] = {"errors": set(), "layout": {"errors"}, "transport": {"errors"}}
#: layer -> the layers it must never import at import time
FORBIDDEN: dict[str, set[str]] = {
    "transport": {"fs", "repo", "store", "source", "hashing", "triton", "widgets", "cli"},
    "fs": {"repo", "store", "source", "hashing", "triton", "jobs", "widgets", "cli"},
    "triton": {"fs", "transport", "repo", "store", "widgets", "cli", "jobs"},
    "store": {"repo", "widgets", "cli", "triton", "transport"},
    "source": {"repo", "widgets", "cli", "triton", "transport", "fs"},
    "jobs": {"fs", "repo", "widgets", "cli", "triton"},
    "repo": {"widgets", "cli", "testing"},
}
LIBRARY = {"errors", "layout", "transport", "fs", "triton", "store", "source", "jobs", "repo"}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _import_time_imports(tree: ast.Module) -> list[str]:
    found: list[str] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append(node.module)
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)

    visit(tree.body)
    return found


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        layer = _layer(module.removesuffix(".__init__"))
        for name in _import_time_imports(ast.parse(path.read_text())):
            if name.startswith("modelrepo.") and _layer(name) != layer:
                edges.setdefault(layer, set()).add(_layer(name))
    return edges


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_point_down(layer: str) -> None:
    bad = _edges().get(layer, set()) & FORBIDDEN[layer]
    assert not bad, f"modelrepo.{layer} imports {sorted(bad)} at import time"


@pytest.mark.parametrize("layer", sorted(ONLY))
def test_bottom_layers_import_only_what_is_below(layer: str) -> None:
    bad = _edges().get(layer, set()) - ONLY[layer]
    assert not bad, f"modelrepo.{layer} imports {sorted(bad)} at import time"


def test_library_never_imports_the_local_stack() -> None:
    edges = _edges()
    assert not [layer for layer in LIBRARY if "testing" in edges.get(layer, set())]


def test_the_check_sees_real_imports() -> None:
    """Guard against a vacuous pass: known arrows are found."""
    edges = _edges()
    assert "transport" in edges["fs"] and "fs" in edges["hashing"] and "hashing" in edges["repo"]
    assert "errors" in edges["layout"]
