"""futurelens.secrets: keys never reach text, logs or recorded configs (each checked on the key's own value)."""

from __future__ import annotations

import json
import logging

import nnsight
import pytest

from futurelens import secrets

MODEL = "meta-llama/Llama-3.1-8B"
KEY = "ndif-test-4f9c2e7a1b8d6053"
WANDB = "0123456789abcdef0123456789abcdef01234567"
HF = "hf_abcdefghijklmnopqrstuvwxyz0123"


@pytest.fixture
def with_key(monkeypatch):
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", KEY)
    monkeypatch.setenv("WANDB_API_KEY", WANDB)
    monkeypatch.setenv("HF_TOKEN", HF)
    return KEY



def test_redact_removes_keys_and_key_shaped_values(with_key):
    text = (
        f"key={KEY} wandb {WANDB} url=https://api.ndif.us/x?api_key=abcdef123456&a=1 "
        "headers={'ndif-api-key': 'zzzzzzzzzz'} Authorization: Bearer sk-abcdefghijklmnop "
        "WANDB_API_KEY=fedcba9876543210 https://user:hunter22@host/"
    )
    out = secrets.redact(text)
    for secret in (KEY, WANDB, "abcdef123456", "zzzzzzzzzz", "sk-abcdefghijklmnop", "fedcba9876543210", "hunter22"):
        assert secret not in out
    assert "&a=1" in out and "https://api.ndif.us/x" in out
    # Ordinary names and placeholders are left alone.
    keep = 'pad_token=<pad> model_key=gpt2 tokenizer=gpt2 max_new_tokens=5 export NDIF_API_KEY=...'
    assert secrets.redact(keep) == keep


def test_logs_never_show_the_key(with_key, caplog, restore_log_filters):
    first = secrets.install_redaction()
    secrets.install_redaction()
    root = logging.getLogger()
    assert sum(isinstance(f, secrets.RedactSecrets) for f in root.filters) == 1
    assert first in root.filters or first in caplog.handler.filters
    assert any(isinstance(f, secrets.RedactSecrets) for f in caplog.handler.filters)

    with caplog.at_level(logging.INFO):
        logging.getLogger("futurelens.experiment").info("config %s", {"api_key": KEY})
        logging.getLogger("nnsight").warning(f"sending with ndif-api-key: {KEY}")
        root.info("wandb %s", WANDB)
        try:
            raise RuntimeError(f"request failed for key {KEY}")
        except RuntimeError:
            logging.getLogger("futurelens.remote").exception("remote call failed")
    assert len(caplog.records) == 4
    assert KEY not in caplog.text and WANDB not in caplog.text
    assert all(KEY not in r.getMessage() for r in caplog.records)
    assert "request failed for key ***" in caplog.text


def test_safe_config_drops_secrets_recursively(with_key):
    config = {
        "model": MODEL,
        "api_key": KEY,
        "remote": {"NDIF_API_KEY": KEY, "host": "https://api.ndif.us", "hf-token": None},
        "wandb": {"WANDB_API_KEY": WANDB, "project": "futurelens", "tags": [f"run with {KEY}"]},
        "auth": [{"password": "hunter22", "user": "me"}],
        "tokenizer": {"pad_token": "<pad>", "max_new_tokens": 4},
    }
    safe = secrets.safe_config(config)
    dumped = json.dumps(safe)
    assert KEY not in dumped and WANDB not in dumped and "hunter22" not in dumped
    assert safe["api_key"] == "***" and safe["remote"]["NDIF_API_KEY"] == "***" and safe["remote"]["hf-token"] is None
    assert safe["model"] == MODEL and safe["wandb"]["project"] == "futurelens" and safe["auth"][0]["user"] == "me"
    assert safe["tokenizer"] == {"pad_token": "<pad>", "max_new_tokens": 4}
    assert config["api_key"] == KEY  # the input is not modified


def test_the_hub_token_is_redacted_wherever_it_appears(with_key):
    """The one module covers the Hugging Face token too (artifacts used to add it in a second scrubber)."""
    assert HF not in secrets.redact(f"pushing with {HF} now")
    assert HF not in json.dumps(secrets.safe_config({"card": f"token {HF}", "nested": [{"x": HF}]}))
