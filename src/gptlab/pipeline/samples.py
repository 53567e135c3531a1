"""Samples as markdown: the generate stage's ``samples/samples.md`` and the report's side-by-side page share it."""

from __future__ import annotations

from typing import Any


def quote(text: str) -> str:
    """``text`` as a markdown block quote (an empty sample stays visible as an empty quote)."""
    return "\n".join(f"> {line}" for line in text.splitlines()) or ">"


def samples_markdown(samples: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """One model's samples, prompt by prompt, each shown as the prompt followed by its continuation."""
    lines = ["# Samples", "", f"Settings: {settings}", ""]
    for item in samples:
        lines += [f"## {item['prompt']!r}", ""]
        for i, text in enumerate(item["samples"], start=1):
            lines += [f"Sample {i}:", "", quote(item["prompt"] + text), ""]
    return "\n".join(lines)
