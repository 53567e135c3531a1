"""The project's import graph, read from the source (imports inside functions included, ``if TYPE_CHECKING:``
blocks excluded: they never run), for the tests that check the layering and the DVC deps."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"gptlab": REPO / "src", "flows": REPO}  # where each top-level project package lives


def module_file(name: str) -> Path | None:
    """The file of project module ``name`` (a package's ``__init__.py``), or None if it is not ours."""
    top = name.split(".")[0]
    if top not in ROOTS:
        return None
    base = ROOTS[top].joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(path: Path, module: str, *, launches: bool = True) -> set[str]:
    """Every module name ``path`` imports anywhere (lazy imports too), except under ``if TYPE_CHECKING:``, and
    with ``launches``, every project module it starts as a process (``[..., "-m", "gptlab.worker", ...]``:
    torchrun's workers run that code too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if launches and isinstance(node, ast.List | ast.Tuple):
            words = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            names.update(words[i + 1] for i, w in enumerate(words[:-1])
                         if w == "-m" and isinstance(words[i + 1], str) and words[i + 1].split(".")[0] in ROOTS)
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def modules_run_by(entry: str) -> set[Path]:
    """The files of every project module that importing ``entry`` can execute, package ``__init__``s included."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [entry]
    if module_file(entry) is not None and module_file(entry).name == "__init__.py":
        todo.append(f"{entry}.__main__")  # `python -m PACKAGE` runs PACKAGE/__main__.py
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        for i in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            todo.append(".".join(parts[:i]))
        path = module_file(name)
        if path is None:
            continue
        files.add(path)
        todo.extend(imported_names(path, name))
    return files




def project_modules() -> dict[str, Path]:
    """Every module of the gptlab package and the flows, by dotted name."""
    out = {}
    for top, base in ROOTS.items():
        for path in sorted((base / top).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out
