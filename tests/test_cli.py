"""The `futurelens` command as a newcomer meets it: errors without tracebacks, arguments checked before any model
loads, an offline hub recognised at once, --version, --remote on every model command, Ctrl-C that says what was
kept, readable eval tables, and the whole `train --wandb` / `eval --wandb` path offline on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import futurelens
from futurelens.cli import app

from conftest import build_tiny, synthetic_prefixes

ROOT = Path(__file__).resolve().parent.parent
FUTURELENS = Path(sys.executable).parent / "futurelens"


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def assert_clean_error(result, message: str, code: int = 1) -> None:
    """Exit ``code``, ``message`` on stderr, and no traceback anywhere."""
    assert result.exit_code == code, result.output
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output and "╭" not in result.output, result.output


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tokenizer):
    """A tiny random Llama saved as a folder (so the CLI loads it by name), its dataset, and the CLI-built cache."""
    root = tmp_path_factory.mktemp("cli")
    folder = root / "tiny-llama"
    build_tiny("llama", tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    data, _ = synthetic_prefixes(root / "data", tokenizer, str(folder), n=24, n_max=2)
    result = invoke("cache", "--data", str(data), "--out", str(root / "cache"), "--batch-size", "8")
    assert result.exit_code == 0, result.output
    assert "Loading weights" not in result.output  # transformers' bar is silenced on the CLI
    return {"root": root, "model": str(folder), "data": str(data), "cache": str(root / "cache")}


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything tries to load a model."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"load_model{args} was called before the arguments were checked")

    monkeypatch.setattr(futurelens, "load_model", refuse)


# --------------------------------------------------------------------------- errors and the version


def test_version_comes_from_the_installed_metadata():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"futurelens {version('futurelens')}"
    assert version("futurelens") == futurelens.__version__


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "--source", "no-such-corpus.txt"], "Corpus 'no-such-corpus.txt' is neither"),
        (["data", "--length-dist", "zipf"], "length_dist must be 'uniform' or 'loguniform'"),
        (["demo", "--source", "missing/"], "Corpus 'missing/' is neither"),
        (["cache", "--dtype", "float8"], "dtype (--dtype) must be one of float32, float16, bfloat16"),
        (["cache", "--data", "no-such-data"], "No dataset at no-such-data"),
        (["train", "--loss", "mse"], "loss (--loss) must be 'kl' or 'ce'"),
        (["train", "--cache", "no-such-cache"], "No state cache at no-such-cache"),
        (["eval", "--methods", "oracle"], "Unknown method(s) ['oracle']"),
        (["lens", "x", "--prompts", "no-such-prompts"], "Soft prompt path no-such-prompts does not exist"),
    ],
)
def test_bad_arguments_are_one_message_before_any_model_loads(args, message, no_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_clean_error(invoke(*args), message)


def test_debug_flag_and_variable_show_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quiet = invoke("cache", "--dtype", "float8")
    assert isinstance(quiet.exception, SystemExit) and quiet.exit_code == 1
    for result in (invoke("--debug", "cache", "--dtype", "float8"),
                   invoke("cache", "--dtype", "float8", env={"FUTURELENS_DEBUG": "1"})):
        assert isinstance(result.exception, futurelens.FutureLensError), result.output
    assert invoke("cache", "--dtype", "float8", env={"FUTURELENS_DEBUG": "0"}).exit_code == 1


def test_a_real_process_prints_the_message_alone(tmp_path):
    """Not just CliRunner: the installed script, typer's exception hook included."""
    env = {k: v for k, v in os.environ.items() if k != "FUTURELENS_DEBUG"}
    proc = subprocess.run([str(FUTURELENS), "cache", "--dtype", "float8"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["Error: dtype (--dtype) must be one of float32, float16, bfloat16, not 'float8'."]
    debug = subprocess.run([str(FUTURELENS), "--debug", "cache", "--dtype", "float8"], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "_check_cache" in debug.stderr
    assert subprocess.run([str(FUTURELENS), "--version"], capture_output=True, text=True, timeout=120).stdout.startswith(
        "futurelens ")


# --------------------------------------------------------------------------- the hub


def test_an_unreachable_hub_is_recognised_at_once(monkeypatch):
    import socket

    from huggingface_hub import constants

    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    before = constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    start = time.perf_counter()
    result = invoke("lens", "x", "--model", "futurelens-test/no-such-model")
    assert time.perf_counter() - start < 15  # the hub client alone retries for ~50 s
    assert_clean_error(result, "The Hugging Face hub at https://huggingface.co is unreachable from here")
    assert "'futurelens-test/no-such-model' is neither a local folder nor in the hub cache" in result.stderr
    assert (constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")) == before  # restored after the command


def test_hf_hub_offline_is_recognised_at_once(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = invoke("lens", "x", "--model", "futurelens-test/no-such-model")
    assert_clean_error(result, "HF_HUB_OFFLINE is set, so the hub cannot be asked")
    assert_clean_error(invoke("lens", "x", "--model", "./no/such/folder"), "is not an existing folder, nor a hub id")


# --------------------------------------------------------------------------- --remote


def test_remote_without_a_key_says_how_to_set_one(monkeypatch):
    import nnsight

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", "")
    result = invoke("lens", "x", "--model", "gpt2", "--remote")
    assert_clean_error(result, "No NDIF API key is set, so 'gpt2' cannot run on NDIF")
    assert "https://login.ndif.us" in result.stderr


def test_remote_reaches_load_model_from_every_model_command(tiny_run, monkeypatch, tmp_path):
    calls = []

    def record(model, **kwargs):
        calls.append((model, kwargs))
        raise futurelens.FutureLensError("recorded")

    monkeypatch.setattr(futurelens, "load_model", record)
    monkeypatch.chdir(tmp_path)
    commands = {
        "lens": ["lens", "x"],
        "data": ["data"],
        "demo": ["demo"],
        "cache": ["cache", "--data", tiny_run["data"]],
        "train": ["train", "--cache", tiny_run["cache"]],
        "eval": ["eval", "--cache", tiny_run["cache"]],
    }
    for name, args in commands.items():
        for remote in (True, False):
            calls.clear()
            result = invoke(*args, "--model", "EleutherAI/gpt-j-6b", *(["--remote"] if remote else []))
            assert_clean_error(result, "recorded")
            assert calls == [("EleutherAI/gpt-j-6b", {"remote": remote, "max_request_mb": 32.0})], name
        assert "--remote" in invoke(name, "--help").output
    # without --model, cache/train/eval load the model their input was built with
    calls.clear()
    invoke("eval", "--cache", tiny_run["cache"], "--remote")
    assert calls == [(tiny_run["model"], {"remote": True, "max_request_mb": 32.0})]


# --------------------------------------------------------------------------- the lens, Ctrl-C


def test_lens_on_a_folder_model_without_the_loading_bar(tiny_run, tmp_path, capsys):
    import transformers

    out = tmp_path / "lens.html"
    result = invoke("lens", "def f(x):", "--model", tiny_run["model"], "--layers", "1", "--rollout", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_text().count("fl-cell") > 0 and "fixed prompt" in result.stdout
    assert "Loading weights" not in result.output
    # the bar is back on for library users afterwards, and this test would see it
    assert transformers.utils.logging.is_progress_bar_enabled()
    transformers.AutoModelForCausalLM.from_pretrained(tiny_run["model"])
    assert "Loading weights" in capsys.readouterr().err


def test_ctrl_c_during_train_says_what_was_kept_and_resume_says_so(tiny_run, tmp_path, monkeypatch):
    from futurelens.tracking import Tracker

    seen = []

    def interrupt_third(self, values):  # training logs every optimizer step through its Tracker
        seen.append(values)
        if len(seen) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Tracker, "log", interrupt_third)
    out = tmp_path / "prompts"
    args = ["train", "--cache", tiny_run["cache"], "--out", str(out), "--layers", "2", "--prompt-len", "3",
            "--batch-size", "4", "--checkpoint-every", "1"]
    result = invoke(*args)
    assert_clean_error(result, "Interrupted.", code=130)
    assert f"Kept in {out}: layer-2.ckpt.pt" in result.stderr and "run the same command again to resume" in result.stderr
    monkeypatch.undo()
    resumed = invoke(*args)
    assert resumed.exit_code == 0, resumed.output
    assert f"layer 2: resuming from {out / 'layer-2.ckpt.pt'} at epoch 1, batch 3" in resumed.stderr
    assert (out / "layer-2.safetensors").exists() and not (out / "layer-2.ckpt.pt").exists()
    again = invoke(*args)
    assert f"layer 2: already trained ({out / 'layer-2.safetensors'}), kept" in again.stderr


def test_train_eval_and_lens_with_target_layers(tiny_run, tmp_path):
    out = tmp_path / "prompts"
    args = ["train", "--cache", tiny_run["cache"], "--out", str(out), "--layers", "1", "--target-layers", "1",
            "--target-layers", "3", "--prompt-len", "3", "--batch-size", "8"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "Trained 2 soft prompts: layers [1] at their own layer and (layer, target layer) pairs [(1, 3)]" in result.stdout
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["layer-1-to-3.safetensors", "layer-1.safetensors"]
    again = invoke(*args)
    assert f"layer 1 -> 3: already trained ({out / 'layer-1-to-3.safetensors'}), kept" in again.stderr
    result = invoke("eval", "--cache", tiny_run["cache"], "--prompts", str(out), "--out", str(tmp_path / "eval"),
                    "--layers", "1", "--target-layers", "1", "--target-layers", "3", "--methods", "fixed",
                    "--methods", "learned", "--against", "text")
    assert result.exit_code == 0, result.output
    assert "against the text's real next tokens" in result.stdout and "target layer L' (columns)" in result.stdout
    assert (tmp_path / "eval" / "target_layers.png").exists()
    html = tmp_path / "lens.html"
    result = invoke("lens", "def f(x):", "--model", tiny_run["model"], "--prompts", str(out), "--target-layer", "3",
                    "--rollout", "1", "--out", str(html))
    assert result.exit_code == 0, result.output
    assert "written at layer 3" in result.stdout


def test_ctrl_c_during_data_and_cache(tiny_run, tmp_path, monkeypatch):
    import futurelens.data.prefixes as prefixes
    import futurelens.data.states as states

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prefixes, "build_prefixes", interrupt)
    monkeypatch.setattr(states, "build_cache", interrupt)
    result = invoke("data", "--model", tiny_run["model"], "--out", str(tmp_path / "data"))
    assert_clean_error(result, "Interrupted. No labelled shard was finished yet", code=130)
    assert "run the same command again" in result.stderr
    result = invoke("cache", "--data", tiny_run["data"], "--out", str(tmp_path / "cache"))
    assert_clean_error(result, "Interrupted. Kept 0 finished shard(s)", code=130)
    assert "continue at the first missing shard" in result.stderr


# --------------------------------------------------------------------------- train --wandb, eval --wandb offline


def test_train_and_eval_with_wandb_offline_log_the_table_and_no_secret(tiny_run, tmp_path, monkeypatch):
    secrets = {"WANDB_API_KEY": "wandb-fake-key-" + "0" * 24, "NDIF_API_KEY": "ndif-fake-key-0123456789abcdef"}
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb-dir"), "WANDB_SILENT": "true", **secrets}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "wandb-dir").mkdir()
    monkeypatch.chdir(tmp_path)
    prompts, out = tmp_path / "prompts", tmp_path / "eval"
    result = invoke("train", "--cache", tiny_run["cache"], "--out", str(prompts), "--layers", "2", "--prompt-len", "3",
                    "--batch-size", "4", "--wandb")
    assert result.exit_code == 0, result.output
    result = invoke("eval", "--cache", tiny_run["cache"], "--prompts", str(prompts), "--out", str(out), "--layers", "2",
                    "--layers", "3", "--k", "3", "--vocab-epochs", "1", "--batch-size", "4", "--wandb")
    assert result.exit_code == 0, result.output

    # the printed table: the baseline on its own line, no NaN cells, every layered method at both layers
    text = result.stdout
    assert "nan" not in text.lower() and "Loading weights" not in result.output
    assert "bigram (no layer): N=0" in text
    header = next(line for line in text.splitlines() if line.split()[:2] == ["N", "layer"])
    for method in ("linear (vocab)", "linear (hidden)", "fixed prompt", "learned prompt"):
        assert method in header
    assert "(- = the method was not run at that layer)" in text  # no learned prompt at layer 3

    runs = sorted((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, runs
    files = [p for run in runs for p in run.rglob("*") if p.is_file()]
    for p in files:
        data = p.read_bytes()
        for name, secret in secrets.items():
            assert secret.encode() not in data, (name, p)
    tables = [p for p in files if p.name.endswith(".table.json")]
    assert len(tables) == 1 and "eval" in str(tables[0])
    table = json.loads(tables[0].read_text())
    assert table["columns"][:6] == ["method", "layer", "n", "metric", "k", "value"]
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    import pandas as pd

    csv = pd.read_csv(out / "results.csv")
    assert len(rows) == len(csv)
    surprisal = [r for r in rows if r["metric"] == "surprisal"]
    assert surprisal and all(r["k"] is None for r in surprisal)  # the <NA> that crashed wandb, logged as null
    assert {r["k"] for r in rows if r["metric"] == "precision"} == {1, 2, 3}
    assert {(r["method"], r["layer"]) for r in rows} >= {("bigram", -1), ("learned prompt", 2), ("fixed prompt", 3)}
    images = {p.name.split("_")[0] for p in files if p.suffix == ".png"}
    assert images == {"precision", "surprisal"}
    logs = {run: b"".join(p.read_bytes() for p in run.glob("*.wandb")) for run in runs}
    assert any(b"train/loss_L2" in log for log in logs.values())
    assert all(b"eval/results" in log or b"train/loss_L2" in log for log in logs.values())


def test_a_partial_cache_resumes_and_says_so(tiny_run, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(tiny_run["cache"], cache)
    index = json.loads((cache / "cache.json").read_text())
    index["complete"] = False  # as a killed build leaves it, with its last shard missing
    (cache / "cache.json").write_text(json.dumps(index))
    last = sorted(cache.glob("*/shard-*.safetensors"))[-1]
    last.unlink()
    result = invoke("cache", "--data", tiny_run["data"], "--out", str(cache), "--batch-size", "8")
    assert result.exit_code == 0, result.output
    assert f"Resuming the cache in {cache}" in result.stderr and last.exists()


def test_data_on_a_folder_model_interrupted_and_resumed(tiny_run, tmp_path, monkeypatch):
    import futurelens.tracing as tracing

    real, calls = tracing.greedy, []

    def interrupt_second(*args, **kwargs):
        if sum(calls) >= 8:  # the first shard (8 candidates) is done; greedy runs once per length group
            raise KeyboardInterrupt
        calls.append(len(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(tracing, "greedy", interrupt_second)
    out = tmp_path / "data"
    args = ["data", "--model", tiny_run["model"], "--out", str(out), "--n-prefixes", "12", "--no-filter-correct",
            "--min-len", "4", "--max-len", "12", "--batch-size", "4", "--shard-size", "8", "--n-max", "2"]
    result = invoke(*args)
    assert_clean_error(result, "Interrupted. Kept 1 labelled shard(s) (8 candidates)", code=130)
    assert "run the same command again to resume" in result.stderr and not out.exists()
    monkeypatch.undo()
    resumed = invoke(*args)
    assert resumed.exit_code == 0, resumed.output
    assert "Resuming the build" in resumed.output and "1 labelled shard(s) kept" in resumed.output
    assert "Wrote 12 prefixes" in resumed.stdout and str(out) in resumed.stdout
    assert "Loading weights" not in resumed.output


def test_max_request_mb_reaches_the_model_on_every_remote_capable_command(monkeypatch, tmp_path):
    """--max-request-mb sets lm.max_request_mb where the model is loaded; its default is the library's."""
    import dataclasses

    import futurelens.cli as cli
    from futurelens.models import LensModel

    assert cli.MAX_REQUEST_MB == next(f.default for f in dataclasses.fields(LensModel) if f.name == "max_request_mb")
    for name in ("demo", "data", "cache", "train", "eval", "lens", "doctor"):
        result = CliRunner().invoke(app, [name, "--help"])
        assert "--max-request-mb" in result.output, name
    bad = CliRunner().invoke(app, ["lens", "hi", "--max-request-mb", "0"])  # refused before any model loads
    assert_clean_error(bad, "max_request_mb (--max-request-mb) must be > 0")  # the library's own check
    seen = {}

    class Stop(Exception):
        pass

    def fake_load(model, remote=False, max_request_mb=cli.MAX_REQUEST_MB):
        seen.update(model=model, remote=remote, bound=max_request_mb)
        raise Stop

    monkeypatch.setattr(cli, "_load", fake_load)
    result = CliRunner().invoke(app, ["doctor", "gpt2", "--remote", "--max-request-mb", "0.5"])
    assert isinstance(result.exception, Stop) and seen == {"model": "gpt2", "remote": True, "bound": 0.5}
