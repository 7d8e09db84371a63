"""Fail fast when the Hugging Face hub is needed but unreachable.

Without this, an offline `from_pretrained` / `load_dataset` spends ~30 s in retries before a
generic error. We check the cache and a single short TCP connection instead, and raise one
message that names the ways out.
"""
from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 3.0


class HubUnreachableError(RuntimeError):
    """The hub is needed for `what` and cannot be reached; the message says what to do instead."""


def hub_offline_flag_set() -> bool:
    return any(os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """One TCP connection to the hub endpoint, at most CONNECT_TIMEOUT_S; cached per process."""
    if hub_offline_flag_set():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def require_hub(what: str, ways_out: list[str]) -> None:
    """Raise HubUnreachableError naming `what` and `ways_out` if the hub cannot be reached."""
    if hub_reachable():
        return
    reason = "offline mode is set (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE/HF_DATASETS_OFFLINE)" \
        if hub_offline_flag_set() else "the Hugging Face hub cannot be reached"
    options = "; or ".join(ways_out)
    raise HubUnreachableError(f"{what} needs the Hugging Face hub, but {reason}. Instead: {options}.")
