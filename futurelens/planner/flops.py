"""FLOPs of a model's forward, counted from its shape: the one analytic counter (benchmarks/flops.py checks it
against ``torch.utils.flop_counter`` on the embedded default, benchmarks/paper_scale.py prices GPT-J with it).

A token multiplies through every parameter but the embedding lookup once (2 FLOPs a parameter: multiply and
add), the head included; attention adds, per block, ``4 * width * context`` for the token (``q·k`` and the
weighted sum of ``v`` over the context it sees). A backward through frozen weights costs about one forward more
(the activations' gradients) and a weight gradient another: `BACKWARD` is the factor used for a training step.
"""

from __future__ import annotations

from .shape import Shape

BACKWARD = 3.0
"""forward + backward / forward: 3 with weight gradients, nearer 2 for frozen weights (an upper bound here)."""


def per_token(shape: Shape, context: float = 0.0, head: bool = True) -> float:
    """FLOPs of one token's forward seeing ``context`` tokens (itself included); ``head``: through the unembedding."""
    dense = 2 * (shape.matmul_params - (0 if head else shape.vocab * shape.d_model))
    attention = 4 * shape.n_layers * shape.attn_width * context if shape.attention else 0
    return dense + attention


def row(shape: Shape, length: float, head: bool = True) -> float:
    """FLOPs of one forward over a row of ``length`` tokens (every position computes full attention, as SDPA does
    without a causal skip): ``length * dense + 4 * n_layers * width * length^2``."""
    return length * per_token(shape, 0.0, head) + (4 * shape.n_layers * shape.attn_width * length**2
                                                   if shape.attention else 0)


def decode(shape: Shape, prefix: float, steps: int) -> float:
    """FLOPs of ``steps`` one-token steps with a KV cache after a ``prefix``-token prefill (the prefill excluded)."""
    return sum(per_token(shape, prefix + i + 1) for i in range(steps))


def analytic(params: int, vocab: int, d_model: int, n_layers: int, rows: int, length: int) -> int:
    """The closed form benchmarks/flops.py compares with the counted FLOPs: 2 x non-embedding params x tokens, the
    head's 2 x vocab x d per token, and 4 x layers x d x length^2 per row of attention."""
    return 2 * params * rows * length + 2 * vocab * d_model * rows * length + 4 * n_layers * d_model * length**2 * rows
