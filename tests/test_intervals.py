"""Uncertainty of every score: a bootstrap 95% interval over test prefixes (`Tally.intervals`), in results.csv
(``ci_low``, ``ci_high``, ``n_prefixes``), as bands in the figures, and the count in the printed table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from futurelens.evaluate import EvalConfig, evaluate
from futurelens.artifacts.results import rows_from_scores, tidy
from futurelens.figure import precision_figure, precision_table
from futurelens.metrics import Tally


def _tally(hits: np.ndarray, surprisal: np.ndarray | None = None) -> Tally:
    """A tally whose row i has its target at rank hits[i] of 3 (3 = not in the top 3)."""
    n = len(hits)
    target = torch.zeros(n, dtype=torch.long)
    top = torch.full((n, 3), 9, dtype=torch.long)
    for i, r in enumerate(hits):
        if r < 3:
            top[i, r] = 0
    t = Tally()
    half = n // 2  # two batches: the interval is of the rows, however they were streamed
    s = None if surprisal is None else torch.tensor(surprisal)
    t.add_reduced(top[:half], target[:half], None if s is None else s[:half])
    t.add_reduced(top[half:], target[half:], None if s is None else s[half:])
    return t


def _numpy_bootstrap(x: np.ndarray, rng: np.random.Generator, b: int = 4000) -> tuple[float, float]:
    means = x[rng.integers(0, len(x), (b, len(x)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def test_intervals_agree_with_an_independent_bootstrap_and_the_normal_approximation():
    rng = np.random.default_rng(0)
    hits = rng.choice(4, size=300, p=[0.3, 0.15, 0.1, 0.45])
    surprisal = rng.gamma(2.0, 2.0, size=300)
    t = _tally(hits, surprisal)
    got = t.intervals(resamples=4000)
    for k in (1, 2, 3):
        x = (hits < k).astype(float)
        lo, hi = _numpy_bootstrap(x, rng)
        assert got[f"precision@{k}"][0] == pytest.approx(lo, abs=0.015)
        assert got[f"precision@{k}"][1] == pytest.approx(hi, abs=0.015)
        half = 1.96 * np.sqrt(x.mean() * (1 - x.mean()) / len(x))
        assert got[f"precision@{k}"][1] - got[f"precision@{k}"][0] == pytest.approx(2 * half, rel=0.12)
        assert got[f"precision@{k}"][0] < x.mean() < got[f"precision@{k}"][1]
    lo, hi = _numpy_bootstrap(surprisal, rng)
    assert got["surprisal"] == pytest.approx((lo, hi), abs=0.06)
    assert t.intervals() == t.intervals()  # seeded
    assert set(got) == {"precision@1", "precision@2", "precision@3", "surprisal"}


def test_intervals_cover_the_true_precision_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    trials = 300
    for _ in range(trials):
        hits = np.where(rng.random(120) < 0.3, 0, 3)
        lo, hi = _tally(hits).intervals(resamples=400)["precision@1"]
        covered += lo <= 0.3 <= hi
    assert 0.90 <= covered / trials <= 0.99


def test_a_sure_score_has_a_point_interval_and_bad_settings_say_so():
    t = _tally(np.zeros(50, dtype=int))
    assert t.intervals()["precision@1"] == (1.0, 1.0)
    with pytest.raises(Exception, match="0 < level < 1"):
        t.intervals(level=1.5)


def test_rows_table_and_figure_carry_the_intervals_and_the_count():
    t = _tally(np.random.default_rng(2).choice(4, size=80), np.ones(80))
    rows = rows_from_scores("fixed prompt", 3, 1, t.result(), intervals=t.intervals())
    rows += rows_from_scores("fixed prompt", 5, 1, t.result(), intervals=t.intervals())
    df = tidy(rows)
    assert {"ci_low", "ci_high", "n_prefixes"} <= set(df.columns) and (df["n_prefixes"] == 80).all()
    assert ((df["ci_low"] <= df["value"]) & (df["value"] <= df["ci_high"])).all()
    text = precision_table(df)
    assert "on 80 test prefixes" in text and "bootstrap 95% intervals" in text
    fig = precision_figure(df)
    assert fig.axes[0].collections  # the band drawn under the line
    bare = tidy(rows_from_scores("fixed prompt", 3, 1, t.result()))  # a table from before intervals still draws
    assert not precision_figure(bare).axes[0].collections and "test prefixes" not in precision_table(bare)


def test_results_csv_has_an_interval_for_every_precision_and_surprisal(tiny_cache, tmp_path):
    lm, _, cache = tiny_cache("llama", n=40)
    cfg = EvalConfig(cache=str(cache.path), prompts=str(tmp_path / "none"), out=str(tmp_path / "eval"), layers=[2],
                     k=3, batch_size=4, methods=["ngram", "fixed"], fixed_prompt="Tell me about")
    evaluate(cfg, lm=lm, progress=False)
    import pandas as pd

    df = pd.read_csv(tmp_path / "eval" / "results.csv")
    scored = df[df.metric.isin(["precision", "surprisal"])]
    assert len(scored) and scored[["ci_low", "ci_high"]].notna().all().all()
    assert ((scored.ci_low <= scored.value + 1e-12) & (scored.value <= scored.ci_high + 1e-12)).all()
    assert (df.n_prefixes == cache.size("test")).all()
    wide = scored[(scored.metric == "precision") & (scored.value > 0) & (scored.value < 1)]
    assert (wide.ci_high > wide.ci_low).all()  # a real spread, not a point, where the score is neither 0 nor 1
