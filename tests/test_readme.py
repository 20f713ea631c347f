"""The README's Python code runs as written, so it cannot drift from the code again.

Every ```python block of README.md runs, in order, in one namespace (like a notebook), on the embedded
default model, offline. A block preceded by the line ``<!-- no-test: reason -->`` is skipped (e.g. one that
needs NDIF); there are few, and this test lists them. The example in ``help(futurelens)`` runs as a doctest.
The shell lines that matter to a newcomer are checked against the CLI: every ``futurelens <command>`` shown
exists and accepts the options shown.
"""

from __future__ import annotations

import doctest
import linecache
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

import futurelens

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>\w*)\n(?P<code>.*?)\n```", re.S)
SKIPS_ALLOWED = 2  # keep skips few and explicit


def blocks(lang: str) -> list[tuple[str, bool]]:
    """``(code, skipped)`` for each fenced block of ``lang`` in README order."""
    text = README.read_text()
    return [(m["code"], m["before"].strip().startswith("<!-- no-test")) for m in BLOCK.finditer(text) if m["lang"] == lang]


def section_blocks(title: str) -> list[str]:
    """The ```python blocks under the README's ``## title``, in order."""
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return [m["code"] for m in BLOCK.finditer(text[start:end]) if m["lang"] == "python"]


def run_block(code: str, name: str, namespace: dict) -> None:
    """Run one README block as a notebook cell would: its source registered where nnsight's ``trace`` reads a
    block's source (linecache), so a ``with lm.trace(...)`` in it works, locally and remotely."""
    linecache.cache[name] = (len(code), None, code.splitlines(keepends=True), name)
    exec(compile(code, name, "exec"), namespace)


def test_readme_python_blocks_run(default_lm, monkeypatch, capsys):
    found = blocks("python")
    assert len(found) >= 2
    assert sum(skipped for _, skipped in found) <= SKIPS_ALLOWED
    # load_model() in the README is the embedded default; reuse the session's copy instead of loading it again
    real = futurelens.load_model
    monkeypatch.setattr(futurelens, "load_model",
                        lambda model=futurelens.DEFAULT_MODEL, **kw: default_lm if model == futurelens.DEFAULT_MODEL and not kw
                        else real(model, **kw))
    namespace: dict = {}
    for i, (code, skipped) in enumerate(found):
        if not skipped:
            run_block(code, f"README.md python block {i + 1}", namespace)
    printed = capsys.readouterr().out
    # what the comments claim: [1 layer, 1 prefix, d_model]; rollout gives the same phrase as patch(..., rollout=4)
    assert tuple(namespace["states"].shape) == (1, 1, default_lm.d_model)
    assert namespace["ids"].tolist() == namespace["out"].rollout_ids.tolist()
    phrase = default_lm.tokenizer.decode(namespace["out"].rollout_ids[0])
    assert printed.count(phrase) >= 2
    # "Your own experiment": what its blocks computed in their traces is what the primitives compute.
    lm, mid, ns = default_lm, namespace["mid"], namespace
    a, b = ns["a"], ns["b"]
    two = fl_patch_two(lm, ns["context"], mid, a, b)
    assert ns["top_ids"].tolist() == two.float().softmax(-1).topk(5).indices.tolist()
    assert ns["lens"].shape == (1, lm.n_layers - 2)
    steered = ns["steered"]
    assert steered.shape == (1, 3) and ns["prompt"].shape[-1] == lm.embed_dim


def test_help_example_runs_as_a_doctest(default_lm, monkeypatch):
    monkeypatch.setattr(futurelens, "load_model", lambda *a, **kw: default_lm)
    test = doctest.DocTestParser().get_doctest(futurelens.__doc__, {}, "futurelens", None, 0)
    assert len(test.examples) >= 5
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0 and runner.tries == len(test.examples)


def _cli_lines() -> list[list[str]]:
    lines = []
    for code, skipped in blocks("bash"):
        for line in code.splitlines():
            line = line.split("#")[0].strip()
            for prefix in (".venv/bin/futurelens ", "futurelens "):
                if line.startswith(prefix):
                    lines.append(shlex.split(line[len(prefix):]))
    return lines


def test_readme_cli_lines_parse(monkeypatch):
    """Each `futurelens ...` line of the README names a real command and options it takes (parsed, not run)."""
    from futurelens import cli

    seen = []
    for name in ("_data", "_cache", "_train", "_eval", "_lens"):
        monkeypatch.setattr(cli, name, lambda cfg, _name=name, **where: seen.append((_name, cfg)))
    cli.app.registered_commands.clear()
    cli._register()
    try:
        lines = _cli_lines()
        assert {args[0] for args in lines} >= {"data", "cache", "train", "eval", "lens"}
        for args in lines:
            result = CliRunner().invoke(cli.app, args)
            assert result.exit_code == 0, (args, result.output)
        assert len(seen) == len([args for args in lines if not args[0].startswith("-")])  # not --version
    finally:
        monkeypatch.undo()
        cli.app.registered_commands.clear()
        cli._register()


def test_readme_installs_nothing_that_does_not_exist():
    text = README.read_text()
    assert not re.search(r"pip install futurelens\b", text)  # no index has it
    assert "futurelens --version" in text and "pip wheel --no-deps -w dist ." in text


def fl_patch_two(lm, context, layer, a, b):
    """The last position's logits with ``a`` and ``b`` written at positions -2 and -1 of ``layer``: per-row layers
    cannot say "two positions", so two `futurelens.patch` calls in a row cannot either; hooks on the raw model can."""
    import torch

    blocks = lm.module(lm.arch.blocks)

    def write(_m, _i, out):
        hidden = (out[0] if isinstance(out, tuple) else out).clone()
        hidden[:, -2], hidden[:, -1] = a, b
        return (hidden,) + tuple(out[1:]) if isinstance(out, tuple) else hidden

    handle = blocks[layer - 1].register_forward_hook(write)
    try:
        with torch.no_grad():
            return lm.nn._module(input_ids=context).logits[:, -1]
    finally:
        handle.remove()
