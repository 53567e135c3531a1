"""OpenAI's GPT-2 (or any local Hugging Face GPT-2 folder) as a baseline, loaded into our GPT.

A baseline that cannot be loaded here (offline, not in the cache, not a GPT-2) raises
:class:`BaselineUnavailable` with the reason the report prints as "not measured: why".
"""

from __future__ import annotations

from pathlib import Path

import torch

from gptlab.core.model import GPT
from gptlab.errors import GptlabError
from gptlab.hf.hub import offline_reason
from gptlab.hf.weights import HFImportError, load_hf_gpt2


class BaselineUnavailable(GptlabError, RuntimeError):
    """The baseline cannot be loaded here and now."""


def is_local(name: str) -> bool:
    return Path(name).expanduser().is_dir()


def display_name(name: str) -> str:
    """``gpt2-medium`` for hub names, the folder's name for a local folder."""
    return Path(name).expanduser().name if is_local(name) else name


def load_baseline(name: str, *, device: torch.device) -> GPT:
    """The baseline as our GPT on ``device``; reads only the local cache when the hub is out of reach."""
    offline = None if is_local(name) else offline_reason()
    if offline is not None and not _in_hub_cache(name):  # known without importing transformers (seconds)
        raise BaselineUnavailable(_offline_message(name, offline))
    try:
        return load_hf_gpt2(str(Path(name).expanduser()) if is_local(name) else name, device=device,
                            local_files_only=offline is not None).eval()
    except HFImportError as e:
        if offline is not None:
            raise BaselineUnavailable(_offline_message(name, offline)) from e
        raise BaselineUnavailable(str(e).splitlines()[0]) from e


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _offline_message(name: str, offline: str) -> str:
    return (f"{name} is not in the local Hugging Face cache and the hub is out of reach ({offline}): "
            "download it once online, or list a local GPT-2 folder in eval.baselines")
