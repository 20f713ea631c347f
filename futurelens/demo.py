"""The main job on the embedded default: what each layer's state at each token anticipates.

For every prefix of a text and every chosen layer, the state is patched into the
paper's fixed prompt and the model rolls out a few tokens — a fixed-prompt lens.
All tokens of one layer are decoded as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAPER_PROMPT = 'Hello! Could you please tell me more about "'


@dataclass
class DemoConfig:
    """Settings of `futurelens demo`."""

    text: str = "The Python interpreter reads a program and executes the statements"
    """Text whose tokens are read, layer by layer."""
    model: str = "smollm2-135m"
    """Hub id, local folder, or the embedded default 'smollm2-135m'."""
    layers: list[int] = field(default_factory=lambda: [2, 8, 14, 20, 26, 30])
    """Layers to read (0 = embeddings, n = last block)."""
    rollout: int = 3
    """Tokens rolled out from each state."""
    prompt: str = PAPER_PROMPT
    """Fixed prompt whose last position receives the state."""


def fixed_prompt_grid(lm, text: str, layers: list[int], prompt: str, rollout: int, progress=None):
    """``grid[layer][token] = rolled-out text`` and the text's tokens, one batched patch per layer."""
    import futurelens as fl

    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    prefixes = [ids[: i + 1] for i in range(len(ids))]
    states = fl.cache(lm, prefixes, layers=layers)  # [L, T, d]
    target = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    grid = {}
    for i, layer in enumerate(layers):
        out = fl.patch(lm, states[i], layer, target=[target], rollout=rollout)
        grid[layer] = [lm.tokenizer.decode(row) for row in out.rollout_ids]
        if progress is not None:
            progress()
    return [lm.tokenizer.decode([t]) for t in ids], grid


def run(config: DemoConfig) -> dict:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    import futurelens as fl

    console = Console()
    with console.status(f"Loading {config.model} ..."):
        lm = fl.load_model(config.model)
    with Progress(console=console) as bar:
        task = bar.add_task("Patching states into the fixed prompt", total=len(config.layers))
        tokens, grid = fixed_prompt_grid(
            lm, config.text, config.layers, config.prompt, config.rollout, progress=lambda: bar.advance(task)
        )
    table = Table(title=f"What {lm.name}'s state at each token anticipates (fixed prompt, {config.rollout} tokens)")
    table.add_column("token")
    for layer in config.layers:
        table.add_column(f"L{layer}")
    for t, tok in enumerate(tokens):
        table.add_row(repr(tok), *(repr(grid[layer][t]) for layer in config.layers))
    console.print(table)
    return {"tokens": tokens, "grid": grid}
