"""Running on NDIF (``remote=True``): configuration, versions, clear errors, and splitting work into requests.

Configuration is nnsight's own (``nnsight.CONFIG.API``); futurelens only reads it:

- API key: ``CONFIG.API.APIKEY``. nnsight fills it at import from the shipped
  config < ``~/.config/nnsight/config.yaml`` (or ``$NNSIGHT_CONFIG``, where
  ``CONFIG.set_default_api_key`` saves it) < ``$NDIF_API_KEY`` (or a Colab secret
  of that name). The remote backend sends it as the ``ndif-api-key`` header.
- Host: ``CONFIG.API.HOST`` (default ``https://api.ndif.us``), overridden by
  ``$NDIF_HOST`` at import.

`ndif_errors` turns what nnsight, httpx, websocket-client, requests or socketio
raise during a remote run into a `FutureLensError` that says what to do (its
details redacted by `futurelens.secrets`). Nothing here imports torch or nnsight
at import time.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Sequence

from .errors import FutureLensError
from .secrets import redact

KEY_URL = "https://login.ndif.us"
STATUS_URL = "https://nnsight.net/status/"

_SET_KEY = (
    'set it with nnsight.CONFIG.set_default_api_key("...") (saved for later sessions) '
    "or export NDIF_API_KEY=... before starting Python"
)
_KEY_HELP = f"Get a key at {KEY_URL}, then {_SET_KEY}."
_SERVED_HELP = (
    f"See which models NDIF serves at {STATUS_URL} or with futurelens.remote.served_models(); "
    "meanwhile run locally with remote=False."
)
_LIMIT_HELP = (
    "NDIF caps each request's run time and payload/result size: split the work into smaller "
    "requests (a smaller batch of prefixes, fewer layers, a shorter rollout)."
)


# --------------------------------------------------------------------------- configuration


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
        raise FutureLensError(f"No NDIF API key is set, so {model_id!r} cannot run on NDIF. {_KEY_HELP}")
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
            raise FutureLensError(f"NDIF is not running {model_id!r} right now (running: {listed}). {_SERVED_HELP}")


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
        raise FutureLensError(redact(_network_message("", exc))) from exc
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


# --------------------------------------------------------------------------- errors

# Modules whose exceptions mean "the remote call failed" (as opposed to the
# caller's own code failing, which must pass through untouched).
# (huggingface_hub >= 2 talks to the hub through httpx2, a fork with its own exception classes.)
_HTTPX = ("httpx", "httpcore", "httpx2", "httpcore2")
_REMOTE_MODULES = (*_HTTPX, "requests", "urllib3", "websocket", "socketio", "engineio", "huggingface_hub")
_NET_ERRNOS = {
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
    errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTUNREACH, errno.EHOSTDOWN,
}  # fmt: skip

# Server texts (NDIF's FastAPI details and job-error descriptions, see the README section).
# Status codes find most auth failures; words like "forbidden" also appear in NDIF's
# sandbox errors about the traced code, so only API-key wording is matched here.
_AUTH_TEXT = re.compile(r"invalid api key|api key validation|missing api key|no api key", re.IGNORECASE)
_VERSION_TEXT = re.compile(
    r"(nnsight|python) version|incompatible with the server|update (your )?nnsight|outdated version"
    r"|can't get attribute|unpickl",
    re.IGNORECASE,
)
_SERVED_TEXT = re.compile(
    r"not dedicated|hotswapping|cannot be accomm?odated|deployment evicted|model not found|unknown model"
    r"|model .{0,80}not (currently )?(deployed|running|served|available|found)"
    # NDIF's queue (ndif 0.1.2, services/api/queue/processor.py): "Could not deploy this model. <reason>", the
    # reason being the controller's: Hugging Face's "Repository Not Found ...", "CANT_ACCOMMODATE: placed 0 of
    # 1 new replicas ...", "No GPU nodes available.", "Could not accommodate any replicas at this time."
    r"|could not deploy this model|repository not found|cant_accommodate|could not accommodate|no gpu nodes available",
    re.IGNORECASE,
)
# NDIF's import whitelist refusing a module (its Protector: "Module copy is not whitelisted", "Module attribute
# torch.x is not whitelisted"): whatever surrounds it (a payload that "could not be read" mentions versions).
_WHITELIST_TEXT = re.compile(r"Module (?:attribute )?([\w.]+) is not whitelisted|Cannot modify protected module")
# A job of futurelens.server refusing what it cannot do where it runs (e.g. training in NDIF's sandbox).
_OWN_TEXT = re.compile(r"\[futurelens\] ([^\n]+)")
_UNAVAILABLE_TEXT = re.compile(
    r"service (temporarily )?unavailable|bad gateway|not ready yet"
    r"|error (provisioning|starting) model",  # NDIF's queue when a deployment broke on the way (try later)
    re.IGNORECASE,
)
_LIMIT_TEXT = re.compile(
    r"longer than timeout|time ?limit|timed? ?out|too large|exceed(s|ed)? (the )?(max|limit)|out of memory|\boom\b",
    re.IGNORECASE,
)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (nnsight wraps httpx errors in RemoteError)."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 10:
        seen.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return seen


def _modules(exc: BaseException) -> set[str]:
    return {cls.__module__ for cls in type(exc).__mro__}


def _from(exc: BaseException, *prefixes: str) -> bool:
    return any(m == p or m.startswith(p + ".") for m in _modules(exc) for p in prefixes)


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _is_remote(exc: BaseException) -> bool:
    if isinstance(exc, FutureLensError):
        return False
    if _from(exc, "nnsight.intervention.backends.remote", *_REMOTE_MODULES):
        return True
    return _is_network(exc)


def _is_network(exc: BaseException) -> bool:
    """Could not connect / connection dropped / name not resolved."""
    names = _names(exc)
    if _from(exc, *_HTTPX):
        return bool(names & {"ConnectError", "ConnectTimeout", "NetworkError", "RemoteProtocolError", "ProxyError"})
    if _from(exc, "requests", "urllib3"):
        return bool(names & {"ConnectionError", "NewConnectionError", "ProxyError", "NameResolutionError"})
    if _from(exc, "websocket"):
        return bool(
            names & {"WebSocketAddressException", "WebSocketConnectionClosedException", "WebSocketProxyException"}
        ) or "host not found" in str(exc).lower()
    if _from(exc, "socketio", "engineio"):
        return "ConnectionError" in names
    if _from(exc, "huggingface_hub"):
        return "OfflineModeIsEnabled" in names
    return isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror, socket.herror)) or (
        isinstance(exc, OSError) and exc.errno in _NET_ERRNOS
    )


def _is_time_limit(exc: BaseException) -> bool:
    # Read/write/pool timeouts: connected, but the request or its result took too long.
    # (Connect timeouts are network errors and are caught before this check.)
    return _from(exc, *_HTTPX, "requests", "urllib3") and bool(
        _names(exc) & {"ReadTimeout", "WriteTimeout", "PoolTimeout", "Timeout", "TimeoutException", "ReadTimeoutError"}
    )


def _status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (httpx/requests response, websocket handshake)."""
    code = getattr(exc, "status_code", None)
    if code is None:
        response = getattr(exc, "response", None)
        code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _presigned(exc: BaseException) -> bool:
    """Whether the failed request was a result download from a presigned storage URL.

    A 403 there means the link expired, not that NDIF rejected the API key.
    """
    try:
        url = getattr(getattr(exc, "request", None), "url", None)
    except RuntimeError:
        return False
    return "signature=" in str(url or "").lower()


def _url_host(exc: BaseException) -> str | None:
    """``scheme://host`` of the request that failed, if the exception carries it."""
    from urllib.parse import urlsplit

    try:  # httpx raises RuntimeError when an error carries no request
        url = getattr(getattr(exc, "request", None), "url", None)
    except RuntimeError:
        return None
    # Scheme and host only: a presigned result URL carries a signature in its query.
    parts = urlsplit(str(url)) if url else None
    return f"{parts.scheme}://{parts.hostname}" if parts and parts.hostname else None


def _detail(exc: BaseException, limit: int = 1500) -> str:
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    if len(text) > limit:  # server descriptions can carry whole tracebacks
        text = text[:limit] + " ..."
    return text


def _network_message(model_id: str, exc: BaseException) -> str:
    chain = _chain(exc)
    where = next((u for u in map(_url_host, chain) if u), None) or host()
    what = f" for {model_id!r}" if model_id else ""
    return (
        f"Could not reach NDIF{what}, or it is unavailable ({where}): {_detail(exc, 300)}. "
        "Check your internet connection "
        "(and any proxy or firewall), that the host is right (nnsight.CONFIG.API.HOST, or NDIF_HOST exported "
        f"before starting Python), and NDIF's status at {STATUS_URL}; meanwhile run locally with remote=False."
    )


def translate(exc: BaseException, model_id: str) -> FutureLensError | None:
    """The `FutureLensError` for a failed remote run of ``model_id``, or ``None`` if ``exc`` is not a remote failure."""
    if not _is_remote(exc):
        return None
    chain = _chain(exc)
    statuses = {s for s in map(_status, chain) if s is not None}
    denied = any(_status(e) in (401, 403) and not _presigned(e) for e in chain)
    text = " | ".join(str(e) for e in chain)
    detail = _detail(exc)
    key = api_key()

    own = _OWN_TEXT.search(text)
    if own:  # futurelens' own server-side refusal: its sentence is the message
        return FutureLensError(redact(f"{own.group(1).strip()} (model {model_id!r})"))
    refused = _WHITELIST_TEXT.search(text)
    # Order matters: the hub answers 401 for unknown repos, and an auth or version
    # refusal can mention timeouts or sizes, so the specific causes go first.
    if refused:
        what = refused.group(1) or "a module"
        message = (
            f"NDIF's server refused to import {what} for a job on {model_id!r}: it is not on NDIF's import "
            f"whitelist ({detail}). If your own code in the trace imported it, use what the whitelist allows "
            "(torch, math, einops, collections, ...). Otherwise this is a futurelens bug (its server code must "
            "import only whitelisted modules): please report it with this message and your futurelens version; "
            "meanwhile run with remote=False."
        )
    elif any(_from(e, "huggingface_hub") and not _is_network(e) for e in chain):
        message = (
            f"nnsight names the model to NDIF by its Hugging Face hub id, and {model_id!r} could not be resolved "
            f"on the hub ({detail}). Use the hub id of a model NDIF serves (not a local folder or a model built "
            f"here). {_SERVED_HELP}"
        )
    elif denied or _AUTH_TEXT.search(text):
        if key is None:
            message = f"NDIF refused the request for {model_id!r} because no API key is set. {_KEY_HELP}"
        else:
            message = (
                f"NDIF rejected the API key for {model_id!r} ({detail}): it is invalid, expired or revoked, "
                f"or not allowed to use this model. Check or create a key at {KEY_URL}, then {_SET_KEY}."
            )
    elif 426 in statuses or _VERSION_TEXT.search(text):
        message = (
            f"NDIF and this client disagree on versions for {model_id!r} ({detail}). Upgrade nnsight within what "
            "futurelens supports (pip install -U 'nnsight>=0.8.1,<0.9'; upgrade futurelens if NDIF needs a newer "
            "nnsight) and use a Python version NDIF accepts; print(nnsight.compare()) shows the local and remote "
            "package versions side by side."
        )
    elif _SERVED_TEXT.search(text):
        message = f"NDIF is not serving {model_id!r} ({detail}). {_SERVED_HELP}"
    elif any(map(_is_network, chain)) or statuses & {502, 503} or _UNAVAILABLE_TEXT.search(text):
        message = _network_message(model_id, exc)
    elif any(map(_is_time_limit, chain)) or statuses & {408, 413, 504} or _LIMIT_TEXT.search(text):
        message = f"The NDIF request for {model_id!r} hit a server limit ({detail}). {_LIMIT_HELP}"
    elif any(map(_presigned, chain)):
        message = (
            f"The NDIF job for {model_id!r} ran, but downloading its result failed ({detail}); the download "
            "link may have expired: run the request again."
        )
    else:
        message = (
            f"The NDIF job for {model_id!r} failed: {detail}. If the error comes from the traced code itself, "
            "run the same call with remote='local' to reproduce it here."
        )
    return FutureLensError(redact(message))


@contextmanager
def ndif_errors(model_id: str) -> Iterator[None]:
    """Turn failures of a remote trace or session on ``model_id`` into a `FutureLensError` that says what to do.

    The original exception is chained (``raise ... from exc``). Anything that is
    not a remote failure (a `FutureLensError`, a torch error from the traced code)
    passes through unchanged.
    """
    try:
        yield
    except Exception as exc:
        error = translate(exc, model_id)
        if error is None:
            raise
        raise error from exc


# --------------------------------------------------------------------------- jobs


def payload_bytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (nested lists, tuples and dicts): what a request carries, to within its framing."""
    if hasattr(obj, "element_size") and hasattr(obj, "numel"):
        return int(obj.numel() * obj.element_size())
    if isinstance(obj, dict):
        return sum(payload_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(payload_bytes(v) for v in obj)
    return 0


def spans(
    lm: Any,
    n: int,
    *,
    payload: "int | Sequence[int]" = 0,
    result: "int | Sequence[int]" = 0,
    fixed: int = 0,
    lower: str = "pass fewer or smaller inputs per call",
) -> list[tuple[int, int]]:
    """``[(start, stop)]`` spans of ``n`` items such that each request sends and returns at most ``lm.max_request_mb``.

    The one place remote work is split by size. ``payload`` and ``result`` are the bytes of tensors
    each item sends and returns (one number for every item, or one per item); ``fixed`` is sent with
    every request. Locally everything is one span. An item that alone exceeds the bound is a
    `FutureLensError` naming the setting, and ``lower`` says what else to make smaller.
    """
    if not lm.remote or n == 0:
        return [(0, n)]
    limit = lm.max_request_mb * 2**20
    sent = [payload] * n if isinstance(payload, int) else list(payload)
    back = [result] * n if isinstance(result, int) else list(result)
    out, start, size_sent, size_back = [], 0, fixed, 0
    for i in range(n):
        if fixed + sent[i] > limit or back[i] > limit:
            biggest = max(fixed + sent[i], back[i])
            raise FutureLensError(
                f"One item of this job {'sends' if fixed + sent[i] > limit else 'returns'} {biggest / 2**20:.3g} MB, "
                f"over the request bound lm.max_request_mb={lm.max_request_mb:g} (--max-request-mb): {lower}, "
                "or raise the bound."
            )
        if i > start and (size_sent + sent[i] > limit or size_back + back[i] > limit):
            out.append((start, i))
            start, size_sent, size_back = i, fixed, 0
        size_sent += sent[i]
        size_back += back[i]
    out.append((start, n))
    return out


def request_spans(lm: Any, items: list, fixed: Any = None) -> list[tuple[int, int]]:
    """`spans` over ``items`` by the tensors each carries (plus ``fixed``, sent with each)."""
    return spans(lm, len(items), payload=[payload_bytes(i) for i in items], fixed=payload_bytes(fixed),
                 lower="use a smaller batch_size")


def run_job(lm: Any, fn: Any, *args: Any) -> Any:
    """Run ``fn(lm.nn, lm.spec(), *args)`` as one job: a plain call locally, ONE nnsight session (request) remotely.

    ``fn`` is a function of `futurelens.server` (its rule says what it may be): remotely,
    every trace it opens and the Python between them (loops, optimizer steps, reductions)
    run on the server inside the session; only its return value comes back, so it
    reduces there. futurelens' own source travels with the request (``nnsight.register``).
    NDIF failures become a `FutureLensError` that says what to do.
    """
    model, spec = lm.nn, lm.spec()
    if not lm.remote:
        return fn(model, spec, *args)
    size = payload_bytes(args)
    if size > lm.max_request_mb * 2**20:
        raise FutureLensError(
            f"This request would send {size / 2**20:.3g} MB to NDIF, over lm.max_request_mb={lm.max_request_mb:g}: "
            "pass fewer or shorter inputs per call (a smaller batch or chunk), or raise lm.max_request_mb."
        )
    import nnsight

    nnsight.register("futurelens")
    # Inside the session the traces are plain (the session is the request), and the head
    # runs inside traces rather than as direct module calls.
    spec = dict(spec, remote=False, direct=False)
    with ndif_errors(lm.name):
        with model.session(remote=lm.remote):
            result = nnsight.save(fn(model, spec, *args))
    return result
