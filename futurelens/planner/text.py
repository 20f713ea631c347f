"""Token counts of the texts a run sends (the lens page's text, the fixed prompt), by the model's own tokenizer.

Counted as the stages tokenise (`futurelens.tokens.encode`: the tokenizer's leading special tokens, then the
text's ids) when the tokenizer is on this machine: a model folder, the embedded default, or a hub id already
in the local cache (never downloaded). For the shipped configs the plan estimates (the same on every machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any


@dataclass
class Counts:
    """What the lens and the fixed prompt send, in token ids."""

    text_ids: int
    """The lens text's ids as sent (its leading special tokens included)."""
    columns: int
    """The lens page's columns: the text's own tokens."""
    prompt_ids: int
    """The fixed prompt's ids."""
    exact: bool
    """Counted by the model's tokenizer (else estimated)."""
    lead: int = 0
    """The tokenizer's leading special tokens (a BOS): the rows a soft prompt is read after (`futurelens.train`'s
    ``lead``), which travel with its training requests and with the prompt wherever it is sent."""


@lru_cache(maxsize=8)
def _tokenizer(model: str, source: str) -> Any | None:
    """The model's tokenizer when it is here, else None; read once per process (plan counts several texts)."""
    if source == "shipped":  # the same figures on every machine, downloaded or not
        return None
    import logging
    from pathlib import Path

    from ..embedded import EMBEDDED, default_model_dir

    folder = default_model_dir(model) if model in EMBEDDED else Path(model).expanduser()
    try:
        import transformers

        logging.getLogger("transformers").setLevel(logging.ERROR)
        if folder.is_dir():
            return transformers.AutoTokenizer.from_pretrained(str(folder))
        return transformers.AutoTokenizer.from_pretrained(model, local_files_only=True)
    except Exception:  # noqa: BLE001 - no tokenizer here (a shipped config, a config.json, not downloaded): estimate
        return None


def counts(model: str, source: str, text: str, prompt: str, tokens: int = 0, prompt_tokens: int = 10) -> Counts:
    """`Counts` of ``text`` (or ``tokens`` columns when given) and ``prompt`` for ``model`` (its `Shape`'s ``source``:
    a shipped config is never looked up); without its tokenizer, ``tokens`` (8 when 0) columns and ``prompt_tokens``
    for the prompt (GPT-J's count of the paper's), no BOS (``lead`` 0)."""
    tok = _tokenizer(model, source)
    if tok is None:
        columns = tokens or 8
        return Counts(columns, columns, prompt_tokens, exact=False)
    from ..tokens import encode, prepended

    pre = len(prepended(tok))
    ids = encode(tok, text)
    columns = tokens or len(ids) - pre
    return Counts(columns + pre, columns, len(encode(tok, prompt)), exact=not tokens or tokens == len(ids) - pre,
                  lead=pre)
