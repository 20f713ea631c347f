"""wandb logging works offline and never records a secret."""

from __future__ import annotations

import pandas as pd

from futurelens.tracking import Tracker


def test_offline_run_logs_and_keeps_secrets_out(tmp_path, monkeypatch):
    secret = "ndif-secret-0123456789abcdef"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("NDIF_API_KEY", secret)
    config = {"lr": 0.1, "api_key": secret, "nested": {"token": secret}, "note": f"key={secret}"}
    with Tracker(True, "futurelens-test", config=config, job="test") as t:
        t.log({"train/loss": 1.5})
        t.table("eval/results", pd.DataFrame({"method": ["a"], "value": [0.5]}))
        run_dir = t.run.dir
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    for p in files:
        assert secret.encode() not in p.read_bytes(), p
    log = next(p for p in files if p.suffix == ".wandb").read_bytes()
    assert b"api_key" in log and b"***" in log and b"train/loss" in log  # the config went in, redacted
    assert run_dir


def test_disabled_tracker_does_nothing():
    with Tracker(False) as t:
        t.log({"x": 1})
        assert t.run is None


def test_tidy_table_with_missing_k_logs_offline(tmp_path, monkeypatch):
    """The tidy results table has k = <NA> on surprisal rows; wandb.Table refuses <NA>, so it goes in as null."""
    import json

    from futurelens.figure import rows_from_scores, tidy

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    df = tidy(rows_from_scores("bigram", -1, 0, {"precision@1": 0.25, "surprisal": 3.5})
              + rows_from_scores("learned prompt", 14, 1, {"precision@1": 0.5, "precision@2": 0.75, "surprisal": 2.0}))
    assert df["k"].isna().sum() == 2
    with Tracker(True, "futurelens-test", job="eval") as t:
        t.table("eval/results", df)
    (table,) = tmp_path.rglob("*.table.json")
    logged = json.loads(table.read_text())
    assert logged["columns"] == list(df.columns)
    assert logged["data"] == [
        ["bigram", -1, 0, "precision", 1, 0.25, -1, "model"],
        ["bigram", -1, 0, "surprisal", None, 3.5, -1, "model"],
        ["learned prompt", 14, 1, "precision", 1, 0.5, 14, "model"],
        ["learned prompt", 14, 1, "precision", 2, 0.75, 14, "model"],
        ["learned prompt", 14, 1, "surprisal", None, 2.0, 14, "model"],
    ]
