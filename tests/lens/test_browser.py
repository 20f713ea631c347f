"""The lens page in a real headless Chromium: it renders, hover shows alternatives, tokens never run.

Uses Debian's ``/usr/bin/chromium`` (``make browser`` installs it) driven by playwright;
never playwright's own browser download. Without chromium or playwright the tests skip,
unless ``FUTURELENS_REQUIRE_BROWSER=1`` (set by ``make test``), which turns that into a failure.
"""

from __future__ import annotations

import os

import pytest

from .test_grid import EVIL_IMG, EVIL_SCRIPT, make_grid

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1100, "height": 700}

# 20 tokens, as a tokenizer would decode them, with script/img payloads among them.
TOKENS = [
    "Marty", " Mc", "Fly", " from", EVIL_SCRIPT, EVIL_IMG, "\n", " went", " back", " to",
    " 1955", " in", " a", " De", "Lorean", " &", " met", ' "', "Doc", '"',
]
LAYERS = list(range(32))


def _unavailable(reason: str) -> None:
    if os.environ.get("FUTURELENS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; FUTURELENS_REQUIRE_BROWSER=1 makes this a failure", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        _unavailable(f"no {CHROMIUM}: run `make browser` (apt-get install chromium) to run the browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def grid():
    return make_grid(tokens=TOKENS, layers=LAYERS, k=5, R=4, title="Marty McFly", model="SmolLM2-135M",
                     method="learned prompt (layer-matched)")


@pytest.fixture
def page(browser, grid, tmp_path):
    """The saved page opened from file://; records script errors and every request made."""
    path = grid.save_html(tmp_path / "lens.html")
    pg = browser.new_page(viewport=VIEWPORT)
    pg.errors, pg.requests = [], []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("request", lambda r: pg.requests.append(r.url))
    pg.goto(path.as_uri())
    yield pg
    assert pg.errors == [], "script errors on the page"
    assert all(u.startswith("file://") for u in pg.requests), f"page fetched {pg.requests}"
    pg.close()


def _expect():
    from playwright.sync_api import expect

    return expect


def _inside_viewport(box) -> bool:
    return box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= VIEWPORT["width"] + 1 \
        and box["y"] + box["height"] <= VIEWPORT["height"] + 1


def test_grid_renders(page):
    expect = _expect()
    cells = page.locator(".fl-lens .fl-cell")
    assert cells.count() == len(LAYERS) * len(TOKENS)
    laid_out = page.eval_on_selector_all(
        ".fl-cell",
        "els => els.filter(e => { const r = e.getBoundingClientRect();"
        " return r.width > 0 && r.height > 0 && getComputedStyle(e).visibility === 'visible'; }).length",
    )
    assert laid_out == len(LAYERS) * len(TOKENS)
    expect(cells.first).to_be_visible()
    # Highest layer on top; labels and headers are on screen.
    labels = page.locator("th.fl-layer")
    assert labels.all_inner_texts() == [str(x) for x in reversed(LAYERS)]
    expect(labels.first).to_be_visible()
    expect(page.locator("th.fl-layer[data-layer='0']")).to_be_attached()
    headers = page.locator("th.fl-tok .fl-h")
    assert headers.count() == len(TOKENS)
    assert headers.nth(3).inner_text() == "·from" and headers.nth(6).inner_text() == "⏎"
    expect(headers.nth(0)).to_be_visible()
    phrase = page.locator('.fl-cell[data-layer="14"][data-pos="3"] .fl-phrase')
    assert phrase.inner_text() == "·Back to the Future"


def test_header_and_layer_column_stick(page):
    scroller = page.locator(".fl-scroll")
    scroller.evaluate("e => { e.scrollLeft = e.scrollWidth; e.scrollTop = e.scrollHeight; }")
    assert scroller.evaluate("e => e.scrollLeft > 0 && e.scrollTop > 0"), "the grid should overflow this viewport"
    box = scroller.bounding_box()
    head = page.locator("th.fl-tok").last.bounding_box()
    label = page.locator("th.fl-layer[data-layer='0']").bounding_box()
    assert abs(head["y"] - box["y"]) <= 2  # the header row stayed at the top
    assert abs(label["x"] - box["x"]) <= 2  # the layer column stayed at the left


def test_hover_shows_alternatives(page, tmp_path):
    expect = _expect()
    cell = page.locator('.fl-cell[data-layer="14"][data-pos="3"]')
    tip = cell.locator(".fl-tip")
    expect(tip).to_be_hidden()
    cell.hover()
    expect(tip).to_be_visible()
    text = tip.inner_text()
    for want in ("layer 14", "·from", "·the", "0.412", "·Hill", "0.208", "·Back", "0.117", "·Future", "0.880"):
        assert want in text, (want, text)
    assert _inside_viewport(tip.bounding_box())
    shot = page.screenshot(path=str(tmp_path / "hover.png"))
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 5000

    # A cell at the far right/bottom: its tip replaces the first and is kept inside the window.
    corner = page.locator(f'.fl-cell[data-layer="0"][data-pos="{len(TOKENS) - 1}"]')
    corner.hover()
    expect(corner.locator(".fl-tip")).to_be_visible()
    expect(tip).to_be_hidden()
    assert _inside_viewport(corner.locator(".fl-tip").bounding_box())


def test_token_text_never_runs(page):
    expect = _expect()
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('img').length") == 0
    assert page.evaluate("document.querySelectorAll('script').length") == 1  # our own
    body = page.inner_text("body")
    assert EVIL_SCRIPT in body and EVIL_IMG in body  # shown literally (the token headers)
    # The payloads inside a cell's top-k and phrase show literally on hover, and still do not run.
    cell = page.locator('.fl-cell[data-layer="0"][data-pos="0"]')
    cell.hover()
    expect(cell.locator(".fl-tip")).to_be_visible()
    tip = cell.locator(".fl-tip").inner_text()
    for raw in (EVIL_SCRIPT.replace("1", "3"), EVIL_IMG.replace("2", "4"), EVIL_IMG.replace("2", "5")):
        assert raw in tip
    assert page.evaluate("window.__pwned") is None


def test_screenshot(page, tmp_path):
    path = tmp_path / "lens.png"
    page.screenshot(path=str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_two_grids_in_one_notebook_page(browser, grid, tmp_path):
    """Two `_repr_html_` fragments, as Jupyter would show them: no clashes, no leaking styles."""
    expect = _expect()
    other = make_grid(tokens=["Hello", " world"], layers=[3, 9], k=2, R=2)
    (tmp_path / "nb.html").write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body style="font-family:serif">'
        f'<p class="out">out 1</p>{grid._repr_html_()}<p class="out">out 2</p>'
        # A transformed ancestor (some notebook front ends have one) re-anchors position:fixed.
        f'<div style="transform:translateX(0);margin:40px">{other._repr_html_()}</div></body></html>',
        encoding="utf-8",
    )
    pg = browser.new_page(viewport=VIEWPORT)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto((tmp_path / "nb.html").as_uri())
    lenses = pg.locator(".fl-lens")
    assert lenses.count() == 2
    assert lenses.nth(0).locator(".fl-cell").count() == len(LAYERS) * len(TOKENS)
    assert lenses.nth(1).locator(".fl-cell").count() == 4
    cell = lenses.nth(1).locator('.fl-cell[data-layer="9"][data-pos="1"]')
    cell.scroll_into_view_if_needed()
    cell.hover()
    tip = cell.locator(".fl-tip")
    expect(tip).to_be_visible()
    assert "·w9_1_0" in tip.inner_text()
    cell_box, tip_box = cell.bounding_box(), tip.bounding_box()
    assert abs(tip_box["x"] - (cell_box["x"] + cell_box["width"] + 4)) <= 2  # right beside its cell
    assert abs(tip_box["y"] - cell_box["y"]) <= 2 or _inside_viewport(tip_box)
    assert pg.locator(".fl-tip:visible").count() == 1
    # The grid's CSS is scoped: the notebook's own text keeps its font.
    assert "serif" in pg.locator("p.out").first.evaluate("e => getComputedStyle(e).fontFamily")
    assert "monospace" not in pg.locator("p.out").first.evaluate("e => getComputedStyle(e).fontFamily")
    assert errors == []
    pg.close()
