"""`futurelens doctor --remote --model MODEL`: every remote operation against the live service, as a pass/fail table.

Each check runs one futurelens operation on tiny inputs and counts the NDIF requests it
made and the bytes they carried (nnsight's own payloads). A failure keeps its
one-line reason; nothing stops the other checks. Run it with a key, on a small model
NDIF serves, before a long remote job.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .errors import FutureLensError

TEXTS = ["The Eiffel Tower is in the city of", "def fibonacci(n):", "Marty McFly from"]


@dataclass
class DoctorConfig:
    """Settings of `futurelens doctor`."""

    model: str = "openai-community/gpt2"
    """Hub id of a model NDIF serves (a small one keeps the checks fast)."""
    only: list[str] = field(default_factory=list)
    """Run only these checks (names as in the table); empty = all."""


NOT_REMOTE = ("futurelens doctor checks the remote operations on NDIF: run it as `futurelens doctor MODEL --remote` "
              "(with an NDIF API key set), or pass a model loaded with remote=True.")


def check_config(cfg: DoctorConfig, remote: bool) -> None:
    """Refuse settings the checks cannot run with, before a model loads: they need ``remote`` (``--remote``)."""
    if not remote:
        raise FutureLensError(NOT_REMOTE)


@dataclass
class Check:
    name: str
    ok: bool
    requests: int
    sent: int
    seconds: float
    detail: str = ""


@contextmanager
def counting_requests() -> Iterator[list[int]]:
    """Sizes of the request payloads nnsight serializes while inside (remote and remote='local' alike)."""
    from nnsight.schema.request import RequestModel

    sizes: list[int] = []
    original = RequestModel.__dict__["serialize"]

    def serialize(cls: Any, tracer: Any, compress: bool = False) -> bytes:
        blob = original.__func__(cls, tracer, compress)
        sizes.append(len(blob))
        return blob

    RequestModel.serialize = classmethod(serialize)
    try:
        yield sizes
    finally:
        RequestModel.serialize = original


def _checks(lm: Any) -> dict[str, Callable[[], str]]:
    import torch

    import futurelens as fl
    from .lens import lens_grid
    from .dispatch import run_job
    from .server import jobs

    rows = [lm.tokenizer(t)["input_ids"] for t in TEXTS]
    mid = max(1, lm.n_layers // 2)
    found: dict[str, Any] = {}

    def cache() -> str:
        states, final = fl.cache_ahead(lm, rows, [[1, 2]] * len(rows), layers=[0, mid])
        found["state"], found["final"] = states[1], final
        return f"states {tuple(states.shape)}"

    def finite(x: Any) -> Any:
        if not torch.isfinite(x.float()).all():
            raise FutureLensError("non-finite values came back")
        return x

    def soft() -> Any:
        return torch.randn(4, lm.d_model, generator=torch.Generator().manual_seed(0)) * 0.02

    def batch() -> dict:
        n = len(rows)
        return {"states": found["state"], "target": torch.tensor([[1, 2, 3]] * n), "final": found["final"]}

    def train() -> str:
        settings = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0, "target_n": 1, "loss": "kl", "grad_accum": 1}
        step = [(0, 0, True, batch())]
        prompt, _, _, _, losses = run_job(lm, jobs.train_steps, soft(), None, None, [], step, settings, mid)
        finite(prompt)
        return f"loss {losses[0][2]:.3g}"

    return {
        "cache_ahead": cache,
        "token_states": lambda: f"{tuple(finite(fl.token_states(lm, rows[0], layers=[mid])).shape)}",
        "decode": lambda: f"{tuple(finite(fl.decode(lm, found['final'][:, 0])).shape)}",
        "greedy": lambda: repr(lm.tokenizer.decode(fl.greedy(lm, rows[:1], 3)[0])),
        "patch (logits)": lambda: f"{tuple(finite(fl.patch(lm, found['state'], mid, target=rows[2]).logits).shape)}",
        "patch (top-k, rollout)": lambda: repr(lm.tokenizer.decode(fl.patch(lm, found["state"], mid, target=rows[2], top_k=3, rollout=2).rollout_ids[0])),
        "patch (soft prompt, per-row layers)": lambda: f"{tuple(fl.patch(lm, found['state'], [1, mid, 1], soft_prompt=soft(), top_k=2).top_ids.shape)}",
        "rollout (shared prefix)": lambda: f"{tuple(fl.rollout(lm, found['state'], mid, soft_prompt=soft(), n=2)[0].shape)}",
        "cache shard": lambda: f"{tuple(run_job(lm, jobs.cache_shard, rows, [[1, 2]] * len(rows), [mid], 8, torch.float32, None)[0].shape)}",
        "train (one step)": train,
        "evaluate (fixed prompt)": lambda: f"{len(run_job(lm, jobs.score_job, [('fixed', 'fixed prompt', rows[2])], [batch()], mid, 3, [{}]))} scores",
        "lens grid": lambda: f"{len(lens_grid(lm, TEXTS[2], layers=[0, mid], rollout=2, top_k=2).layers)} rows",
    }


def run(lm: Any, only: list[str] | None = None, progress: Callable[[Check], None] | None = None) -> list[Check]:
    """Run the checks on ``lm`` (remote) in order; each one's result, whether it passed or not."""
    from .secrets import redact

    if not lm.remote:
        raise FutureLensError(NOT_REMOTE)
    checks = _checks(lm)
    unknown = set(only or []) - set(checks)
    if unknown:
        raise FutureLensError(f"Unknown check(s) {sorted(unknown)}: choose from {', '.join(checks)}.")
    results = []
    for name, check in checks.items():
        if only and name not in only and name != "cache_ahead":  # the others need its states
            continue
        with counting_requests() as sizes:
            start = time.perf_counter()
            try:
                detail, ok = check(), True
            except Exception as exc:  # noqa: BLE001 - the table reports every failure and goes on
                detail, ok = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__), False
        results.append(Check(name, ok, len(sizes), sum(sizes), time.perf_counter() - start, detail))
        if progress is not None:
            progress(results[-1])
    return results


def table(results: list[Check], model: str) -> Any:
    """A rich table of the results."""
    from rich.table import Table

    out = Table(title=f"futurelens doctor: {model} on NDIF")
    for column in ("check", "result", "requests", "sent", "seconds", "detail"):
        out.add_column(column, justify="right" if column in ("requests", "sent", "seconds") else "left")
    for r in results:
        out.add_row(r.name, "[green]pass[/]" if r.ok else "[red]FAIL[/]", str(r.requests), f"{r.sent / 1024:.1f} KB",
                    f"{r.seconds:.1f}", r.detail[:120])
    return out
