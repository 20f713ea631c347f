"""The tidy results table and the paper's figure: validation, CSV/parquet round trip, panels and baseline line."""

from __future__ import annotations

import math

import numpy as np
import pytest

from futurelens.errors import FutureLensError
from futurelens.artifacts.results import load_table, rows_from_scores, save_table, tidy
from futurelens.figure import plot_precision, plot_surprisal, precision_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _results(n_max=3, layers=(1, 4, 8, 12)):
    """A small table shaped like the paper's: two layered methods per N, the bigram baseline at every N."""
    rows = []
    for n in range(n_max + 1):
        for i, layer in enumerate(layers):
            rows += rows_from_scores("learned prompt", layer, n,
                                     {"n": 100, "precision@1": 0.2 + 0.05 * i, "precision@2": 0.3 + 0.05 * i,
                                      "surprisal": 5.0 - i})
            rows += rows_from_scores("fixed prompt", layer, n, {"precision@1": 0.1 + 0.02 * i, "surprisal": 9.0})
        rows += rows_from_scores("bigram", -1, n, {"precision@1": 0.34 - 0.07 * n, "surprisal": 12.0})
    return tidy(rows)


def test_rows_from_scores_and_tidy():
    rows = rows_from_scores("bigram", -1, 0, {"n": 5, "precision@1": 0.2, "precision@10": 0.5, "surprisal": 7.5})
    assert [(r["metric"], r["k"]) for r in rows] == [("precision", 1), ("precision", 10), ("surprisal", None)]
    df = tidy(rows)
    assert list(df.columns) == ["method", "layer", "n", "metric", "k", "value", "target_layer", "against"]
    assert df["k"].tolist()[:2] == [1, 10] and df["k"].isna().tolist() == [False, False, True]


@pytest.mark.parametrize(
    "row, match",
    [
        ({"method": "a", "layer": 1, "n": 0, "metric": "precision", "value": 0.5}, "columns"),
        ({"method": "a", "layer": 1, "n": 0, "metric": "accuracy", "k": 1, "value": 0.5}, "Unknown metric"),
        ({"method": "a", "layer": 1, "n": 0, "metric": "precision", "k": 0, "value": 0.5}, "k >= 1"),
        ({"method": "a", "layer": 1, "n": 0, "metric": "precision", "k": 1, "value": 1.5}, r"\[0, 1\]"),
        ({"method": "a", "layer": -2, "n": 0, "metric": "surprisal", "k": 0, "value": 3.0}, "layer must be"),
    ],
)
def test_tidy_refuses_bad_rows(row, match):
    with pytest.raises(FutureLensError, match=match):
        tidy([row])


def test_tidy_refuses_duplicates():
    row = {"method": "a", "layer": 1, "n": 0, "metric": "surprisal", "k": math.nan, "value": 3.0}
    with pytest.raises(FutureLensError, match="Two rows"):
        tidy([row, dict(row, k=0)])  # NaN and 0 both mean "no k"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_save_table_round_trip(tmp_path, suffix):
    df = _results()
    path = save_table(df, tmp_path / "out" / f"results{suffix}")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # written atomically, no temp file left
    back = load_table(path)
    assert back[["method", "layer", "n", "metric"]].equals(df[["method", "layer", "n", "metric"]])
    assert back["k"].isna().equals(df["k"].isna())
    assert np.allclose(back["value"], df["value"])
    with pytest.raises(FutureLensError, match=".csv or .parquet"):
        save_table(df, tmp_path / "results.xlsx")


def test_precision_figure_panels_lines_and_baseline():
    fig = precision_figure(_results(n_max=3), k=1, title="toy")
    axes = fig.axes
    assert len(axes) == 4
    assert [ax.get_title() for ax in axes] == ["N=0", "N=1", "N=2", "N=3"]
    assert all(ax.get_xlabel() == "layer" for ax in axes)
    assert axes[0].get_ylabel() == "precision@1" and axes[0].get_ylim() == (0.0, 1.0)
    for n, ax in enumerate(axes):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"learned prompt", "fixed prompt", "bigram"}
        learned = lines["learned prompt"]
        assert list(learned.get_xdata()) == [1, 4, 8, 12]
        assert np.allclose(learned.get_ydata(), [0.2, 0.25, 0.3, 0.35])
        assert learned.get_marker() == "o"
        # The baseline is a horizontal dashed line at its value, spanning the panel (axes coordinates 0..1).
        base = lines["bigram"]
        assert base.get_linestyle() == "--"
        assert list(base.get_xdata()) == [0, 1]
        assert np.allclose(base.get_ydata(), [0.34 - 0.07 * n] * 2)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["learned prompt", "fixed prompt", "bigram"]
    # precision@2 picks the other rows; the baseline has no @2 row, so it is absent there
    fig2 = precision_figure(_results(n_max=1), k=2)
    assert {line.get_label() for line in fig2.axes[0].get_lines()} == {"learned prompt"}
    assert fig2.axes[0].get_ylabel() == "precision@2"


def test_plot_files_are_pngs(tmp_path):
    df = _results(n_max=2)
    path = plot_precision(df, tmp_path / "figs" / "precision.png", title="toy")
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
    path = plot_surprisal(df, tmp_path / "figs" / "surprisal.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in path.parent.iterdir()) == ["precision.png", "surprisal.png"]


def test_missing_rows_give_a_clear_error():
    with pytest.raises(FutureLensError, match="k=5"):
        precision_figure(_results(n_max=0), k=5)


def test_one_layer_figure_has_integer_ticks():
    many = tidy([row for layer in range(20) for row in rows_from_scores("probe", layer, 0, {"precision@1": 0.01 * layer})])
    for fig in [precision_figure(_results(n_max=1, layers=(14,))), precision_figure(_results(n_max=1, layers=(2, 3))),
                precision_figure(many)]:
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert list(precision_figure(_results(n_max=0, layers=(14,))).axes[0].get_xticks()) == [14]


def test_precision_table_has_the_baseline_on_its_own_line_and_no_nan():
    from futurelens.figure import precision_table

    df = _results(n_max=1, layers=(2, 14))
    df = df[~((df.method == "learned prompt") & (df.layer == 14))]  # e.g. no prompt trained there
    text = precision_table(df)
    lines = text.splitlines()
    assert lines[0] == "precision@1 of the token N ahead (N=0 is the next token), against the model's own continuation:"
    assert lines[1] == "  bigram (no layer): N=0 0.340  N=1 0.270"
    assert lines[2].split() == ["N", "layer", "learned", "prompt", "fixed", "prompt"]
    assert [line.split() for line in lines[3:7]] == [
        ["0", "2", "0.200", "0.100"], ["0", "14", "-", "0.120"], ["1", "2", "0.200", "0.100"], ["1", "14", "-", "0.120"]
    ]
    assert lines[-1] == "  (- = the method was not run at that layer)"
    assert "nan" not in text.lower() and "-1" not in text
    assert "precision@2" in precision_table(df, k=2)
    with pytest.raises(FutureLensError, match="No precision@7"):
        precision_table(df, k=7)


def test_old_tables_read_as_the_papers_setting_and_target_rows_stay_apart(tmp_path):
    old = [{"method": "fixed prompt", "layer": 2, "n": 1, "metric": "precision", "k": 1, "value": 0.3}]
    df = tidy(old)
    assert df["target_layer"].tolist() == [2] and df["against"].tolist() == ["model"]
    rows = (rows_from_scores("fixed prompt", 2, 1, {"precision@1": 0.3})
            + rows_from_scores("fixed prompt", 2, 1, {"precision@1": 0.1}, target_layer=4)
            + rows_from_scores("fixed prompt", 2, 1, {"precision@1": 0.2}, against="text"))
    df = tidy(rows)  # three distinct rows: not duplicates
    assert len(df) == 3
    with pytest.raises(FutureLensError, match="against"):
        tidy(rows_from_scores("fixed prompt", 2, 1, {"precision@1": 0.3}, against="oracle"))


def test_paper_figure_uses_own_layer_rows_and_the_grid_figure_the_rest(tmp_path):
    from futurelens.figure import paper_rows, plot_target_layers, precision_table, target_layer_figure

    rows = []
    for src in (1, 3):
        for dst in (1, 3, 5):
            rows += rows_from_scores("learned prompt", src, 1, {"precision@1": 0.1 * src + 0.01 * dst}, target_layer=dst)
            rows += rows_from_scores("learned prompt", src, 1, {"precision@1": 0.05}, target_layer=dst, against="text")
    df = tidy(rows)
    paper = paper_rows(df)
    assert sorted(zip(paper.layer, paper.target_layer)) == [(1, 1), (3, 3)]
    fig = precision_figure(df)
    xs, ys = fig.axes[0].lines[0].get_data()
    assert list(xs) == [1, 3] and np.allclose(ys, [0.11, 0.33])  # only L' = L on the paper's figure
    fig_text = precision_figure(df, against="text")
    assert np.allclose(fig_text.axes[0].lines[0].get_data()[1], [0.05, 0.05])
    grid = target_layer_figure(df)
    image = grid.axes[0].images[0].get_array()
    assert image.shape == (2, 3) and np.isclose(image[1, 2], 0.35)  # row L=3, column L'=5
    assert plot_target_layers(df, tmp_path / "t.png").read_bytes().startswith(PNG_MAGIC)
    text = precision_table(df)
    assert "source layer L (rows) x target layer L' (columns)" in text and "0.350" in text
    with pytest.raises(FutureLensError, match="target-layers"):
        target_layer_figure(tidy(rows_from_scores("fixed prompt", 2, 1, {"precision@1": 0.3})))
