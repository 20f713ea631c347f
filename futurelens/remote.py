"""Running on NDIF (``remote=True``): configuration: the key, the host, versions, served models.

Configuration is nnsight's own (``nnsight.CONFIG.API``); futurelens only reads it:

- API key: ``CONFIG.API.APIKEY``. nnsight fills it at import from the shipped
  config < ``~/.config/nnsight/config.yaml`` (or ``$NNSIGHT_CONFIG``, where
  ``CONFIG.set_default_api_key`` saves it) < ``$NDIF_API_KEY`` (or a Colab secret
  of that name). The remote backend sends it as the ``ndif-api-key`` header.
- Host: ``CONFIG.API.HOST`` (default ``https://api.ndif.us``), overridden by
  ``$NDIF_HOST`` at import.

A remote job runs through `futurelens.dispatch` (one request each, split by
size) inside `futurelens.ndif_errors.ndif_errors`. Nothing here imports torch or
nnsight at import time.
"""

from __future__ import annotations

import sys

from .errors import FutureLensError
from .ndif_config import _config, api_key, host  # noqa: F401 - part of this module's API
from .ndif_errors import KEY_HELP, SERVED_HELP, network_message
from .secrets import redact

# --------------------------------------------------------------------------- configuration


def check_remote_ready(model_id: str, *, check_served: bool = False) -> None:
    """Raise a `FutureLensError` saying what to fix if a remote run of ``model_id`` cannot start.

    Checks that an API key is set and the host is a URL; with ``check_served``
    also asks NDIF whether ``model_id`` is deployed (one request). That check is
    opt-in because keys with hot-swapping access may run models NDIF does not
    list as deployed.
    """
    config = _config()
    key = api_key()
    if key is None:
        raise FutureLensError(f"No NDIF API key is set, so {model_id!r} cannot run on NDIF. {KEY_HELP}")
    if not config.API.APIKEY:
        # Exported after nnsight was imported: nnsight would send no key at all.
        config.API.APIKEY = key
    url = host()
    if not url.startswith(("http://", "https://")):
        raise FutureLensError(
            f"The NDIF host {redact(url)!r} is not a URL: set nnsight.CONFIG.API.HOST (or export NDIF_HOST "
            "before starting Python) to e.g. https://api.ndif.us."
        )
    if check_served:
        served = served_models()
        if not any(_same_model(model_id, repo) for repo, state in served.items() if state == "RUNNING"):
            listed = ", ".join(sorted(r for r, s in served.items() if s == "RUNNING")) or "none"
            raise FutureLensError(f"NDIF is not running {model_id!r} right now (running: {listed}). {SERVED_HELP}")


SERVER_PYTHON = "3.12-3.13"
"""The Python NDIF's server package (``ndif`` 0.1.2, serving nnsight 0.8.x) runs on."""


def check_versions(env: dict | None = None) -> list[str]:
    """Compare this client's nnsight and Python with the NDIF server's (``nnsight.ndif.get_remote_env()``).

    Raises a `FutureLensError` when the server's nnsight minor version differs from the
    client's (requests would be refused or misread); returns warnings for skews that
    futurelens' own requests survive (a different Python: they ship as source, but a
    function of the caller's without source would ship as bytecode). An unreachable
    server returns no warnings: the first request reports it.
    """
    import nnsight

    if env is None:
        try:
            from nnsight import ndif

            env = ndif.get_remote_env()
        except Exception:  # noqa: BLE001 - offline or an older server: nothing to compare against here
            return []
    server = str((env.get("packages") or {}).get("nnsight") or "")
    local = nnsight.__version__
    if server and server.split(".")[:2] != local.split(".")[:2]:
        raise FutureLensError(
            f"NDIF serves nnsight {server}, this client has nnsight {local}: requests from one minor version are not "
            f"read by another. futurelens supports nnsight 0.8.x: "
            + ("upgrade futurelens to a release for that nnsight (or wait for NDIF to serve 0.8 again)."
               if server.split(".")[:2] > local.split(".")[:2]
               else "pip install -U 'nnsight>=0.8.1,<0.9'.")
        )
    warnings = []
    remote_python = str(env.get("python_version") or "").split()[0]
    local_python = sys.version.split()[0]
    if remote_python and remote_python.split(".")[:2] != local_python.split(".")[:2]:
        warnings.append(
            f"NDIF runs Python {remote_python}, this client {local_python}. futurelens' own requests ship as source and "
            "run there, but a function of yours without source (a dataclass method, code made by exec) would ship as "
            f"CPython bytecode and can fail there: for your own code in remote traces use Python {SERVER_PYTHON}."
        )
    return warnings


def _same_model(model_id: str, repo_id: str) -> bool:
    # nnsight canonicalises ids on the hub ("gpt2" -> "openai-community/gpt2"); without
    # asking the hub, accept an exact or owner-less match.
    a, b = model_id.strip().lower(), repo_id.lower()
    return a == b or b.endswith("/" + a)


def served_models() -> dict[str, str]:
    """Models NDIF has deployed, as ``{hub id: state}`` (state ``"RUNNING"``, ``"DEPLOYING"`` ...).

    Raises a `FutureLensError` when NDIF cannot be reached.
    """
    from nnsight import ndif

    try:
        # The same request nnsight.status() makes; status() swallows the error and
        # prints "Down", so we call what it calls to report (and chain) the real cause.
        raw = ndif._get("/status")
    except Exception as exc:
        raise FutureLensError(redact(network_message("", exc))) from exc
    # Fold replicas into one entry per hub id, keeping the healthiest state, and skip
    # COLD (downloaded but not deployed) models, as nnsight.status() does.
    rank = {"RUNNING": 0, "DEPLOYING": 1, "NOT_STARTED": 2}
    served: dict[str, str] = {}
    for name, entry in (raw.get("deployments") or {}).items():
        if entry.get("deployment_level") not in ("HOT", "WARM"):
            continue
        repo, state = entry.get("repo_id", name), entry.get("application_state", "UNHEALTHY")
        if repo not in served or rank.get(state, 9) < rank.get(served[repo], 9):
            served[repo] = state
    return served
