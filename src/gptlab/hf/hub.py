"""Can the Hugging Face hub be reached? Asked once per process, so an offline machine fails fast.

Without ``HF_HUB_OFFLINE=1`` the hub client retries an unreachable hub for ~25 s per file (measured: five
retries with back-off on a DNS failure). The evaluation stages load up to four GPT-2 checkpoints and two
datasets, so they ask here first and then read only the local cache when the hub is out of reach.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

PROBE_TIMEOUT_S = 5.0
_answers: dict[str, str | None] = {}


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def offline_reason() -> str | None:
    """Why the hub cannot be used now (``HF_HUB_OFFLINE``, or no answer from it); None when it can."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return "HF_HUB_OFFLINE=1"
    url = endpoint()
    if url not in _answers:
        _answers[url] = _probe(url)
    return _answers[url]


def _probe(url: str) -> str | None:
    try:
        # Any HTTP answer (even an error status) means the hub is reachable; proxies from the env are honoured.
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as e:
        cause = getattr(e, "reason", e)
        return f"{url} is unreachable from this machine ({cause})"
    return None
