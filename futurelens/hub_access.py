"""Whether a model name can be loaded here: fail at once, not after the hub client's retries, when it cannot.

`hub_access` wraps `futurelens.load_model`'s reads from the Hugging Face hub. For a name that is neither an
embedded model nor an existing path it checks, before anything is downloaded:

- the name is a hub id at all (else: "not an existing folder, nor a hub id");
- with ``HF_HUB_OFFLINE`` set, that the hub cache holds it;
- that the hub answers a TCP connection within `PROBE_TIMEOUT` (behind a proxy this says nothing: skipped).
  Unreachable, a cached model loads from the cache (offline mode is set for the load and restored after);
  an uncached one is refused naming the cache, the endpoint and what to do.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from .errors import FutureLensError

PROBE_TIMEOUT = 3.0
"""Seconds to wait for the hub to accept a connection before calling it unreachable."""


def unreachable(endpoint: str) -> str | None:
    """Why the hub cannot be reached (None if a TCP connection opens within `PROBE_TIMEOUT`)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # the hub client goes through a proxy; a direct probe would say nothing about it
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)),
                                 timeout=PROBE_TIMEOUT).close()
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    return None


@contextmanager
def hub_access(name: str, remote: bool) -> Iterator[str]:
    """Around a load of ``name``: refuse at once what the hub cannot provide; yields a note for a load error ("")."""
    from huggingface_hub import constants, try_to_load_from_cache

    from .embedded import DEFAULT_MODEL, EMBEDDED

    if name in EMBEDDED or Path(name).exists():
        yield ""
        return
    cache = constants.HF_HUB_CACHE
    try:
        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id: it was meant as a folder
        raise FutureLensError(
            f"{name!r} is not an existing folder, nor a hub id (owner/name): check the path, or use the "
            f"embedded default {DEFAULT_MODEL!r}."
        ) from None
    if constants.HF_HUB_OFFLINE:
        if not cached:
            raise FutureLensError(
                f"{name!r} is not a local folder and not in the Hugging Face cache ({cache}), and HF_HUB_OFFLINE is "
                f"set, so the hub cannot be asked: unset HF_HUB_OFFLINE, pass a local folder, or use the embedded "
                f"default {DEFAULT_MODEL!r}."
            )
        yield ""
        return
    reason = unreachable(constants.ENDPOINT)
    if reason is None:
        yield ""
        return
    note = f"The Hugging Face hub at {constants.ENDPOINT} is unreachable from here ({reason})"
    if not cached and not remote:
        raise FutureLensError(
            f"{note}, and {name!r} is neither a local folder nor in the hub cache ({cache}): check your network "
            f"(or HF_ENDPOINT), pass a local folder, or use the embedded default {DEFAULT_MODEL!r}."
        )
    if cached:
        warnings.warn(f"{note}; using the cached copy of {name!r}.", stacklevel=3)
        note = ""
    else:
        note = f"{note}, and {name!r} is not in the hub cache ({cache}): NDIF runs need its config and tokenizer from the hub."
    # The hub client would retry for ~50 s; offline mode makes it use the cache (or fail) at once.
    previous, env = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield note
    finally:
        constants.HF_HUB_OFFLINE = previous
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env
