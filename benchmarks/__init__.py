"""futurelens benchmarks: one module per goal, each exposing ``run(quick: bool) -> dict``; `benchmarks/run.py` runs them all."""
