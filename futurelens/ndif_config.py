"""NDIF's settings as nnsight holds them (``nnsight.CONFIG.API``): the API key and the host, read, never stored.

Its own module so that both `futurelens.remote` (checks before a run) and `futurelens.ndif_errors` (messages
after a failure) read them without importing each other. Nothing here imports nnsight at import time.
"""

from __future__ import annotations

import os
from typing import Any


def _config() -> Any:
    # Imported here: nnsight pulls in torch, and `import futurelens` must stay light.
    from nnsight import CONFIG

    return CONFIG


def api_key() -> str | None:
    """The NDIF API key nnsight will send, or ``None`` when none is set.

    This is ``nnsight.CONFIG.API.APIKEY``. nnsight reads ``$NDIF_API_KEY`` only
    when it is imported, so a key exported afterwards (common in notebooks) is
    not in its config; it is returned here and `check_remote_ready` hands it to
    nnsight.
    """
    key = _config().API.APIKEY or os.environ.get("NDIF_API_KEY")
    key = (key or "").strip()
    return key or None


def host() -> str:
    """The NDIF base URL nnsight sends requests to (``nnsight.CONFIG.API.HOST``)."""
    return _config().API.HOST
