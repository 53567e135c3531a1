"""The house in layers: imports point down only, and each library stays where it belongs (STYLE.md).

settings/errors/fileio ← data ← core ← {hf, tracking} ← pipeline ← {cli, worker, flows}. Read from the source
of every module, imports inside functions included: a lazy import that points up is still an upward import.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from ..importgraph import imported_names, project_modules

GROUND = {"gptlab", "gptlab.settings", "gptlab.errors", "gptlab.fileio"}
ENTRY = {"gptlab.cli", "gptlab.worker", "gptlab.__main__"}
RANK = {"ground": 0, "data": 1, "core": 2, "hf": 3, "tracking": 3, "pipeline": 4, "entry": 5, "flows": 5}
# Third-party packages a layer must not import; `settings` is the standard library only.
FORBIDDEN = {
    "data": {"yaml", "mlflow", "prefect", "dvc", "pydantic"},
    "core": {"yaml", "mlflow", "prefect", "dvc", "pydantic", "transformers", "huggingface_hub"},
}
ONLY = {"mlflow": {"tracking"}, "prefect": {"flows"}, "dvc": set()}  # dvc is run as a command, never imported


def layer(module: str) -> str:
    if module in GROUND:
        return "ground"
    if module in ENTRY:
        return "entry"
    parts = module.split(".")
    if parts[0] == "flows":
        return "flows"
    return parts[1]


MODULES = project_modules()


def _edges() -> list[tuple[str, str]]:
    edges = []
    for name, path in MODULES.items():
        for target in imported_names(path, name, launches=False):
            if target in MODULES and target != name:
                edges.append((name, target))
    return edges


def test_every_module_belongs_to_a_layer():
    unknown = sorted(m for m in MODULES if layer(m) not in RANK)
    assert not unknown, f"modules outside the layers {sorted(RANK)}: {unknown}"


def test_imports_point_down_only():
    upward = []
    for source, target in _edges():
        a, b = layer(source), layer(target)
        if source == "gptlab.__main__" and target == "gptlab.cli":
            continue  # `python -m gptlab` is the CLI
        if b == "entry" or (b == "flows" and a != "flows"):
            upward.append(f"{source} → {target}: nothing imports an entry point")
        elif a != b and RANK[b] >= RANK[a]:
            upward.append(f"{source} ({a}) → {target} ({b})")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def test_the_import_graph_has_no_cycle():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for source, target in _edges():
        if not target.startswith(f"{source}."):  # a package importing its own submodule is not a cycle
            graph[source].add(target)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import cycle: " + " → ".join(cycle))


def test_each_library_is_imported_only_where_it_belongs():
    wrong = []
    for name, path in MODULES.items():
        tops = {target.split(".")[0] for target in imported_names(path, name, launches=False)}
        where = layer(name)
        for lib in sorted(tops & FORBIDDEN.get(where, set())):
            wrong.append(f"{name} ({where}) imports {lib}")
        for lib, allowed in ONLY.items():
            if lib in tops and where not in allowed:
                wrong.append(f"{name} ({where}) imports {lib}: only {sorted(allowed) or 'nothing'} may")
        if name == "gptlab.settings":
            third_party = sorted(t for t in tops if t not in sys.stdlib_module_names and t != "__future__")
            if third_party:
                wrong.append(f"gptlab.settings imports {third_party}: it is the standard library only")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", ["gptlab.core.train", "gptlab.core.evaluate", "gptlab.core.generate",
                                    "gptlab.data.tokenize", "gptlab.data.loader", "gptlab.hf.weights"])
def test_the_torch_core_runs_without_mlflow_prefect_or_dvc(module):
    """What the GPU check relies on: a bare image with torch, and none of the tracking or orchestration stack."""
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'mlflow', 'prefect', 'dvc', 'datasets', 'yaml'}); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{module} pulls in {out}"
