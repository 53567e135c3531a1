"""The layout section of docs/architecture.md, generated from the folders: each package, its modules, its
docstring's gist.

    python tests/layout.py            print the section
    python tests/layout.py --write    rewrite it in docs/architecture.md (`make layout`)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
BEGIN, END = "<!-- layout: generated from the folders by `make layout` -->", "<!-- /layout -->"
TOP = ("dvc.yaml  params.yaml  profiles/  pyproject.toml  constraints.txt  Makefile  prefect.yaml  .ci/run",)


def _gist(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    return first.split(". ")[0].rstrip(".")


def _modules(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")


def section() -> str:
    src = REPO / "src" / "gptlab"
    rows: list[tuple[str, str, str]] = []
    ground = [m for m in _modules(src) if m in ("settings", "errors", "fileio")]
    rows.append(("src/gptlab/", "  ".join(f"{m}.py" for m in ground), "the ground floor, imported by every layer"))
    for name in ("data", "core", "hf", "tracking", "pipeline", "pipeline/stages"):
        folder = src / name
        rows.append((f"  {name}/", " ".join(_modules(folder)), _gist(folder / "__init__.py")))
    entries = [m for m in _modules(src) if m in ("cli", "worker")]
    rows.append(("  " + "  ".join(f"{m}.py" for m in entries), "", "the entry points: the gptlab commands, each torchrun process"))
    rows.append(("flows/", " ".join(_modules(REPO / "flows")), _gist(REPO / "flows" / "__init__.py")))
    rows.append(("tests/", " ".join(sorted(p.name + "/" for p in (REPO / "tests").iterdir()
                                           if p.is_dir() and (p / "__init__.py").is_file())),
                 "mirror the layers; e2e/ runs the real tools end to end"))
    rows.append(("benchmarks/", " ".join(_modules(REPO / "benchmarks")), "speed and memory tables (`make bench`)"))
    lines = ["```", *TOP]
    for place, modules, gist in rows:
        lines.append(f"{place:<20}{modules}".rstrip())
        if gist:
            lines.append(f"{'':<20}└ {gist}")
    lines.append("```")
    return "\n".join([BEGIN, *lines, END])


def rewrite(readme: Path) -> bool:
    text = readme.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + section() + text[end:]
    readme.write_text(new)
    return new != text


if __name__ == "__main__":
    if "--write" in sys.argv:
        print("docs/architecture.md layout " + ("rewritten" if rewrite(DOC) else "already up to date"))
    else:
        print(section())
