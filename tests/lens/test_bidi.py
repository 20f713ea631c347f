"""Right-to-left tokens on the lens page: each token's direction is isolated (``<bdi>``), so a Hebrew or Arabic
top-1 token keeps its probability after it; the font stack names faces for the scripts of a 262k vocabulary.
Measured in headless Chromium (as in test_browser), with the unisolated markup as the control."""

from __future__ import annotations

import html

import pytest

from futurelens.lens.html import FONTS, iso, render_page

from .test_browser import browser  # noqa: F401 - the fixture: one headless Chromium per module
from .test_grid import make_grid

HEBREW, ARABIC = "שלום", " مرحبا"


def _grid():
    g = make_grid(tokens=["Hello", HEBREW, " world", ARABIC], layers=range(3), k=3, R=2)
    g.top_tokens[1][1][0] = HEBREW
    g.top_tokens[2][3][0] = ARABIC
    g.phrase_tokens[1][1] = [HEBREW, " 12"]
    return g


def test_every_token_is_isolated_and_the_fonts_cover_many_scripts():
    page = render_page(_grid())
    assert f'<div class="fl-top">{iso(HEBREW)}<span>' in page and f"<bdi>{html.escape(HEBREW)}</bdi>" in page
    assert f'<div class="fl-h">{iso(ARABIC)}</div>' in page  # the column header
    assert f"<td>{iso(HEBREW)}</td>" in page  # a tooltip row
    assert f'<div class="fl-phrase">{iso(HEBREW + " 12")}</div>' in page  # the phrase, one isolate
    for face in ("Noto Sans CJK SC", "Noto Sans Arabic", "Noto Sans Hebrew", "Noto Sans Devanagari", "Noto Sans Thai",
                 "Noto Color Emoji", "Segoe UI Emoji", "Arial Unicode MS"):
        assert f'"{face}"' in FONTS
    assert FONTS in page and FONTS.startswith("ui-monospace") and FONTS.endswith("monospace")


def _boxes(page, selector):
    return page.eval_on_selector(selector, """el => { const t = el.querySelector('bdi') || el.firstChild;
        const r = document.createRange(); r.selectNodeContents(t); const a = r.getBoundingClientRect();
        const b = el.querySelector('span').getBoundingClientRect(); return [a.left, a.right, b.left, b.right]; }""")


def test_an_rtl_top_token_keeps_its_probability_after_it_in_a_browser(browser, tmp_path):
    path = tmp_path / "lens.html"
    path.write_text(render_page(_grid()), encoding="utf-8")
    # The control: the same cell without the isolate, as the page was before.
    control = tmp_path / "control.html"
    control.write_text(f'<!DOCTYPE html><html><body><div class="fl-top" style="white-space:pre">{html.escape(HEBREW)}'
                       "<span>0.42</span></div></body></html>", encoding="utf-8")
    page = browser.new_page()
    try:
        page.goto(control.as_uri())
        tok_left, tok_right, p_left, p_right = _boxes(page, ".fl-top")
        assert p_right <= tok_left + 1  # the bug: the probability lands before (left of) the RTL token
        page.goto(path.as_uri())
        for selector in ('.fl-cell[data-layer="1"][data-pos="1"] .fl-top', '.fl-cell[data-layer="2"][data-pos="3"] .fl-top'):
            tok_left, tok_right, p_left, p_right = _boxes(page, selector)
            assert p_left >= tok_right - 1, selector  # isolated: the probability follows the token
    finally:
        page.close()
