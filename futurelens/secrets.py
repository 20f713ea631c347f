"""Secrets: the one place that keeps the NDIF API key, the wandb key and the Hugging Face token out of output.

THE RULE: anything futurelens writes for a person or another program — a log line, an error message, an HTML page,
a model card, a config recorded in an artifact, a wandb config — passes through this module first:

- text through `redact` (the keys' values from the environment and nnsight's config, and anything in a
  key/token/password/Authorization slot or a URL's credentials, become ``***``);
- a config dict through `safe_config` (secret-named entries become ``***``, every string is redacted);
- logs through `install_redaction` (a `RedactSecrets` filter on the root, ``nnsight`` and ``websocket`` loggers).

Nothing else in the package scrubs secrets. Importing this module is cheap: it never imports torch or nnsight.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

_NAME = (
    r"(?<![\w-])(?:[\w-]*api[_-]?key|apikey|key|[\w-]*secret|[\w-]*pass(?:word|wd)|[\w-]*signature|[\w-]*credential"
    r"|(?:[\w-]*(?:access|auth|api|hf|wandb|ndif|bearer|refresh|session|security)[_-]?)?token)"
)
_PATTERNS = [
    # key=..., "api_key": "...", 'ndif-api-key': '...', WANDB_API_KEY=... (names such as
    # pad_token, model_key or tokenizer are left alone, and so are placeholders: "=...", "=<key>").
    re.compile(_NAME + r"""(['"]?\s*[:=]\s*['"]?)(?!\.\.\.|<|\*\*\*)([^\s'",;&})\]]+)""", re.IGNORECASE),
    # Authorization: Bearer <token> / Basic <b64> / <token>
    re.compile(r"""(authorization['"]?\s*[:=]\s*['"]?(?:(?:bearer|basic|token)\s+)?)([^\s'",;})\]]+)""", re.IGNORECASE),
    re.compile(r"(\bbearer\s+)([A-Za-z0-9._~+/=-]{8,})", re.IGNORECASE),
    # Credentials inside a URL: https://user:secret@host
    re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)([^/\s@]+)(?=@)", re.IGNORECASE),
]


def _known_secrets() -> list[str]:
    found = [os.environ.get("NDIF_API_KEY"), os.environ.get("WANDB_API_KEY"), os.environ.get("HF_TOKEN"),
             os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    # Read nnsight's key only if nnsight is already loaded: a log filter must not
    # import torch, and a key nnsight never loaded cannot leak through it.
    config = sys.modules.get("nnsight.schema.config")
    if config is not None:
        found.append(getattr(config.CONFIG.API, "APIKEY", None))
    # Longest first, so a key containing another is replaced whole; very short
    # values are skipped so a placeholder like "x" does not mangle every message.
    return sorted({s.strip() for s in found if s and len(s.strip()) >= 4}, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with the NDIF and wandb keys, and anything in a key/token/Authorization slot, as ``***``."""
    text = str(text)
    for secret in _known_secrets():
        text = text.replace(secret, "***")
    text = _PATTERNS[0].sub(lambda m: m.group(0)[: m.start(2) - m.start(0)] + "***", text)
    for pattern in _PATTERNS[1:]:
        text = pattern.sub(lambda m: m.group(1) + "***", text)
    return text


class RedactSecrets(logging.Filter):
    """A logging filter that redacts a record's message, arguments and traceback; it never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):  # a malformed format string: redact the parts
            message = f"{record.msg} {record.args}"
        # Formatting once here means no argument can bring the key back later.
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


# Loggers whose output may carry a key: the root, nnsight, and websocket-client
# (whose trace mode logs handshake headers, ndif-api-key included).
_LOGGERS = ("", "nnsight", "websocket")


def install_redaction() -> RedactSecrets:
    """Attach one `RedactSecrets` to the root, ``nnsight`` and ``websocket`` loggers and their handlers.

    Idempotent. A logger's filters only see records logged on that logger, while
    records from child loggers (``futurelens.*``, ``httpx`` ...) reach the root's
    handlers directly, so the handlers present now get the filter as well: call
    this after logging is configured.
    """
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    # Reuse the filter an earlier call installed, so the one returned is the one in place.
    installed = [f for t in loggers + [h for lg in loggers for h in lg.handlers] for f in t.filters if isinstance(f, RedactSecrets)]
    shared = installed[0] if installed else RedactSecrets()
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        for target in [logger, *logger.handlers]:
            if not any(isinstance(f, RedactSecrets) for f in target.filters):
                target.addFilter(shared)
    return shared


def _secret_name(name: str) -> bool:
    n = re.sub(r"[-.\s]", "_", str(name).lower())
    if any(word in n for word in ("secret", "password", "passwd", "credential", "authorization")):
        return True
    if n in ("key", "token") or n.endswith(("api_key", "apikey", "private_key", "access_key")):
        return True
    return bool(re.fullmatch(r"(?:\w+_)?(?:access|auth|api|hf|wandb|ndif|bearer|refresh|session|id)_?token", n))


def safe_config(d: dict) -> dict:
    """A copy of ``d`` safe to log or publish: secret-named entries become ``"***"``, all strings are redacted.

    Recurses into dicts, lists and tuples. ``None`` values of secret-named entries stay
    ``None`` (recording that no key was set reveals nothing).
    """

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (value[k] if value[k] is None else "***") if _secret_name(k) else clean(value[k]) for k in value}
        if isinstance(value, (list, tuple)):
            return type(value)(clean(v) for v in value)
        if isinstance(value, str):
            return redact(value)
        return value

    return clean(dict(d))
