"""`futurelens plan`: shapes from the shipped configs, the FLOP counter, the disk and request arithmetic, the CLI offline.

Parameter counts are checked against a hand count from each config's published sizes; FLOPs against
``torch.utils.flop_counter`` on a model's eager forward; request counts against a count by hand of
the stage's own rule. (tests/ndif_executor/test_plan_counts.py checks requests and bytes against real
remote stages.)
"""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import pytest
import torch
import transformers
from conftest import tiny_config
from typer.testing import CliRunner

import futurelens as fl
from futurelens.cli import app
from futurelens.errors import FutureLensError
from futurelens.planner import flops as F
from futurelens.planner import requests as R
from futurelens.planner.shape import resolve, shipped


def llama_params(c: dict) -> int:
    """Llama by hand: embedding, per block q/k/v/o + gate/up/down + 2 RMSNorms, final norm, untied head."""
    d, inner, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * d_head(c)
    block = d * d * 2 + 2 * d * kv + 3 * d * inner + 2 * d
    return 2 * c["vocab_size"] * d + c["num_hidden_layers"] * block + d


def d_head(c: dict) -> int:
    return c["hidden_size"] // c["num_attention_heads"]


def gptj_params(c: dict) -> int:
    """GPT-J by hand: wte, per block q/k/v/o (no bias) + fc_in/fc_out (biased) + ln_1, ln_f, lm_head with bias."""
    d, v = c["n_embd"], c["vocab_size"]
    block = 4 * d * d + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * d
    return v * d + c["n_layer"] * block + 2 * d + v * d + v


def test_shipped_configs_count_their_parameters_by_hand():
    files = shipped()
    assert set(files) == {"EleutherAI/gpt-j-6b", "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-70B",
                          "state-spaces/mamba-2.8b-hf"}
    for name, by_hand in (("meta-llama/Llama-3.1-8B", llama_params), ("meta-llama/Llama-3.1-70B", llama_params),
                          ("EleutherAI/gpt-j-6b", gptj_params)):
        config = json.loads(files[name].read_text())
        shape = resolve(name)
        assert shape.params == by_hand(config), name
        assert shape.source == "shipped" and not shape.tied
    big = resolve("meta-llama/Llama-3.1-70B")
    assert (big.n_layers, big.d_model, big.vocab, big.params) == (80, 8192, 128256, 70_553_706_496)
    mamba = resolve("state-spaces/mamba-2.8b-hf")
    assert mamba.tied and not mamba.attention and (mamba.n_layers, mamba.d_model) == (64, 2560)


@pytest.mark.parametrize("kind", ["llama", "gptj"])
def test_forward_flops_equal_the_flop_counter(kind, tmp_path):
    config = tiny_config(kind, 1000)
    config._attn_implementation = "eager"  # attention as matmuls, which the counter sees
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(tmp_path)
    shape = resolve(str(tmp_path))
    rows, length = 3, 11
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(0, 1000, (rows, length)))
    assert rows * F.row(shape, length) == counter.get_total_flops()


def test_cache_disk_is_layers_times_width_times_rows():
    p = fl.plan(model="meta-llama/Llama-3.1-70B", n_prefixes=100_000, cache_dtype="float16", methods=[],
                calibrate=False)
    cache = p.stage("cache")
    per_row = (81 + 4) * 8192 * 2 + 8 * 4 + 16  # 81 layers and the 4 final states, fp16; targets, last token, row
    shards = math.ceil(80_000 / 512) + math.ceil(20_000 / 512)  # train and test shards of 512 rows, 4 KB header each
    assert cache["disk"] == 100_000 * per_row + 4096 * shards
    assert 81 * 8192 * 2 * 100_000 / 1e9 == pytest.approx(132.7, abs=0.1)  # the 133 GB: the layers alone


def test_greedy_requests_follow_length_groups_batches_and_the_bound():
    lm = R.bound(0.0001)  # 104 bytes: an 8-token prefix sends 64, one a request; two 4-token ones (32 each) share one
    assert len(R.greedy(lm, [[8, 8, 8, 4, 4]], n=2, batch_size=2)) == 3 + 1
    lm = R.bound(1.0)
    # Per pool, per length: ceil(count / batch) requests; 5 of length 3 at batch 2 -> 3, 1 of length 7 -> 1.
    got = R.greedy(lm, [[3, 3, 7, 3, 3, 3]], n=4, batch_size=2)
    assert len(got) == 4 and sum(s for s, _ in got) == 8 * (5 * 3 + 7) and sum(r for _, r in got) == 8 * 4 * 6


def test_training_requests_carry_the_optimizer_state():
    lm = R.bound(1.0)
    # 10 rows, batch 4: batches of 4, 4, 2 an epoch; checkpoint_every 2 -> requests of 2 batches, running on
    # across the epoch boundary as train_prompt's chunks do.
    got = R.train(lm, 10, 4, 2, prompt_len=3, embed_dim=8, d_model=8, n_max=1, dtype="float32", kl=False, checkpoint_every=2)
    prompt, state = 3 * 8 * 4, 2 * 3 * 8 * 4 + 4
    batch = lambda b: b * 8 * 4 + b * 2 * 8  # noqa: E731
    assert [r for _, r in got] == [prompt + state] * 3
    assert [s for s, _ in got] == [prompt + 2 * batch(4), prompt + state + batch(2) + batch(4),
                                   prompt + state + batch(4) + batch(2)]
    # A BOS model's prompt is read after its lead rows, which travel in the step settings of every request.
    with_lead = R.train(lm, 10, 4, 2, prompt_len=3, embed_dim=8, d_model=8, n_max=1, dtype="float32", kl=False,
                        checkpoint_every=2, lead=2)
    assert [s for s, _ in with_lead] == [s + 2 * 8 * 4 for s, _ in got] and [r for _, r in with_lead] == [r for _, r in got]
    with pytest.raises(FutureLensError, match="smaller train batch"):
        R.train(R.bound(0.0001), 10, 4, 1, 3, 8, 8, 1, "float32", kl=False)


def test_remote_70b_plan_shows_what_does_not_fit():
    p = fl.plan(model="meta-llama/Llama-3.1-70B", remote=True, n_prefixes=100_000, calibrate=False)
    cache, train = p.stage("cache"), p.stage("train")
    assert cache["requests"]["returned"] == pytest.approx(100_000 * (81 + 4) * 8192 * 4, rel=1e-9)
    assert cache["requests"]["largest"] <= 32 * 2**20
    assert train["requests"]["requests"] > 1000  # every cached state and its targets shipped, per prompt
    # the linear map ([4, d + 1, d], ~1 GB) stays on the client: scoring's requests carry its mapped rows, bounded
    scoring = p.stage("eval: linear")["requests"]
    assert "error" not in scoring and 0 < scoring["largest"] <= 32 * 2**20


CLI_RUNS = [
    ["--model", "meta-llama/Llama-3.1-70B", "--remote", "--n-prefixes", "100000"],
    ["--model", "meta-llama/Llama-3.1-8B", "--n-prefixes", "1000"],
    ["--model", "EleutherAI/gpt-j-6b", "--remote", "--n-prefixes", "1000", "--layers", "14"],
    ["--model", "state-spaces/mamba-2.8b-hf", "--n-prefixes", "1000", "--markdown"],
]


@pytest.mark.parametrize("args", CLI_RUNS, ids=lambda a: a[1])
def test_cli_plan_prints_every_stage_offline(args, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub

    def no_network(*a, **k):
        raise AssertionError("plan asked the hub for a shipped config")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    result = CliRunner().invoke(app, ["plan", *args], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for stage in ("data", "cache", "train", "eval: vocab", "eval: learned", "lens", "total"):
        assert stage in result.output
    assert ("requests" in result.output) == ("--remote" in args)


def test_plan_of_a_folder_and_of_the_embedded_default(tmp_path):
    config = tiny_config("llama", 1000)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    folder = fl.plan(model=str(tmp_path), n_prefixes=100, calibrate=False)
    assert folder.shape.source == "folder" and folder.shape.d_model == config.hidden_size
    default = fl.plan(n_prefixes=100, calibrate=False)
    assert default.shape.source == "embedded" and default.shape.n_layers == 30
    assert default.stage("train")["flops"] > 0 and math.isfinite(default.process("eval")["s"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FutureLensError, match="no config.json"):
        fl.plan(model=str(tmp_path / "empty"), calibrate=False)


README = Path(__file__).resolve().parent.parent / "README.md"
PLAN_LINE = re.compile(r"^`futurelens plan (?P<args>[^`]*)`\n\n(?P<table>(?:\|[^\n]*\n)+)", re.M)
MACHINE_COLUMNS = {"here", "RAM"}
"""Columns measured on the machine plan runs on (its matmul rate, its process's memory): not compared."""
CLIENT_ROWS = {"eval: vocab", "eval: linear", "total"}
"""Rows whose GPU times include client-side fits priced at this machine's rate."""


def _table(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.strip().splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_readme_cost_tables_are_what_plan_prints(monkeypatch):
    """Each table of the README's "Cost of a run" is the output of the command above it (machine columns aside)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = list(PLAN_LINE.finditer(README.read_text()))
    assert len(found) == 4, "the README shows GPT-J and Llama-3.1-70B, locally and on NDIF"
    assert {("--remote" in m["args"].split(), m["args"].split()[1]) for m in found} == {
        (False, "EleutherAI/gpt-j-6b"), (True, "EleutherAI/gpt-j-6b"), (False, "meta-llama/Llama-3.1-70B"),
        (True, "meta-llama/Llama-3.1-70B")}
    for m in found:
        result = CliRunner().invoke(app, ["plan", *shlex.split(m["args"])])
        assert result.exit_code == 0, result.output
        shown, printed = _table(m["table"]), _table(result.output)
        assert [r["stage"] for r in shown] == [r["stage"] for r in printed]
        for a, b in zip(shown, printed):
            gpu = {"A100", "H100", "H200"} if a["stage"] in CLIENT_ROWS else set()
            keep = set(a) - MACHINE_COLUMNS - gpu
            assert {k: a[k] for k in keep} == {k: b[k] for k in keep}, (m["args"], a["stage"])


def test_remote_training_shows_both_ways_and_picks_as_the_stage_does():
    from futurelens.train_states import choose_states, recompute_bytes_per_row, recompute_flops_per_row, ship_bytes_per_row

    kw = dict(model="meta-llama/Llama-3.1-70B", remote=True, n_prefixes=10_000, layers=[40], methods=[], calibrate=False)
    auto, ship, again = (fl.plan(**kw, states=s).stage("train") for s in ("auto", "ship", "recompute"))
    mean = (8 + 96) / 2
    picked = choose_states(ship_bytes_per_row(8192, 3, "kl", "float32"), recompute_bytes_per_row(mean, 3),
                           recompute_flops_per_row(resolve("meta-llama/Llama-3.1-70B").params, mean, 3))
    assert f"states {picked} (auto)" in auto["note"]
    assert auto["requests"] == (ship if picked == "ship" else again)["requests"]
    # Only ids travel when the server recomputes (what is left is the prompt and its AdamW state, ~1 MB a request),
    # at more server FLOPs.
    assert again["requests"]["sent"] < ship["requests"]["sent"] / 50 and again["flops"] > ship["flops"]
    assert again["requests"]["requests"] < ship["requests"]["requests"]


def test_calibration_times_the_model_itself(tmp_path, tokenizer):
    """A small local model is timed through futurelens' own calls, and this machine's column says so."""
    from conftest import build_tiny

    build_tiny("llama", tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    p = fl.plan(model=str(tmp_path), n_prefixes=50, methods=["fixed"], layers=[1], eval_batch_size=4)
    m = p.machine
    assert p.how["here"].startswith("measured")
    assert m["flop_rate"] > 0 and m["train_step_s"] > 0 and m["startup_s"] > 0 and m["fixed_rss"] > 100 * 2**20
    assert set(m["first_call_s"]) == {"forward", "greedy", "train", "eval"}
    # The data stage's time is its greedy calls at the measured cost per call plus its FLOPs at the measured rate.
    data = p.stage("data")
    assert data["here_s"] >= m["greedy_call_s"] * 1  # at least one call
    # Scoring is timed per batch at the run's batch size: the model's own distribution every batch decodes, and the
    # fixed prompt's share, per batch of the run's test rows at 4 a batch (one layer).
    assert set(m["score_call_s"]) == {"base", "decode", "fixed", "learned"} and m["eval_batch"] == 4
    assert m["score_call_s"]["base"] > 0 and m["score_call_s"]["fixed"] > 0
    fixed = p.stage("eval: fixed")
    batches = -(-len(fl.planner.stages.rows(p.cfg).test) // 4)
    assert fixed["here_s"] == pytest.approx(batches * (m["score_call_s"]["fixed"] + m["score_call_s"]["base"]))
    # The lens: a small grid timed on the model; what it took beyond plan's own figure for that grid is charged per
    # cell of the page planned.
    from futurelens.planner.calibrate import LENS_TEXT
    from futurelens.planner.stages import lens_stage
    from futurelens.planner.text import counts

    assert m["lens_s"] > 0 and m["lens_cell_s"] >= 0
    grid = lens_stage(p.cfg, p.shape, None, counts(p.cfg.model, p.shape.source, LENS_TEXT, p.cfg.fixed_prompt))
    assert m["lens_cell_s"] == pytest.approx(
        max(m["lens_s"] - grid.calls * m["forward_call_s"] - grid.flops / m["flop_rate"], 0) / grid.cells)
