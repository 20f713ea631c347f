"""LensGrid without a browser: validation, escaping, text layout, round trips, saving, wandb."""

from __future__ import annotations

import json
import os
import pickle
import re

import numpy as np
import pytest

from futurelens.errors import FutureLensError
from futurelens.lens import LensGrid
from futurelens.lens import html as lens_html

EVIL_SCRIPT = "<script>window.__pwned=1</script>"
EVIL_IMG = '<img src=x onerror="window.__pwned=2">'
MARTY = ["Marty", " Mc", "Fly", " from"]


def make_grid(tokens=MARTY, layers=range(4), k: int = 3, R: int = 4, **meta) -> LensGrid:
    """A deterministic grid; cell (layer 14, pos 3) reads " Back to the Future" when present,
    and cell (first layer, pos 0) carries script/img payloads in its top-k and phrase."""
    rng = np.random.default_rng(0)
    layers, tokens = list(layers), list(tokens)
    L, T = len(layers), len(tokens)
    top_probs = -np.sort(-rng.dirichlet(np.ones(k + 1), size=(L, T))[..., :k], axis=-1)
    phrase_probs = rng.uniform(0.0, 1.0, (L, T, R))
    top = [[[f" w{a}_{j}_{r}" for r in range(k)] for j in range(T)] for a in layers]
    phrase = [[[f" p{a}_{j}_{r}" for r in range(R)] for j in range(T)] for a in layers]
    if 14 in layers and T > 3 and R == 4 and k >= 3:
        i = layers.index(14)
        top[i][3][:3] = [" the", " Hill", " Back"]
        top_probs[i, 3, :3] = [0.412, 0.208, 0.117]
        phrase[i][3] = [" Back", " to", " the", " Future"]
        phrase_probs[i, 3] = [0.62, 0.91, 0.97, 0.88]
    if k >= 2 and R >= 2:
        top[0][0][:2] = [EVIL_SCRIPT.replace("1", "3"), EVIL_IMG.replace("2", "4")]
        phrase[0][0][:2] = [EVIL_IMG.replace("2", "5"), EVIL_SCRIPT.replace("1", "6")]
    return LensGrid(tokens, layers, top, top_probs, phrase, phrase_probs, **meta)


# ---------------------------------------------------------------------- validation


def test_valid_grid_normalises_inputs():
    g = make_grid(layers=np.arange(4), k=3, R=2)
    assert g.shape == (4, 4, 3, 2)
    assert g.layers == [0, 1, 2, 3] and all(type(x) is int for x in g.layers)
    assert g.top_probs.dtype == np.float64
    assert pickle.loads(pickle.dumps(g)).to_dict() == g.to_dict()


def test_rollout_may_be_empty():
    g = make_grid(R=0)
    assert g.shape[3] == 0
    assert "fl-cell" in g.to_html()


def _args(**change):
    g = make_grid(k=3, R=4)
    fields = ("tokens", "layers", "top_tokens", "top_probs", "phrase_tokens", "phrase_probs")
    return {**{f: getattr(g, f) for f in fields}, **change}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"top_probs": np.full((4, 4), 0.1)}, r"top_probs has shape \(4, 4\) but expected \(4, 4, n\)"),
        ({"top_probs": np.full((3, 4, 3), 0.1)}, r"top_probs has shape \(3, 4, 3\)"),
        ({"phrase_probs": np.full((4, 5, 4), 0.1)}, r"phrase_probs has shape \(4, 5, 4\) but expected \(4, 4, n\)"),
        ({"top_probs": np.full((4, 4, 2), 0.1)}, r"top_tokens\[0\]\[0\] has 3 tokens but expected 2 \(top_probs.shape\[2\]\)"),
        ({"phrase_tokens": [[["a"] * 4] * 4] * 3}, r"phrase_tokens has 3 rows but expected L=4"),
        ({"phrase_tokens": [[["a"] * 4] * 3] * 4}, r"phrase_tokens\[0\] has 3 entries but expected T=4"),
        ({"phrase_tokens": [[" Back to the"] * 4] * 4}, r"phrase_tokens\[0\]\[0\] is a str"),
        ({"tokens": [1, 2, 3, 4]}, r"tokens must hold str"),
        ({"layers": [0, 1, 1, 2]}, r"layers has repeats"),
        ({"top_probs": np.full((4, 4, 0), 0.1), "top_tokens": [[[]] * 4] * 4}, r"k=0"),
        ({"top_probs": np.full((4, 4, 3), 1.5)}, r"top_probs must hold probabilities in \[0, 1\]"),
        ({"phrase_probs": np.full((4, 4, 4), np.nan)}, r"phrase_probs must hold probabilities"),
        ({"tokens": [], "top_tokens": [], "top_probs": np.zeros((4, 0, 3))}, r"at least one layer and one token"),
    ],
)
def test_shape_errors_name_field_and_shapes(change, message):
    with pytest.raises(FutureLensError, match=message) as err:
        LensGrid(**_args(**change))
    assert isinstance(err.value, ValueError)


# ---------------------------------------------------------------------- html


def test_visible_whitespace():
    v = lens_html.visible
    assert v(" from") == "·from"
    assert v("a b ") == "a b·"
    assert v("\n") == "⏎" and v("\t\r") == "⇥␍" and v("  ") == "··"
    assert v("") == "∅" and v("\x00") == "\\x00" and v("\ud800") == "\ufffd"


def test_html_escapes_every_token():
    tokens = ["Hi", EVIL_SCRIPT, EVIL_IMG, '"q" & \'a\'', "\n"]
    page = make_grid(tokens=tokens, title="<b>t</b>", model="m&m", method='"lp"').to_html()
    for raw in (EVIL_SCRIPT, EVIL_IMG, "<script>window.__pwned=3", "onerror=\"window.__pwned=4", "<b>t</b>", "m&m"):
        assert raw not in page
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;window.__pwned=2&quot;&gt;" in page
    assert "&quot;q&quot; &amp; &#x27;a&#x27;" in page
    # Our one inline script is the only one, and nothing is fetched from anywhere.
    assert page.count("<script") == 1 and "<img" not in page
    assert not re.search(r"<[^>]*\b(src|href)\s*=|https?://|@import", page)
    assert ">⏎<" in page


def test_cells_have_stable_hooks():
    g = make_grid(layers=[2, 14, 20])
    page = g.to_html()
    assert page.count('class="fl-cell"') == 3 * 4
    assert page.count('class="fl-tip"') == 3 * 4
    assert '<td class="fl-cell" data-layer="14" data-pos="3"' in page
    # Highest layer first, like the paper.
    assert page.index('data-layer="20"') < page.index('data-layer="14"') < page.index('data-layer="2"')
    assert "·Back to the Future" in page and "·Hill" in page and "0.412" in page


def test_notebook_fragment_is_scoped():
    frag = make_grid()._repr_html_()
    assert "<html" not in frag and "<body" not in frag and " id=" not in frag
    css = re.search(r"<style>(.*?)</style>", frag, re.DOTALL).group(1)
    selectors = [s.strip() for rule in re.findall(r"([^{}]+)\{", css) for s in rule.split(",")]
    assert selectors and all(s.startswith(".fl-lens") for s in selectors), selectors


# ---------------------------------------------------------------------- text


def test_to_text_layout():
    g = make_grid(tokens=["The", " cat\n"], layers=[0, 5], k=1, R=2)
    g.phrase_tokens[1][0] = [" sat", " down on the mat"]
    assert g.to_text(width=8).splitlines() == [
        "layer │ The      │ ·cat⏎",
        "──────┼──────────┼─────────",
        "    5 │ ·sat do… │ ·p5_1_0…",
        "    0 │ ·p0_0_0… │ ·p0_1_0…",
    ]


def test_to_text_rows_and_title():
    g = make_grid(layers=range(32), title="Marty")
    lines = g.to_text().splitlines()
    assert lines[0] == "Marty" and len(lines) == 3 + 32
    assert lines[3].lstrip().startswith("31 │") and lines[-1].lstrip().startswith("0 │")
    assert "·Back to th…" in lines[3 + 31 - 14]
    assert str(g) == g.to_text()
    with pytest.raises(FutureLensError, match="width"):
        g.to_text(width=1)


# ---------------------------------------------------------------------- round trips


def test_dict_round_trip_through_json():
    g = make_grid(tokens=MARTY + [EVIL_SCRIPT, "\n"], layers=[0, 7, 14], title="t", model="m", method="learned prompt")
    d = json.loads(json.dumps(g.to_dict()))
    h = LensGrid.from_dict(d)
    assert h.to_dict() == g.to_dict()
    np.testing.assert_array_equal(h.top_probs, g.top_probs)
    assert h.to_html() == g.to_html()


def test_from_dict_refuses_other_formats():
    d = make_grid().to_dict()
    with pytest.raises(FutureLensError, match="format"):
        LensGrid.from_dict({**d, "format": 99})
    with pytest.raises(FutureLensError, match="lacks"):
        LensGrid.from_dict({k: v for k, v in d.items() if k != "top_probs"})


def test_save_html_is_atomic(tmp_path, monkeypatch):
    g = make_grid()
    out = g.save_html(tmp_path / "sub" / "lens.html")
    assert out == tmp_path / "sub" / "lens.html"
    assert out.read_text(encoding="utf-8") == g.to_html()
    assert os.listdir(out.parent) == ["lens.html"]

    # A failed write leaves the old page and no temp file.
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        make_grid(title="new").save_html(out)
    assert out.read_text(encoding="utf-8") == g.to_html()
    assert os.listdir(out.parent) == ["lens.html"]


def test_to_wandb_html(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb = pytest.importorskip("wandb")
    g = make_grid()
    h = g.to_wandb()
    assert isinstance(h, wandb.Html)
    assert h.html == g.to_html()  # passed through untouched: no stylesheet link injected
