"""The package layout keeps its promises: few top-level modules, no private names across
packages, no import cycles, core never imports gradio, demo talks to core's public faces."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"
MAX_TOP_LEVEL_MODULES = 8
# What demo/ may import from core: the public faces named in the restructure.
DEMO_FACES = ("core", "core.config", "core.pipeline", "core.methods", "core.methods.run",
              "core.models", "core.data", "core.synthetic", "core.metrics", "core.eval")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool = False) -> list[tuple[str, list[str]]]:
    """(module, imported names) for each ``from X import ...`` / ``import X`` in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def _package(module: str) -> str:
    """The subpackage a module belongs to: core.methods.gpua.fit -> core.methods."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


def _core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_core_has_at_most_eight_top_level_modules():
    modules = sorted(p.name for p in CORE.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules


def test_no_private_name_crosses_a_package_boundary():
    offenders = []
    for path in [*_core_files(), *sorted((ROOT / "demo").glob("*.py"))]:
        here = _module_name(path)
        for module, names in _imports(path):
            if not module.startswith("core"):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and _package(module) != _package(here):
                offenders.append(f"{here} imports {private} from {module}")
    assert not offenders, "\n".join(offenders)


def test_core_never_imports_gradio():
    offenders = [
        _module_name(p) for p in _core_files()
        if any(m.split(".")[0] in ("gradio", "demo") for m, _ in _imports(p))
    ]
    assert not offenders, offenders


def test_demo_uses_only_the_public_faces_of_core():
    offenders = []
    for path in sorted((ROOT / "demo").glob("*.py")):
        for module, _ in _imports(path):
            if module.startswith("core") and module not in DEMO_FACES:
                offenders.append(f"{_module_name(path)} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_no_import_cycle_between_core_modules():
    """Module-level imports only (imports inside functions are deferred and cannot cycle)."""
    graph: dict[str, set[str]] = {}
    names = {_module_name(p) for p in _core_files()}
    for path in _core_files():
        deps = set()
        for module, imported in _imports(path, top_level_only=True):
            for candidate in [module, *(f"{module}.{n}" for n in imported)]:
                if candidate in names:
                    deps.add(candidate)
        graph[_module_name(path)] = deps - {_module_name(path)}
    # A package's __init__ importing its own submodules is how a face is built; a submodule
    # importing from its package's face is what makes a cycle, so keep both edges.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_public_api_imports():
    from core.gpua import Alignment
    from core.otfusion import otfusion as otfusion_again

    import core
    from core import fit_gpua, lazsl_scores, make_synthetic, otfusion, sinkhorn, zeroshot_probs

    assert otfusion_again is otfusion
    assert Alignment is core.Alignment
    assert all(callable(f) for f in (fit_gpua, lazsl_scores, make_synthetic, sinkhorn,
                                     zeroshot_probs))
