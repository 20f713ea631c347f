"""A `Plan` as a table: rich for the terminal, Markdown for a README (the same cells)."""

from __future__ import annotations

from typing import Any

from .hardware import GPUS


def _n(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".strip()


def _bytes(x: float) -> str:
    if not x:
        return "0"
    for scale, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.0f} B"


def _time(s: float) -> str:
    if s < 60:
        return f"{s:.3g} s"
    if s < 3600:
        return f"{s / 60:.3g} min"
    if s < 86400 * 2:
        return f"{s / 3600:.3g} h"
    return f"{s / 86400:.3g} d"


def header(plan: Any) -> list[str]:
    cols = ["stage", "FLOPs", "here"] + [g.split()[0] for g in GPUS] + ["RAM", "GPU mem", "disk"]
    if plan.cfg.remote:
        cols += ["requests", "sent", "returned"]
    return cols + ["note"]


def cells(plan: Any) -> list[list[str]]:
    """One row of strings per stage, then a total row."""
    out = []
    for r in plan.rows:
        row = [r["name"], _n(r["flops"] + r["client_flops"]) if r["flops"] or r["client_flops"] else "-",
               _time(r["here_s"])] + [_time(r["gpu_s"][g]) for g in GPUS]
        row += [_bytes(max(plan.machine.get("load_peak_rss", 0), plan.machine["fixed_rss"] + r["ram"])),
                _bytes(r["gpu_mem"]) if r["gpu_mem"] else "-",
                _bytes(r["disk"])]
        if plan.cfg.remote:
            q = r["requests"]
            if q is None:
                row += ["-", "-", "-"]
            elif "error" in q:
                row += ["over bound", "-", "-"]
            else:
                mark = "" if r["exact"] else "~"
                row += [f"{mark}{q['requests']:,}", _bytes(q["sent"]), _bytes(q["returned"])]
        out.append(row + [r["note"]])
    total = ["total", _n(sum(r["flops"] + r["client_flops"] for r in plan.rows)),
             _time(sum(r["here_s"] for r in plan.rows) + plan.machine["startup_s"] * 5)]
    total += [_time(sum(r["gpu_s"][g] for r in plan.rows)) for g in GPUS]
    total += [_bytes(plan.machine["fixed_rss"] + max(r["ram"] for r in plan.rows)),
              _bytes(max(r["gpu_mem"] for r in plan.rows)), _bytes(sum(r["disk"] for r in plan.rows))]
    if plan.cfg.remote:
        done = [r["requests"] for r in plan.rows if r["requests"] and "error" not in r["requests"]]
        total += [f"{sum(q['requests'] for q in done):,}", _bytes(sum(q["sent"] for q in done)),
                  _bytes(sum(q["returned"] for q in done))]
    return out + [total + ["peak RAM / GPU: the largest stage's"]]


def footnotes(plan: Any) -> list[str]:
    s, cfg = plan.shape, plan.cfg
    lines = [
        f"{s.name} ({s.source} config): {s.params / 1e9:.3g}B parameters, {s.n_layers} blocks, d {s.d_model}, "
        f"vocabulary {s.vocab:,}. {cfg.n_prefixes:,} prefixes of {cfg.min_len}-{cfg.max_len} tokens, N = 0..{cfg.n_max}"
        + (", on NDIF" if cfg.remote else ", local") + ".",
        f"here: {plan.how['here']}. Each stage's process adds {plan.machine['startup_s']:.1f} s of start-up (in the total)"
        + (f" and its first model call's one-off {max(plan.machine['first_call_s'].values()):.1f} s at most"
           if plan.machine.get("first_call_s") else "") + ".",
        f"A100 / H100 / H200: {plan.how['gpus']}.",
        f"RAM: peak of the stage's process on this machine: {plan.how['ram']}. GPU mem: weights + working set of a GPU run.",
    ]
    ram = plan.machine.get("ram", 0)
    over = [r["name"] for r in plan.rows if ram and plan.machine["fixed_rss"] + r["ram"] > ram]
    if over:
        lines.append(f"Over this machine's {ram / 2**30:.0f} GiB of RAM: {', '.join(over)}.")
    if cfg.remote:
        lines.append(f"requests: {plan.how['requests']}; ~ marks counts from the length distribution, not the run's "
                     f"own rows (--data). Bytes are tensors and token ids each way under --max-request-mb "
                     f"{cfg.max_request_mb:g} (a request's code, ~120 KB, is not counted); NDIF's queue is not timed.")
        for r in plan.rows:
            if r["requests"] and "error" in r["requests"]:
                lines.append(f"{r['name']}: {r['requests']['error']}")
    return lines


def markdown(plan: Any, command: str = "") -> str:
    head = header(plan)
    lines = ([f"`{command}`", ""] if command else []) + ["| " + " | ".join(head) + " |",
                                                        "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells(plan)]
    return "\n".join(lines + [""] + [f"- {line}" for line in footnotes(plan)]) + "\n"


def show(plan: Any) -> None:
    """Print the table with rich (wide columns fold rather than cut)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"futurelens plan: {plan.shape.name}", show_lines=False)
    for i, name in enumerate(header(plan)):
        table.add_column(name, justify="left" if i == 0 or name == "note" else "right", overflow="fold")
    for row in cells(plan):
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:  # piped or captured: do not fold the table into 80 columns
        console = Console(width=max(console.width, 200))
    console.print(table)
    for line in footnotes(plan):
        console.print(line, highlight=False)
