"""Where an architecture keeps its pieces — the only module that knows architectures.

Every decoder-only causal LM has the same parts Future Lens needs: a token
embedding, a stack of blocks, and a head that turns the residual stream into
logits (a final norm, sometimes a projection, the unembedding, sometimes a
scale or a soft cap on the logits). They live under different names
(``transformer.h`` in GPT-J, ``model.layers`` in Llama, ``backbone.layers`` in
Mamba ...), and some blocks return a tuple whose first element is the hidden
state while others return the tensor itself. `detect` finds the paths from the
module tree and the head's transform from the config; `probe` runs one forward
to answer what only a forward can (tuple or tensor, how block 0 receives the
residual stream, the residual width) and, on real weights, `check_head`
verifies that the head futurelens applies reproduces the model's own logits.
`Arch` is the answer; a user who knows better passes their own
(``load_model(..., arch=Arch(...))`` or a dict of the fields to override).

The package: `paths` (`Arch`, `detect`: the module paths and the head's transform), `forward` (`probe` and the
checks on what one forward shows). THE RULE: no other module of futurelens names an architecture or a module path
of one; a method, the trainer or the lens that needs to know asks `Arch` (or the spec `LensModel.spec` builds
from it), and the server reads those paths only through `futurelens.server.access`.
"""

from .forward import Probe, check_head, check_probe, check_supported, probe, probe_block_output
from .paths import Arch, BlockOutput, detect, logit_transform, validate

__all__ = ["Arch", "BlockOutput", "Probe", "check_head", "check_probe", "check_supported", "detect", "logit_transform",
           "probe", "probe_block_output", "validate"]
