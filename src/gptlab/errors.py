"""The one base of every error a user can cause, so each entry point reports them the same way.

A :class:`GptlabError` says what went wrong, the actual and the expected value, and how to fix it; the CLI,
the flows and every stage print it as one message and exit non-zero. Anything else that escapes is a bug and
keeps its traceback.
"""

from __future__ import annotations


class GptlabError(Exception):
    """An error the user can fix; its message names the fix."""


class ConfigError(GptlabError, ValueError):
    """Every problem found in the configuration, one per line."""

    def __init__(self, problems: list[str], source: str = "params.yaml"):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the configuration ({source}):\n{lines}")


class DataError(GptlabError, ValueError):
    """Input data (a corpus, token files, a task's file) that is malformed or does not fit the settings."""


class MissingInputError(GptlabError, FileNotFoundError):
    """A file or folder a command needs does not exist; the message says which stage makes it."""
