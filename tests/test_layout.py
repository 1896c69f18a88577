"""The import rule docs/layout.md writes down: stages in the order data flows, and no module imports
a stage below its own, nor the front ends; module imports form no cycle. Function-level imports
count too: deferring an import hides a dependency from the reader, it does not remove it."""

from __future__ import annotations

import ast
from pathlib import Path

import llama_index_lancedb_tuning

PACKAGE = Path(llama_index_lancedb_tuning.__file__).parent
NAME = "llama_index_lancedb_tuning"
# Top to bottom, as docs/layout.md's table: a module may import its own stage and those above it.
STAGES = ["errors", "config", "common", "data", "pairs", "encoding", "training", "store", "search", "evaluation", "tuning"]
FRONT_ENDS = {"pack", "cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def _imports(path: Path) -> set[str]:
    """The package's modules this file imports, as dotted names below the package."""
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith(NAME):
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # `from . import onnx_cache` names a module
                candidate = [*target, alias.name]
                is_module = (PACKAGE.joinpath(*candidate).with_suffix(".py")).exists()
                found.add(".".join(candidate if is_module else target))
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith(NAME + ".")}
    return {name for name in found if name}


def _stage(module: str) -> str:
    return module.split(".")[0]


MODULES = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py") if _module_name(p)}


def test_every_module_belongs_to_a_stage_or_a_front_end():
    strays = sorted(m for m in MODULES if _stage(m) not in STAGES and _stage(m) not in FRONT_ENDS)
    assert strays == []


def test_no_module_imports_a_stage_below_it_or_a_front_end():
    broken = []
    for module, imported in MODULES.items():
        if _stage(module) in FRONT_ENDS:
            continue
        for target in imported:
            stage, own = _stage(target), _stage(module)
            if stage in FRONT_ENDS or STAGES.index(stage) > STAGES.index(own):
                broken.append(f"{module} imports {target}")
    assert sorted(broken) == []


def test_module_imports_form_no_cycle():
    graph = {m: {t for t in imported if t in MODULES} for m, imported in MODULES.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_root_keeps_only_the_front_ends_and_the_shared_settings():
    root = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert root == ["cli", "config", "errors", "pack"]


def test_every_public_name_imports_from_the_root():
    import llama_index_lancedb_tuning as package

    missing = [name for name in package.__all__ if getattr(package, name, None) is None]
    assert missing == []
    assert package.load_dataset is package.load_qa_dataset  # the earlier name still imports
