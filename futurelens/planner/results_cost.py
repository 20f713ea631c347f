"""The evaluation's fixed cost that no model call shows: writing its results (the tidy table with bootstrap
intervals, results.csv, the precision and surprisal figures), matplotlib's import included.

Timed here by doing it: `results_seconds` scores a synthetic tally per (method, layer, N) of the run's
size and writes the table and both figures into a temporary folder, as `futurelens.evaluate` does at its
end. `futurelens.planner.calibrate` calls it, so eval's time here includes it (`Plan.process`).
"""

from __future__ import annotations

import time


def results_seconds(methods: int, layers: int, heads: int, rows: int = 32) -> float:
    """Seconds to tally, tidy and write ``methods x layers x heads`` scores of ``rows`` test rows each (twice: scored
    against the model and the text) with both figures, in this process (a first write: imports included)."""
    import tempfile

    start = time.perf_counter()
    import torch

    from ..artifacts.results import rows_from_scores, save_table, tidy
    from ..figure import plot_precision, plot_surprisal
    from ..metrics import Tally

    g = torch.Generator().manual_seed(0)
    out = []
    for m in range(max(methods, 1)):
        for layer in range(max(layers, 1)):
            for n in range(heads):
                for against in ("model", "text"):
                    t = Tally()
                    t.add_reduced(torch.randint(0, 9, (rows, 10), generator=g), torch.randint(0, 9, (rows,), generator=g),
                                  torch.rand(rows, generator=g), torch.rand(rows, generator=g))
                    out += rows_from_scores(f"method {m}", layer, n, t.result(), target_layer=layer, against=against,
                                            intervals=t.intervals())
    df = tidy(out)
    with tempfile.TemporaryDirectory(prefix="futurelens-plan-") as folder:
        save_table(df, f"{folder}/results.csv")
        plot_precision(df, f"{folder}/precision.png", k=1, title="plan")
        plot_surprisal(df, f"{folder}/surprisal.png", title="plan")
    return time.perf_counter() - start
