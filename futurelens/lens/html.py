"""Render a `LensGrid` as one self-contained HTML string (inline CSS and JS, nothing fetched).

Layout: a table whose rows are layers (highest first, like the paper) and whose columns
are the input tokens. The header row and the layer column are sticky, so a 30-layer,
20-token grid stays readable while it scrolls. Each cell shows the rolled-out phrase and
the logit-lens top-1 token; its background is the probability of the phrase's first
token (or the top-1 probability when there is no rollout). Hovering a cell shows its
`.fl-tip` element: the top-k alternatives and the phrase tokens with probabilities.

Safety: every piece of token text goes through `esc` (``html.escape(..., quote=True)``)
and only ever lands in element *text*, never in an attribute or a script; attributes
carry numbers only. The inline script never reads token text.

Text direction: every token (and each rolled-out phrase) sits in its own ``<bdi>``, so a right-to-left token
(Hebrew, Arabic) keeps its own direction without reordering what is around it: the probability after a top-1
token stays after it. Fonts: `FONTS` names faces for the scripts a 262k vocabulary (Gemma's) holds, tried in turn
for each glyph.

Scoping: all CSS rules sit under ``.fl-lens`` and nothing uses an ``id``, so several
grids can share one notebook page without clashing or restyling the notebook.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .grid import LensGrid

# Characters that would be invisible or break a one-line cell, and what shows instead.
_SHOWN = {"\n": "⏎", "\r": "␍", "\t": "⇥"}

# rgb of the colour scale; the alpha channel carries the probability.
_RGB = "37, 99, 235"


def visible(text: str) -> str:
    """Make whitespace and control characters visible; returns unescaped text.

    Leading/trailing spaces become ``·`` (so ``" from"`` reads ``·from``), newlines ``⏎``,
    tabs ``⇥``, other control characters ``\\xNN``, lone surrogates ``�``; an empty
    string becomes ``∅``. Inner spaces stay spaces so phrases read naturally.
    """
    if text == "":
        return "∅"
    core = text.strip(" ")
    if core == "":
        return "·" * len(text)
    lead = len(text) - len(text.lstrip(" "))
    trail = len(text) - len(text.rstrip(" "))
    out = []
    for c in core:
        o = ord(c)
        if c in _SHOWN:
            out.append(_SHOWN[c])
        elif o < 0x20 or 0x7F <= o < 0xA0:
            out.append(f"\\x{o:02x}")
        elif 0xD800 <= o <= 0xDFFF:  # half a pair from a bad decode: not encodable as UTF-8
            out.append("\ufffd")
        else:
            out.append(c)
    return "·" * lead + "".join(out) + "·" * trail


def esc(text: str) -> str:
    """Visible, then HTML-escaped (quotes too): the only way token text enters the page."""
    return html.escape(visible(text), quote=True)


def iso(text: str) -> str:
    """`esc`, isolated in a ``<bdi>`` (its direction its own: a right-to-left token cannot reorder its neighbours)."""
    return f"<bdi>{esc(text)}</bdi>"


FONTS = ('ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono","Noto Sans Mono","Liberation Mono",'
         '"Noto Sans","DejaVu Sans","Noto Sans CJK SC","Noto Sans CJK JP","Noto Sans CJK KR","Noto Sans CJK TC",'
         '"Source Han Sans","Microsoft YaHei","PingFang SC","Hiragino Sans","Malgun Gothic",'
         '"Noto Sans Arabic","Noto Naskh Arabic","Noto Sans Hebrew","Noto Sans Devanagari","Noto Sans Bengali",'
         '"Noto Sans Tamil","Noto Sans Telugu","Noto Sans Thai","Noto Sans Georgian","Noto Sans Armenian",'
         '"Noto Sans Ethiopic","Noto Sans Khmer","Noto Sans Myanmar","Noto Sans Sinhala","Noto Sans Symbols",'
         '"Noto Sans Symbols 2","Noto Sans Math","Segoe UI","Segoe UI Historic","Segoe UI Symbol","Nirmala UI",'
         '"Leelawadee UI","Ebrima","Arial Unicode MS","Noto Color Emoji","Apple Color Emoji","Segoe UI Emoji",'
         'system-ui,monospace')
"""The page's font stack: monospace first (Latin reads in columns), then faces covering CJK, Arabic, Hebrew, the
Indic scripts, Thai, Georgian, Armenian, Ethiopic, Khmer, Myanmar, Sinhala, symbols, mathematics and emoji (Noto on
Linux, the system faces on macOS and Windows); the browser picks, per glyph, the first that has it."""


def _p(p: float, digits: int = 2) -> str:
    return f"{float(p):.{digits}f}"


def _bg(p: float) -> str:
    """Inline style for a cell of probability ``p``: deeper blue, then white text, as p grows."""
    alpha = 0.06 + 0.84 * float(p)
    ink = "color:#fff;" if p >= 0.55 else ""
    return f'style="background:rgba({_RGB},{alpha:.3f});{ink}"'


def _rows(tokens: list[str], probs) -> str:
    """Tooltip table rows: token, a bar for its probability, the probability."""
    # No classes here (CSS picks columns by position): these rows are most of the page's bytes.
    return "".join(
        f'<tr><td>{iso(t)}</td><td><i style="width:{100 * float(p):.0f}%"></i></td><td>{_p(p, 3)}</td></tr>'
        for t, p in zip(tokens, probs)
    )


def _cell(g: LensGrid, i: int, j: int) -> str:
    """One ``<td class="fl-cell">``: phrase, logit-lens top-1, and its hidden tooltip."""
    layer = g.layers[i]
    top, top_p = g.top_tokens[i][j], g.top_probs[i, j]
    phrase, phrase_p = g.phrase_tokens[i][j], g.phrase_probs[i, j]
    colour_p = float(phrase_p[0]) if len(phrase) else float(top_p[0])
    text = iso("".join(phrase)) if phrase else "&nbsp;"
    fitted = ""
    for name, entry in g.probes.items():  # fitted methods' top-1 guess N = 0..n_max ahead (names are ours, escaped)
        if layer in entry["layers"]:
            r = entry["layers"].index(layer)
            labels = [f"N={n} {t}" for n, t in enumerate(entry["tokens"][r][j])]
            fitted += f'<div class="fl-ts">{html.escape(name, quote=True)}</div><table>{_rows(labels, entry["probs"][r, j])}</table>'
    tip = (
        f'<div class="fl-tip" role="tooltip">'
        f'<div class="fl-th">layer {layer} · token {j} <b>{iso(g.tokens[j])}</b></div>'
        f'<div class="fl-ts">logit lens top-{len(top)}</div><table>{_rows(top, top_p)}</table>'
        + (f'<div class="fl-ts">rollout</div><table>{_rows(phrase, phrase_p)}</table>' if phrase else "")
        + fitted
        + "</div>"
    )
    return (
        f'<td class="fl-cell" data-layer="{layer}" data-pos="{j}" data-p="{colour_p:.4f}" {_bg(colour_p)}>'
        f'<div class="fl-phrase">{text}</div>'
        f'<div class="fl-top">{iso(top[0])}<span>{_p(top_p[0])}</span></div>{tip}</td>'
    )


_CSS = f"""
.fl-lens{{font:12px/1.3 {FONTS};color:#111;text-align:left;direction:ltr}}
.fl-lens bdi{{unicode-bidi:isolate}}
.fl-lens .fl-meta{{font-family:system-ui,sans-serif;margin:0 0 6px}}
.fl-lens .fl-meta h3{{font-size:15px;margin:0 0 2px}}
.fl-lens .fl-meta span{{color:#555;margin-right:14px}}
.fl-lens .fl-legend{{display:flex;align-items:center;gap:6px;font-family:system-ui,sans-serif;color:#444;margin:0 0 6px}}
.fl-lens .fl-scale{{width:140px;height:10px;border:1px solid #ccc;
  background:linear-gradient(to right,rgba({_RGB},.06),rgba({_RGB},.9))}}
.fl-lens .fl-scroll{{overflow:auto;max-width:100%;max-height:80vh;border:1px solid #ddd}}
.fl-lens table.fl-grid{{border-collapse:separate;border-spacing:0;margin:0}}
.fl-lens .fl-grid th,.fl-lens .fl-grid td{{border:0;border-right:1px solid #e4e4e4;border-bottom:1px solid #e4e4e4;
  padding:2px 5px;vertical-align:top;background-clip:padding-box}}
.fl-lens .fl-grid thead th{{position:sticky;top:0;z-index:2;background:#f4f4f6;font-weight:600;
  border-bottom:1px solid #bbb}}
.fl-lens .fl-h{{white-space:pre;max-width:14em;overflow:hidden;text-overflow:ellipsis}}
.fl-lens .fl-grid th small{{display:block;color:#888;font-weight:400;font-size:10px}}
.fl-lens .fl-grid th.fl-layer{{position:sticky;left:0;z-index:1;background:#f4f4f6;text-align:right;
  color:#444;border-right:1px solid #bbb}}
.fl-lens .fl-grid thead th.fl-corner{{left:0;z-index:3;text-align:right;border-right:1px solid #bbb}}
.fl-lens .fl-cell{{min-width:6em;cursor:default}}
.fl-lens .fl-cell:hover{{outline:2px solid #f59e0b;outline-offset:-2px}}
.fl-lens .fl-phrase,.fl-lens .fl-top{{white-space:pre;max-width:14em;overflow:hidden;text-overflow:ellipsis}}
.fl-lens .fl-top{{font-size:10px;opacity:.7}}
.fl-lens .fl-top span{{margin-left:.6em;font-style:italic}}
.fl-lens .fl-tip{{display:none;position:fixed;z-index:1000;pointer-events:none;min-width:13em;max-width:28em;
  background:#fff;color:#111;border:1px solid #999;border-radius:4px;padding:5px 7px;
  box-shadow:0 3px 10px rgba(0,0,0,.25);font-size:11px}}
.fl-lens .fl-cell:hover .fl-tip{{display:block}}
.fl-lens .fl-tip table{{border-collapse:collapse;width:100%}}
.fl-lens .fl-tip td{{padding:0 3px;border:0;background:none}}
.fl-lens .fl-th{{font-family:system-ui,sans-serif;margin-bottom:3px}}
.fl-lens .fl-th b{{white-space:pre;font-family:{FONTS}}}
.fl-lens .fl-ts{{color:#666;font-family:system-ui,sans-serif;font-size:10px;margin-top:3px;border-bottom:1px solid #eee}}
.fl-lens .fl-tip td:nth-child(1){{white-space:pre}}
.fl-lens .fl-tip td:nth-child(2){{width:60px}}
.fl-lens .fl-tip td:nth-child(3){{text-align:right;color:#333}}
.fl-lens .fl-tip i{{display:block;height:7px;background:rgba({_RGB},.75)}}
"""

# Moves a cell's tooltip next to the cell and inside the window (the CSS alone shows it
# where the cell's content ends). `place` corrects for a transformed ancestor (which
# makes `position:fixed` relative to it instead of the window). Installed once per page
# however many grids are shown; it touches geometry only, never text. Without scripts
# (an untrusted notebook) the CSS tooltip still works.
_JS = """
(function(){if(window.__flLensTip)return;window.__flLensTip=1;
function place(t,x,y){t.style.left=x+'px';t.style.top=y+'px';var b=t.getBoundingClientRect();
if(b.left!==x||b.top!==y){t.style.left=(2*x-b.left)+'px';t.style.top=(2*y-b.top)+'px';}}
document.addEventListener('mouseover',function(e){
var c=e.target&&e.target.closest&&e.target.closest('.fl-lens .fl-cell');if(!c)return;
var t=c.querySelector('.fl-tip');if(!t||!t.offsetWidth)return;
var r=c.getBoundingClientRect(),w=t.offsetWidth,h=t.offsetHeight,W=window.innerWidth,H=window.innerHeight;
var x=r.right+4,y=r.top;if(x+w>W)x=Math.max(0,r.left-4-w);if(y+h>H)y=Math.max(0,H-h-2);place(t,x,y);});})();
"""


def render_fragment(g: LensGrid) -> str:
    """The grid as an embeddable fragment (for notebooks and wandb): style, div, script."""
    meta = "".join(
        f"<span>{label}: {html.escape(value, quote=True)}</span>"
        for label, value in (("model", g.model), ("method", g.method), ("prompts", g.source))
        if value
    )
    title = f"<h3>{html.escape(g.title, quote=True)}</h3>" if g.title else ""
    colour_by = "first rollout token" if g.phrase_probs.shape[2] else "logit-lens top-1"
    head = "".join(
        f'<th class="fl-tok" data-pos="{j}"><div class="fl-h">{iso(t)}</div><small>{j}</small></th>' for j, t in enumerate(g.tokens)
    )
    body = "".join(
        f'<tr><th class="fl-layer" data-layer="{layer}">{layer}</th>'
        + "".join(_cell(g, i, j) for j in range(len(g.tokens)))
        + "</tr>"
        for i, layer in reversed(list(enumerate(g.layers)))  # highest layer on top, as in the paper
    )
    return (
        f"<style>{_CSS}</style>"
        f'<div class="fl-lens">'
        f'<div class="fl-meta">{title}{meta}</div>'
        f'<div class="fl-legend">p({colour_by}) <span>0</span><span class="fl-scale"></span><span>1</span>'
        f"<span>· cell: rollout phrase, then logit-lens top-1 · hover a cell for top-k</span></div>"
        f'<div class="fl-scroll"><table class="fl-grid"><thead><tr><th class="fl-corner">layer</th>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div></div>"
        f"<script>{_JS}</script>"
    )


def render_page(g: LensGrid) -> str:
    """A standalone HTML document around `render_fragment`."""
    title = html.escape(g.title or "Future Lens", quote=True)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>body{{margin:12px;background:#fff}}</style></head>"
        f"<body>{render_fragment(g)}</body></html>\n"
    )
