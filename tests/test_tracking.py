"""wandb logging, offline: what a run records (its config, metrics and tables, read back from the run's own files)
is what was logged, less the secrets."""

from __future__ import annotations

import json
import struct
from dataclasses import asdict

import pandas as pd
import pytest

from futurelens.tracking import Tracker

SECRET = "ndif-secret-0123456789abcdef"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """wandb offline under ``tmp_path``, with timeouts no loaded machine reaches (the service start is 30 s by default,
    ``wandb.init`` 90 s). Nothing here waits on a clock: the readers below first shut wandb's service down."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.setup(settings=wandb.Settings(x_service_wait=600, init_timeout=600))
    return tmp_path


def finished():
    """Wait until wandb's service has written everything: ``run.finish()`` returns before its writer flushes the
    ``.wandb`` file (read at once, it was often the 7-byte header alone; that made the old test flaky under load);
    ``wandb.teardown()`` waits for the service to finish. The next ``wandb.init`` starts a new one."""
    import wandb

    wandb.teardown()


def records(folder):
    """Every record of the one offline run under ``folder``, parsed from its ``.wandb`` file: wandb's LevelDB-style
    log (a 7-byte file header, then 32 KiB blocks of records, each a 7-byte header ``crc, length, type`` and its
    bytes, type 1 whole, 2-4 first/middle/last piece of one split across blocks) of ``Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2

    finished()
    (path,) = folder.rglob("*.wandb")
    raw, block, pos, parts, out = path.read_bytes(), 32768, 7, b"", []
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        left = block - pos % block
        _, n, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if left < 7 or (n == 0 and kind == 0):  # a block's zero-padded tail
            pos += left
            continue
        data, pos = raw[pos + 7 : pos + 7 + n], pos + 7 + n
        parts = data if kind in (1, 2) else parts + data
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            out.append(record)
    return out


def logged_config(recs):
    """The run's config as logged: ``{key: value}`` from its run record and any later config updates."""
    config = {}
    for r in recs:
        kind = r.WhichOneof("record_type")
        items = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        config.update({i.key: json.loads(i.value_json) for i in items})
    config.pop("_wandb", None)
    return config


def logged_history(recs):
    """Each ``run.log`` call's values, wandb's own ``_step``/``_runtime``/``_timestamp`` left out: ``[{key: value}]``
    (a nested key such as a table's ``eval/results.nrows`` joined with dots)."""
    rows = []
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            row = {".".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    return rows


def logged_table(folder, key):
    """The rows of the table logged under ``key``, as a DataFrame read from its ``.table.json``."""
    finished()
    (path,) = folder.rglob(f"{key.split('/')[-1]}_*.table.json")
    table = json.loads(path.read_text())
    return pd.DataFrame(table["data"], columns=table["columns"])


def test_offline_run_logs_the_config_redacted_and_the_values_as_given(offline, monkeypatch):
    """The run's records hold the config with each secret as ``***`` and every other value intact, the logged values
    and the table's rows; no file holds a secret (the one in the environment, or one only its key names).

    Seen failing with `remote._secret_name` returning True for every name (the config all ``***``: the old test, which
    looked for ``api_key``, ``***`` and ``train/loss`` in the log's bytes, passed) and with ``safe_config`` dropped
    from `Tracker.__enter__` (the secrets logged)."""
    other = "wandb-key-not-in-the-environment-42"
    monkeypatch.setenv("NDIF_API_KEY", SECRET)
    config = {"lr": 0.1, "layers": [2, 14], "api_key": other, "nested": {"token": SECRET, "epochs": 3},
              "note": f"key={SECRET}", "model": "smollm2-135m"}
    results = pd.DataFrame({"method": ["a", "b"], "value": [0.5, 0.25]})
    with Tracker(True, "futurelens-test", config=config, job="test") as t:
        t.log({"train/loss": 1.5})
        t.log({"train/loss": 1.25, "train/step": 2})
        t.table("eval/results", results)
    recs = records(offline)
    assert logged_config(recs) == {"lr": 0.1, "layers": [2, 14], "api_key": "***", "nested": {"token": "***", "epochs": 3},
                                   "note": "key=***", "model": "smollm2-135m"}
    history = logged_history(recs)
    assert history[:2] == [{"train/loss": 1.5}, {"train/loss": 1.25, "train/step": 2}]
    assert history[2]["eval/results._type"] == "table-file" and history[2]["eval/results.nrows"] == 2
    pd.testing.assert_frame_equal(logged_table(offline, "eval/results"), results)
    for p in offline.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes() and other.encode() not in p.read_bytes(), p


def test_an_eval_run_logs_results_csv_its_config_and_figures(offline, tiny_cache):
    """`evaluate --wandb` logs the table that results.csv holds, row for row and cell for cell (missing cells as
    null), its own config, and its figures. Seen failing with `tracking.wandb_frame` filling missing cells with 0
    (``out.where(pd.notna(df), 0)``): surprisal rows logged with k = 0."""
    from futurelens.evaluate import EvalConfig, evaluate

    lm, _, cache = tiny_cache("llama", n=24)
    cfg = EvalConfig(cache=str(cache.path), out=str(offline / "eval"), layers=[3], methods=["ngram", "linear"], k=2,
                     wandb=True, wandb_project="futurelens-test")
    evaluate(cfg, lm=lm, progress=False)
    on_disk = pd.read_csv(offline / "eval" / "results.csv")
    logged = logged_table(offline, "eval/results")
    assert list(logged.columns) == list(on_disk.columns) and len(logged) == len(on_disk) > 0
    assert on_disk["k"].isna().any()  # surprisal rows: a missing k, which wandb must get as null, not 0 or NaN
    pd.testing.assert_frame_equal(logged.astype(on_disk.dtypes.to_dict()), on_disk, check_exact=False, rtol=1e-12)
    assert logged_config(records(offline)) == json.loads(json.dumps(asdict(cfg)))
    images = {k.split(".")[0] for row in logged_history(records(offline)) for k, v in row.items() if v == "image-file"}
    assert images == {"eval/precision", "eval/surprisal"}


def test_disabled_tracker_does_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    with Tracker(False) as t:
        t.log({"x": 1})
        t.table("t", pd.DataFrame({"a": [1]}))
        assert t.run is None
    assert not any(tmp_path.iterdir())


def test_tidy_table_with_missing_k_logs_offline(offline):
    """The tidy results table has k = <NA> on surprisal rows; wandb.Table refuses <NA>, so it goes in as null."""
    from futurelens.artifacts.results import rows_from_scores, tidy

    df = tidy(rows_from_scores("bigram", -1, 0, {"precision@1": 0.25, "surprisal": 3.5})
              + rows_from_scores("learned prompt", 14, 1, {"precision@1": 0.5, "precision@2": 0.75, "surprisal": 2.0}))
    assert df["k"].isna().sum() == 2
    with Tracker(True, "futurelens-test", job="eval") as t:
        t.table("eval/results", df)
    finished()
    (table,) = offline.rglob("*.table.json")
    logged = json.loads(table.read_text())
    assert logged["columns"] == list(df.columns)
    assert logged["data"] == [
        ["bigram", -1, 0, "precision", 1, 0.25, -1, "model"],
        ["bigram", -1, 0, "surprisal", None, 3.5, -1, "model"],
        ["learned prompt", 14, 1, "precision", 1, 0.5, 14, "model"],
        ["learned prompt", 14, 1, "precision", 2, 0.75, 14, "model"],
        ["learned prompt", 14, 1, "surprisal", None, 2.0, 14, "model"],
    ]
