"""Optional Weights & Biases logging, with secrets kept out of every config and message.

`Tracker` is a no-op when disabled, so training and evaluation call it unconditionally.
It works offline (``WANDB_MODE=offline``): runs are written under ``./wandb`` and can be
synced later.
"""

from __future__ import annotations

import os
from typing import Any


class Tracker:
    """``with Tracker(enabled, project, config) as t: t.log({...}); t.table(...); t.image(...)``."""

    def __init__(self, enabled: bool, project: str = "futurelens", config: dict | None = None, job: str = "") -> None:
        self.enabled = enabled
        self.project = project
        self.config = config or {}
        self.job = job
        self.run = None

    def __enter__(self) -> Tracker:
        if self.enabled:
            import wandb

            from .secrets import install_redaction, safe_config

            install_redaction()
            # wandb reads WANDB_DIR / WANDB_MODE once per process; read them again for every run.
            self.run = wandb.init(project=self.project, job_type=self.job or None, config=safe_config(self.config),
                                  reinit="finish_previous", dir=os.environ.get("WANDB_DIR") or None,
                                  mode=os.environ.get("WANDB_MODE") or None)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if exc[0] else 0)
            self.run = None

    def log(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(values)

    def table(self, key: str, df: Any) -> None:
        """Log a DataFrame as a wandb Table; missing cells (``<NA>``, NaN, NaT) become empty (None)."""
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(dataframe=wandb_frame(df))})

    def image(self, key: str, path: str) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(str(path))})

    def html(self, key: str, html: Any) -> None:
        if self.run is not None:
            self.run.log({key: html})


def wandb_frame(df: Any) -> Any:
    """``df`` with every missing cell as ``None`` and numpy scalars as Python ones, which wandb.Table accepts.

    wandb infers one type per column and refuses pandas' ``<NA>`` (the tidy table's ``k`` is a nullable
    ``Int64``, missing for surprisal rows); an object column of ints and ``None`` is ``Optional[Number]``.
    """
    import pandas as pd

    out = df.astype(object)
    return out.where(pd.notna(df), None)
