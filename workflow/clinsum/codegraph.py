"""Which of the package's own files a stage runs: the transitive closure of its imports inside `clinsum`.

The workflow declares these files as a rule's inputs (common.smk), so that editing any module reruns
exactly the stages that use it, and training binds its resume state to them. Imports are read with `ast`
(nothing is imported), including those inside functions; a package's closure includes its `__init__.py`.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name


def module_file(module: str) -> Path:
    """The file of a module named relative to the package ("train", "train.loop")."""
    path = PACKAGE_DIR.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The package modules an `from ... import ...` names, relative to `module`."""
    if node.level:
        parts = module.split(".")
        base_parts = parts if module_file(module).name == "__init__.py" else parts[:-1]
        base_parts = base_parts[: len(base_parts) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    elif node.module and (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
        base = node.module[len(PACKAGE) + 1 :]
    else:
        return []
    names = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
    found = [name for name in names if module_file(name).exists()]
    return found + ([base] if base and module_file(base).exists() else [])


@lru_cache(maxsize=None)
def direct_imports(module: str) -> frozenset[str]:
    tree = ast.parse(module_file(module).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.update(_resolve(module, node))
        elif isinstance(node, ast.Import):
            imported.update(
                alias.name[len(PACKAGE) + 1 :] for alias in node.names if alias.name.startswith(PACKAGE + ".")
            )
    # a submodule runs its package's __init__ first
    if "." in module:
        imported.add(module.rsplit(".", 1)[0])
    return frozenset(name for name in imported if name != module)


def closure(module: str) -> list[str]:
    """`module` and every package module it imports, directly or not, sorted."""
    seen, pending = set(), [module]
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending.extend(direct_imports(name))
    return sorted(seen)


def closure_files(module: str) -> list[Path]:
    return [module_file(name) for name in closure(module)]


def all_modules() -> list[str]:
    """Every module of the package, as names relative to it."""
    names = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            names.append(".".join(parts))
    return names
