"""The README and docs/ show only commands that exist: every `gptlab …` (and its flags) in `gptlab --help`, every
`make …` in the Makefile, every `python -m …` module in the tree; every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

from gptlab.cli import build_parser

from ..conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _code(text: str) -> list[str]:
    """The code a page shows: fenced blocks and inline `spans`."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    return blocks + inline


def _shown(pattern: str) -> list[tuple[str, str]]:
    """(page, match) for every command the pages show."""
    found = []
    for page in DOCS:
        for code in _code(page.read_text()):
            for line in code.splitlines():
                line = line.split(" # ")[0]  # a shell comment is prose
                found += [(page.name, m) for m in re.findall(pattern, line)]
    return found


def _subcommands() -> dict:
    return build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no public API


def test_every_gptlab_command_shown_exists_with_its_flags():
    commands = _subcommands()
    # A command starts a line of code, or follows a shell separator, `=` (an env assignment) or torchrun's `-m`.
    shown = _shown(r"(?:^\s*|[;&|(=]\s*|-m\s+)gptlab ((?:[a-z][\w-]*)(?:\s+[^\s|;&]+)*)")
    assert len(shown) > 20
    for page, command in shown:
        name, *rest = command.split()
        assert name in commands, f"{page}: `gptlab {command}`: no such command in `gptlab --help`"
        parser = commands[name]
        nested = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]  # noqa: SLF001
        if nested and rest and rest[0] in nested[0].choices:  # `gptlab sweep plan …`: the flags are plan's
            name, parser, rest = f"{name} {rest[0]}", nested[0].choices[rest[0]], rest[1:]
        flags = {opt for action in parser._actions for opt in action.option_strings}  # noqa: SLF001
        for word in rest:
            flag = word.split("=")[0]
            if flag.startswith("-"):
                assert flag in flags, f"{page}: `gptlab {command}`: {flag} is not an option of `gptlab {name}`"


def test_every_make_target_shown_exists():
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    shown = _shown(r"(?:^|[\s;&|(])make ([a-z][\w-]*)")
    assert {"demo", "test", "clean", "clean-tracking"} <= {target for _, target in shown}
    for page, target in shown:
        assert target in targets, f"{page}: `make {target}` is not a Makefile target"


def test_every_python_module_shown_exists():
    for page, module in _shown(r"python -m ((?:gptlab|flows)[\w.<>]*)"):
        if "<" in module or module.endswith("."):  # a placeholder: `python -m flows.<stage>`, `stages.*`
            continue
        parts = module.split(".")
        base = REPO / "src" if parts[0] == "gptlab" else REPO
        path = base.joinpath(*parts)
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), f"{page}: python -m {module}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _links() -> list[tuple[Path, str, str]]:
    """(page, target path relative to the repo, anchor) for every relative link."""
    found = []
    for page in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            found.append((page, str(resolved.relative_to(REPO)), anchor))
    return found


def test_links_resolve_to_files_and_headings():
    for page, target, anchor in _links():
        assert (REPO / target).exists(), f"{page.name} links {target}, which does not exist"
        if anchor and target.endswith(".md"):
            headings = re.findall(r"^#+ (.+)$", (REPO / target).read_text(), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page.name} links {target}#{anchor}: no such heading"


def test_the_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    for must in ("## What it achieves", "## Quickstart", "| a laptop (the demo) |", "| one GPU box (the seed) |",
                 "| a team |", "## Compare two experiments and promote the better", "## Commands",
                 "pip install -e '.[dev]' -c constraints.txt", "not yet measured on a GPU"):
        assert must in readme, must
