"""How futurelens turns text into token ids: one rule, the model's own, for every path that tokenises.

THE RULE: text is tokenised as ``tokenizer(text)`` does by default, keeping the special tokens the
tokenizer puts *before* the text (a BOS for Gemma and Llama-3, nothing for GPT-J, GPT-2 or SmolLM2)
and dropping any it puts *after* it (an EOS would be a position the text does not have). The
dataset (each prefix: these leading tokens, then the document's tokens), the fixed prompt, the lens
and `fl.cache` on a string all follow it, so a state cached from a dataset row equals `fl.cache` on
the same text.

What was added is recorded (``special_tokens`` in a dataset's ``futurelens.json``, a cache's settings
and a soft prompt's metadata) and checked wherever such a file is read with a model (`check`): a cache
or prompt made one way is never read as if made another. A record made before this rule existed is
read as "nothing added" (what futurelens did then).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .errors import FutureLensError

LEGACY = {"prepend": [], "append": []}
"""What a dataset, cache or prompt that records nothing was tokenised with: no special tokens."""

_PROBE = "Hello world"


def special_tokens(tokenizer: Any) -> dict:
    """``{"prepend": [ids], "append": [ids]}``: what ``tokenizer(text)`` adds before and after the text's own ids."""
    full = list(tokenizer(_PROBE)["input_ids"])
    plain = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return {"prepend": [int(t) for t in full[:i]], "append": [int(t) for t in full[i + len(plain) :]]}
    return dict(LEGACY)  # pragma: no cover - a tokenizer whose special tokens change the text's own ids


def prepended(tokenizer: Any) -> list[int]:
    """The ids put before every text (``[bos]`` or ``[]``)."""
    return special_tokens(tokenizer)["prepend"]


def encode(tokenizer: Any, text: str) -> list[int]:
    """``text`` as futurelens tokenises it everywhere: the tokenizer's leading special tokens, then the text's ids."""
    return prepended(tokenizer) + [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]


def recorded(value: Any) -> dict:
    """A stored record (a dict, its JSON, or None for a file made before records existed) as a dict."""
    if value is None:
        return dict(LEGACY)
    if isinstance(value, str):
        value = json.loads(value)
    return {"prepend": [int(t) for t in value.get("prepend", [])], "append": [int(t) for t in value.get("append", [])]}


def describe(record: dict, tokenizer: Any | None = None) -> str:
    ids = record["prepend"]
    if not ids:
        return "no special token before the text"
    names = tokenizer.convert_ids_to_tokens(ids) if tokenizer is not None else ids
    return f"{names} before the text"


def check(stored: Any, tokenizer: Any, what: str, fix: str) -> None:
    """Refuse ``what`` (a dataset, cache or prompt) whose recorded special tokens are not this tokenizer's."""
    then, now = recorded(stored), special_tokens(tokenizer)
    if then["prepend"] != now["prepend"]:
        raise FutureLensError(
            f"{what} was tokenised with {describe(then, tokenizer)}, but this model's tokenizer puts "
            f"{describe(now, tokenizer)}: its states and ids would not be what the model sees on the same text. {fix}"
        )


def tokenizer_hash(tokenizer: Any) -> str:
    """A fingerprint of the vocabulary and special tokens: same hash, same ids."""
    payload = json.dumps([sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_tokenizer(source: str, **kwargs: Any) -> Any:
    """``AutoTokenizer.from_pretrained(source)``, with a pad token (the EOS, else id 0) where the model has none."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    return tok
