"""NDIF's failures in words a user can act on: what nnsight, httpx, websocket-client, requests or socketio raise
during a remote run becomes a `FutureLensError` that says what happened and what to do.

`ndif_errors(model_id)` is the context every remote call runs in; `translate` is its rule, one case per failure
NDIF's server code (ndif-team/ndif, PyPI ``ndif``) or the transport can produce: no or a bad key, a model not
served or not deployable, a version mismatch, a module off the whitelist, a time or size limit, the network.
The caller's own errors pass through untouched; every detail quoted is redacted (`futurelens.secrets`).
"""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import FutureLensError
from .ndif_config import api_key, host
from .secrets import redact

KEY_URL = "https://login.ndif.us"
STATUS_URL = "https://nnsight.net/status/"

_SET_KEY = (
    'set it with nnsight.CONFIG.set_default_api_key("...") (saved for later sessions) '
    "or export NDIF_API_KEY=... before starting Python"
)
KEY_HELP = f"Get a key at {KEY_URL}, then {_SET_KEY}."
SERVED_HELP = (
    f"See which models NDIF serves at {STATUS_URL} or with futurelens.remote.served_models(); "
    "meanwhile run locally with remote=False."
)
_LIMIT_HELP = (
    "NDIF caps each request's run time and payload/result size: split the work into smaller "
    "requests (a smaller batch of prefixes, fewer layers, a shorter rollout)."
)




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


def network_message(model_id: str, exc: BaseException) -> str:
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
            f"here). {SERVED_HELP}"
        )
    elif denied or _AUTH_TEXT.search(text):
        if key is None:
            message = f"NDIF refused the request for {model_id!r} because no API key is set. {KEY_HELP}"
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
        message = f"NDIF is not serving {model_id!r} ({detail}). {SERVED_HELP}"
    elif any(map(_is_network, chain)) or statuses & {502, 503} or _UNAVAILABLE_TEXT.search(text):
        message = network_message(model_id, exc)
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
