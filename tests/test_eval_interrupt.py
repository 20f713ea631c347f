"""Ctrl-C during eval says what was kept: the fitted probes a re-run reuses (it used to say "Nothing was written")."""

from __future__ import annotations

import pytest

import futurelens.evaluate as E
from futurelens.cli import _INTERRUPTED
from futurelens.evaluate import EvalConfig, evaluate, interrupted_note


def test_ctrl_c_during_eval_names_the_kept_probes_and_the_rerun_reuses_them(tiny_cache, tmp_path, monkeypatch):
    lm, _, cache = tiny_cache("llama", n=40)
    cfg = EvalConfig(cache=str(cache.path), out=str(tmp_path / "eval"), layers=[2, 3], methods=["vocab", "linear"],
                     k=3, vocab_epochs=1, batch_size=4)
    assert interrupted_note(cfg).startswith("Nothing was kept: results.csv and the figures were not written")
    calls = []
    real = E._score

    def second_layer_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(E, "_score", second_layer_interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, lm=lm, progress=False)
    note = _INTERRUPTED["eval"](cfg)  # what the CLI prints after "Interrupted."
    folder = tmp_path / "eval" / "probes"
    assert note.startswith(f"Kept in {folder}: 4 fitted probe(s) (linear-layer-2, linear-layer-3, vocab-layer-2, "
                           "vocab-layer-3)") and "MB in all" in note and "reuses the fitted probes" in note
    assert not (tmp_path / "eval" / "results.csv").exists()
    monkeypatch.setattr(E, "_score", real)
    import futurelens.methods.linear as linear

    monkeypatch.setattr(linear.VocabProbe, "fit", lambda *a, **k: pytest.fail("refitted a kept probe"))
    monkeypatch.setattr(linear.LinearApprox, "fit", lambda *a, **k: pytest.fail("refitted a kept probe"))
    df = evaluate(cfg, lm=lm, progress=False)
    assert set(df.layer) >= {2, 3}
