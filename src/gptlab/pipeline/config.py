"""params.yaml → the frozen, validated settings of :mod:`gptlab.settings`. The only module that reads params.yaml.

Resolution order, lowest to highest:

1. ``params.yaml`` (the seed experiment, every key present),
2. ``profiles/<profile>.yaml`` (a partial overlay selected by the top-level ``profile`` key),
3. ``-S key=value`` overrides given to a command (the syntax of ``dvc exp run -S``).

``dvc exp run -S key=value`` writes into params.yaml, below the profile: a value changed there (against the
committed params.yaml) that the profile sets otherwise would be silently ignored, so it is refused, with the
command that honours it (``-S profiles/<profile>.yaml:key=value``).

Every problem (unknown key, missing key, wrong type, impossible combination) is collected and raised once as a
:class:`~gptlab.errors.ConfigError`, before any stage does work. Types are checked by pydantic in strict mode
(``1`` is not ``true``, ``"3"`` is not ``3``); the messages, the did-you-mean hints and the value rules are ours.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import shlex
import subprocess
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml

from gptlab.errors import ConfigError
from gptlab.settings import SECTION_TYPES, SECTIONS, Config, flatten, value_problems

# --------------------------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``6e-4`` as a float (YAML 1.2, as DVC does), not as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        data = parse_yaml(path.read_text())
    except FileNotFoundError:
        problems.append(f"{path} does not exist")
        return None
    except yaml.YAMLError as e:
        problems.append(f"{path} is not valid YAML: {e}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path} must be a mapping of sections, got {type(data).__name__}")
        return None
    return data


# -------------------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=3e-4"`` → ``("train.lr", 0.0003)``; the value is YAML, as in ``dvc exp run -S``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError([f"override {text!r} is not KEY=VALUE (e.g. -S train.lr=3e-4)"], "-S")
    try:
        parsed = parse_yaml(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


@functools.cache
def _adapter(cls: type) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(cls)


def _build_section(name: str, cls: type, raw: Any, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"`{name}` must be a mapping of settings, got {raw!r}")
        return None
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean `{name}.{close[0]}`?" if close else f"; known keys: {', '.join(known)}"
            problems.append(f"`{name}.{key}` is not a setting{hint}")
    missing = [key for key in known if key not in raw]
    problems += [f"`{name}.{key}` is missing: add it to params.yaml ({_type_name(hints[key])})" for key in missing]
    try:
        # JSON mode, strict: lists may fill tuples and ints floats, but nothing else changes type.
        section = _adapter(cls).validate_json(json.dumps({k: raw[k] for k in known if k in raw}, default=str),
                                              strict=True)
    except pydantic.ValidationError as e:
        wrong = dict.fromkeys(str(err["loc"][0]) for err in e.errors() if err["type"] != "missing" and err["loc"])
        problems += [f"`{name}.{key}` must be {_type_name(hints[key])}, got {raw[key]!r}" for key in wrong]
        return None
    return None if missing else section


# ------------------------------------------------------------------------------------- shadowing


def _committed_params(params: Path) -> dict[str, Any] | None:
    """params.yaml as the checkout's HEAD commit has it (None outside git, or where HEAD has none)."""
    try:
        result = subprocess.run(["git", "-C", str(params.parent), "show", f"HEAD:./{params.name}"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    try:
        data = parse_yaml(result.stdout)
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _yaml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) or not value or value != value.strip() else value


def _shadowed(params: Path, base: dict[str, Any], overlay: dict[str, Any], profile: str,
              set_here: set[str]) -> list[str]:
    """The values params.yaml was changed to (against its committed version: what ``dvc exp run -S KEY=…`` and
    a hand edit do) that ``profiles/<profile>.yaml`` sets otherwise, so the run would silently ignore them.

    One problem naming each such value and the command that honours them all: every change given again, the
    shadowed ones into the profile's file (DVC tracks both files' params).
    """
    committed = _committed_params(params)
    if committed is None:
        return []
    now = flatten({k: v for k, v in base.items() if k in SECTIONS and isinstance(v, dict)})
    before = flatten({k: v for k, v in committed.items() if k in SECTIONS and isinstance(v, dict)})
    layered = flatten({k: v for k, v in overlay.items() if k in SECTIONS and isinstance(v, dict)})
    changed = {k: v for k, v in now.items() if k not in before or before[k] != v}
    hidden = {k: v for k, v in changed.items() if k in layered and layered[k] != v and k not in set_here}
    if not hidden:
        return []
    what = "; ".join(f"`{k}: {_yaml_value(v)}` (profiles/{profile}.yaml has {_yaml_value(layered[k])})"
                     for k, v in hidden.items())
    sets = [f"profile={profile}"] + [
        f"profiles/{profile}.yaml:{k}={_yaml_value(v)}" if k in hidden else f"{k}={_yaml_value(v)}"
        for k, v in changed.items()
    ]
    command = " ".join(f"-S {shlex.quote(x)}" for x in sets)
    return [
        f"{params.name} sets {what}, but the profile `{profile}` overlays {params.name} and its value would win: "
        f"the run would silently ignore yours. Nothing was run. Give the value to the profile instead: "
        f"`git checkout {params.name} && dvc exp run {command}` (git checkout drops what `dvc exp run -S` wrote "
        f"into {params.name}; the command sets it again); or, for one gptlab command, `-S KEY=VALUE` on it "
        f"(a command's -S wins over the profile)"
    ]


# ------------------------------------------------------------------------------------------ loading


def available_profiles(profiles_dir: Path) -> list[str]:
    return sorted(p.stem for p in profiles_dir.glob("*.yaml"))


def load_config(params: str | Path = "params.yaml", overrides: typing.Sequence[str] = ()) -> Config:
    """Read ``params.yaml``, overlay ``profiles/<profile>.yaml`` next to it, apply ``-S`` overrides.

    Raises :class:`~gptlab.errors.ConfigError` listing every problem at once.
    """
    params = Path(params)
    problems: list[str] = []
    base = _read_yaml(params, problems)
    if base is None:
        raise ConfigError(problems, str(params))

    parsed: list[tuple[str, Any]] = []
    for text in overrides:
        try:
            parsed.append(parse_override(text))
        except ConfigError as e:
            problems.extend(e.problems)
    # `-S profile=…` chooses the overlay; every other override lands on top of it.
    for key, value in parsed:
        if key == "profile":
            base["profile"] = value

    profile = base.get("profile")
    profiles_dir = params.parent / "profiles"
    tree = dict(base)
    if not isinstance(profile, str) or not (profiles_dir / f"{profile}.yaml").is_file():
        names = ", ".join(available_profiles(profiles_dir)) or f"none in {profiles_dir}"
        problems.append(f"`profile` is {profile!r}, which has no profiles/{profile}.yaml; available: {names}")
    else:
        overlay = _read_yaml(profiles_dir / f"{profile}.yaml", problems)
        if overlay is not None:
            missing = [s for s in SECTIONS if s not in overlay]
            if missing:
                # DVC tracks each section of the overlay as a param; an absent section breaks `dvc repro`.
                problems.append(
                    f"profiles/{profile}.yaml lacks section(s) {', '.join(missing)}: add them as `{{}}` if empty"
                )
            extra = [s for s in overlay if s not in SECTIONS]
            if extra:
                problems.append(f"profiles/{profile}.yaml has unknown section(s) {', '.join(map(str, extra))}")
            tree = _deep_merge(tree, {k: v or {} for k, v in overlay.items() if k in SECTIONS})
            problems += _shadowed(params, base, overlay, profile, {key for key, _ in parsed})

    for key, value in parsed:
        if key == "profile":
            continue
        section = key.split(".")[0]
        if section not in SECTIONS or "." not in key:
            problems.append(f"override `{key}` is not a setting: use SECTION.KEY with SECTION in {', '.join(SECTIONS)}")
            continue
        _set_path(tree, key, value)

    unknown = [k for k in tree if k not in (*SECTIONS, "profile")]
    for key in unknown:
        problems.append(f"`{key}` is not a section; known: profile, {', '.join(SECTIONS)}")
    built = {name: _build_section(name, cls, tree.get(name, {}), problems) for name, cls in SECTION_TYPES.items()}
    problems += value_problems(built)
    if problems:
        raise ConfigError(problems, str(params))
    return Config(profile=str(profile), **built)
