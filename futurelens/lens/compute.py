"""The lens computation: every (layer, token) cell of a text in a handful of batched forwards.

For a text of ``T`` tokens and ``L`` layers:

1. one forward reads the states of all ``L`` layers at all ``T`` positions (`token_states`);
2. the logit lens decodes each state with the model's own final norm + unembedding (`decode`);
3. each state is patched into a prompt (a learned soft prompt, per layer or shared, or the
   paper's fixed text prompt) at its last position and the model rolls out a greedy phrase.
   All ``L × T`` cells go through `patch` together, rows of different layers in one batch,
   ``chunk_size`` rows at a time: one forward per rollout step per chunk.

The authors' demo ran one ``generate`` per cell; here a 10-token text over 31 layers is
one chunk (a few seconds on a 2-core CPU, ~23x faster). The work is one job of `futurelens.server.jobs`, so remotely the grid is one request.

`lens` is the one call for a notebook: it finds the prompts (the ones shipped with futurelens for the
embedded default when none are given; a folder, a file, a hub id, the authors' bare-tensor file) and returns
the `LensGrid`, whose header says where its prompts came from. With ``layer=``, one prompt receives every
row's state at that layer, as the authors' demo does (their GPT-J prompt sits at layer 14, the output of
block 13, and each layer's state goes there); that mode reads the states, decodes them and rolls out in
three requests remotely (`token_states`, `decode`, `rollout`) instead of one.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, Union

import numpy as np

from ..errors import FutureLensError
from ..methods import PAPER_PROMPT
from ..dispatch import ids_bytes, payload_bytes, run_job, spans, tensor_bytes, top_bytes
from ..tokens import encode, prepended
from ..server import jobs
from .grid import LensGrid
from .prompts import Prompts, check_prompt, for_lens, per_layer, read

if TYPE_CHECKING:
    import torch

    from ..models import LensModel

Progress = Union[Callable[[int], Any], bool, None]


# --------------------------------------------------------------------------- the grid


def lens_grid(
    lm: "LensModel",
    text: "str | Sequence[int] | torch.Tensor",
    prompts: Prompts = None,
    *,
    layers: int | Sequence[int] | None = None,
    rollout: int = 4,
    top_k: int = 5,
    fixed_prompt: str = PAPER_PROMPT,
    chunk_size: int = 512,
    progress: Progress = None,
    patch_layer: int | None = None,
    source: str | None = None,
    target_layer: int | None = None,
) -> LensGrid:
    """The Future Lens grid of ``text``: per (layer, token) the logit-lens top-k and a rolled-out phrase.

    Args:
        lm: the model.
        text: a string, or token ids ``[T]`` / ``[1, T]`` used as given. A string is tokenized
            as ``lm.tokenizer(text)`` does by default: a BOS the tokenizer prepends (because the
            model expects it) stays in the context, but gets no column; the columns are exactly
            the text's own tokens.
        prompts: where each state is patched:
            a ``[P, d_model]`` soft prompt for every layer; ``{layer: [P, d_model]}`` layer-matched
            soft prompts; a checkpoint file / folder / hub id (`load_prompts`, checked against ``lm.name``);
            or ``None`` for the fixed text prompt ``fixed_prompt``. Soft prompts receive the state at
            their last vector, the fixed prompt at its last token. (`lens` picks shipped prompts when
            none are given; this function does not.)
        layers: rows of the grid; default all ``0..n_layers`` (with a dict: all layers that have a prompt).
        rollout: greedy tokens per phrase (0 = logit lens only).
        top_k: logit-lens tokens per cell.
        fixed_prompt: the text prompt used when ``prompts`` is None.
        chunk_size: cells per batched forward (and per logit-lens decode).
        progress: ``True`` for a tqdm bar, or a callable given the number of cells finished
            after each patched chunk.
        patch_layer: patch every row's state into this one layer (with one soft prompt, or the fixed
            prompt), as the authors' demo does; default each row's own layer.
        source: where the prompts came from, for the page header (default: what `load_prompts` recorded).
        target_layer: write each row's state at this layer (Patchscopes' target layer L') instead of its own:
            with learned prompts, the ones trained for (row layer, L') (`futurelens train --target-layers`);
            else the fixed prompt. Still one request remotely.

    Returns:
        `LensGrid` with ``L = len(layers)`` rows and ``T`` columns; ``top_probs [L, T, top_k]``,
        ``phrase_probs [L, T, rollout]``.
    """
    if chunk_size < 1:
        raise FutureLensError(f"chunk_size must be >= 1, got {chunk_size}.")
    if rollout < 0:
        raise FutureLensError(f"rollout must be >= 0, got {rollout}.")
    if not 1 <= top_k <= lm.vocab_size:
        raise FutureLensError(f"top_k must be in 1..{lm.vocab_size}, got {top_k}.")
    ids, n_pre = _text_ids(lm, text)
    prompts = read(lm, prompts)
    found = getattr(prompts, "source", None)
    if source is None:
        source = found.describe() if found is not None else ("fixed text prompt" if prompts is None else "soft prompts given in memory")
    if patch_layer is not None:
        return _one_layer_grid(lm, ids, n_pre, prompts, layers, lm.check_layer(patch_layer, "patch_layer"), rollout,
                               top_k, fixed_prompt, chunk_size, progress, source)
    if isinstance(prompts, Mapping):
        from ..artifacts import select_target

        prompts = select_target(prompts, None if target_layer is None else lm.check_layer(target_layer, "target_layer"))
    rows, soft, method = per_layer(lm, prompts, layers)
    target = None
    if soft is None:
        target = encode(lm.tokenizer, fixed_prompt)  # as the fixed-prompt method has it (futurelens.tokens)
        if not target:
            raise FutureLensError("fixed_prompt is empty: give a text prompt, or learned soft prompts.")
        method = f"fixed prompt {fixed_prompt!r}"
    writes = None
    if target_layer is not None:
        writes = {layer: lm.check_layer(target_layer, "target_layer") for layer in rows}
        method += f", every row's state written at layer {writes[rows[0]]}"

    L, T = len(rows), len(ids) - n_pre
    bar = None
    if progress is True and rollout:
        from tqdm.auto import tqdm

        bar = tqdm(total=L * T, desc="lens", unit="cell")
    step = None if lm.remote else (bar.update if bar is not None else (progress if callable(progress) else None))
    try:
        import torch

        # Remotely the grid is one request while its result (ids and probabilities per cell) fits the bound,
        # else one per group of grid rows (each reads the text's states again).
        # The text's ids and the fixed prompt's travel as int64 tensors: what the bound counts is what is sent.
        text_ids = torch.tensor(ids, dtype=torch.long)
        prompt_ids = None if target is None else torch.tensor(target, dtype=torch.long)
        parts = [
            run_job(lm, jobs.lens_job, text_ids, n_pre, rows[a:b], None if soft is None else {r: soft[r] for r in rows[a:b]},
                    prompt_ids, top_k, rollout, chunk_size, step, writes)
            for a, b in spans(lm, L, **lens_request_sizes(len(ids), len(target or []), [
                0 if soft is None else payload_bytes(soft[r]) for r in rows], T, top_k, rollout),
                              lower="lens a shorter text")
        ]
        top_probs, top_ids, phrase_ids, phrase_probs = (torch.cat([part[i] for part in parts]) for i in range(4))
    finally:
        if bar is not None:
            bar.close()
    return _grid(lm, ids, n_pre, rows, top_k, rollout, top_probs, top_ids, phrase_ids, phrase_probs, method, source)


def lens_request_sizes(n_ids: int, n_prompt_ids: int, row_bytes: Sequence[int], T: int, top_k: int,
                       rollout: int) -> dict:
    """`spans`' sizes for the lens page's requests (`jobs.lens_job`): per grid row ``payload`` its soft prompt's bytes
    (``row_bytes``; 0 with the fixed prompt) and ``result`` ``T x (top_k + rollout)`` float32 probabilities and int64
    ids; ``fixed`` the text's ``n_ids`` and the fixed prompt's ``n_prompt_ids`` int64 ids. `futurelens plan` calls it
    with the sizes it expects."""
    return {"payload": list(row_bytes), "result": top_bytes(T * (top_k + rollout)), "fixed": ids_bytes(n_ids + n_prompt_ids)}


def _grid(lm, ids, n_pre, rows, top_k, rollout, top_probs, top_ids, phrase_ids, phrase_probs, method, source) -> LensGrid:
    L, T = len(rows), len(ids) - n_pre
    names = _Decoder(lm.tokenizer)
    return LensGrid(
        tokens=names(ids[n_pre:]),
        layers=rows,
        top_tokens=_nest(names(top_ids.flatten().tolist()), L, T, top_k),
        top_probs=top_probs.reshape(L, T, top_k).numpy().astype(np.float64),
        phrase_tokens=_nest(names(phrase_ids.flatten().tolist()), L, T, rollout),
        phrase_probs=phrase_probs.reshape(L, T, rollout).numpy().astype(np.float64),
        title=lm.tokenizer.decode(ids[n_pre:]),
        model=lm.name,
        method=method,
        source=source,
    )


def _one_layer_grid(lm, ids, n_pre, prompts, layers, at, rollout, top_k, fixed_prompt, chunk_size, progress, source) -> LensGrid:
    """Every row's state patched into layer ``at`` (the authors' demo): states, logit lens, then one rollout."""
    import torch

    from ..tracing import _layers, rollout as roll, token_states

    rows = _layers(lm, layers)
    if len(set(rows)) != len(rows):
        raise FutureLensError(f"layers has repeats {rows}: each grid row needs its own layer.")
    soft = None
    if isinstance(prompts, torch.Tensor):
        soft = check_prompt(lm, prompts, "prompts")
    elif isinstance(prompts, Mapping):
        if at in prompts:
            soft = check_prompt(lm, prompts[at], f"prompts[{at}]")
        elif len(prompts) == 1:
            raise FutureLensError(
                f"The prompt given is for layer {next(iter(prompts))}, not {at}: patch at its own layer, or pass force "
                "to move it."
            )
        else:
            raise FutureLensError(f"No soft prompt for layer {at}: prompts are given for layers {sorted(prompts)}.")
    elif prompts is not None:
        raise FutureLensError(f"prompts must be a [P, d_model] tensor, a {{layer: tensor}} dict, a path, or None; got {type(prompts).__name__}.")
    target = None
    if soft is None:
        target = encode(lm.tokenizer, fixed_prompt)  # as the fixed-prompt method has it (futurelens.tokens)
        if not target:
            raise FutureLensError("fixed_prompt is empty: give a text prompt, or learned soft prompts.")
    states = token_states(lm, torch.tensor([ids], dtype=torch.long), rows)[:, n_pre:]  # [L, T, d]
    L, T, d = states.shape
    flat = states.reshape(L * T, d)
    probs, tops = [], []
    for start in range(0, flat.shape[0], chunk_size):
        chunk = flat[start : start + chunk_size]
        # Reduced to top-k where the model is: a row's logits are vocabulary-sized.
        for a, b in spans(lm, len(chunk), payload=tensor_bytes(d, dtype=chunk.dtype), result=top_bytes(top_k)):
            top_p, top_i = run_job(lm, jobs.decode_top_job, chunk[a:b], top_k)
            probs.append(top_p)
            tops.append(top_i)
    phrase_ids = torch.zeros(L * T, rollout, dtype=torch.long)
    phrase_probs = torch.zeros(L * T, rollout)
    if rollout:
        bar = None
        if progress is True:
            from tqdm.auto import tqdm

            bar = tqdm(total=L * T, desc="lens", unit="cell")
        step = None if lm.remote else (bar.update if bar is not None else (progress if callable(progress) else None))
        try:
            kwargs = {"soft_prompt": soft} if soft is not None else {"target": [target]}
            # Remotely each row carries its state and (expanded) prompt, and brings back n ids and probabilities.
            sent = tensor_bytes(d, dtype=flat.dtype) + ids_bytes(len(target or []))
            if soft is not None:
                sent += payload_bytes(soft) + ids_bytes(soft.shape[0])
            got = [roll(lm, flat[a:b], at, n=rollout, chunk_size=chunk_size, progress=step, **kwargs)
                   for a, b in spans(lm, len(flat), payload=sent, result=top_bytes(rollout))]
            phrase_ids, phrase_probs = torch.cat([g[0] for g in got]), torch.cat([g[1] for g in got])
        finally:
            if bar is not None:
                bar.close()
    if soft is None:
        method = f"fixed prompt {fixed_prompt!r}, every row's state patched at layer {at}"
    else:
        method = f"one learned soft prompt (P={soft.shape[0]}) at layer {at}, every row's state patched there (the authors' demo)"
    return _grid(lm, ids, n_pre, rows, top_k, rollout, torch.cat(probs), torch.cat(tops), phrase_ids, phrase_probs,
                 method, source)


def lens(
    lm: "LensModel",
    text: "str | Sequence[int] | torch.Tensor",
    prompts: Prompts = None,
    *,
    layer: int | None = None,
    layers: int | Sequence[int] | None = None,
    shared: bool = False,
    rollout: int = 4,
    top_k: int = 5,
    fixed_prompt: str = PAPER_PROMPT,
    chunk_size: int = 512,
    progress: Progress = None,
    force: bool = False,
    revision: str | None = None,
    probes: "str | os.PathLike | None" = None,
    target_layer: int | None = None,
) -> LensGrid:
    """The Future Lens of ``text`` in one call: ``fl.lens(lm, "Marty McFly from")`` shows inline in a notebook.

    Args:
        lm: the model (`futurelens.load_model`).
        text: a string or token ids.
        prompts: ``None`` = the learned prompts that ship with futurelens for ``lm`` (the embedded default
            has one per layer, `futurelens/prompts/`), else the fixed prompt; ``"fixed"`` = the fixed prompt;
            a folder, a prompt file, a hub id (``owner/name[@revision]``), the authors' bare-tensor ``.pt``
            (with ``layer``); a ``[P, d]`` tensor; or ``{layer: [P, d]}``.
        layer: one prompt receives every row's state at this layer, as the authors' demo does: the layer of
            a bare-tensor file (``gptj_soft_prefix.pt``: 14), or which prompt of a set to use.
        layers: rows of the grid (default: every layer, or every layer with a prompt).
        shared: one learned prompt used at every row's own layer.
        rollout, top_k, fixed_prompt, chunk_size, progress: as in `lens_grid`.
        force: use prompts trained on another model (or a prompt at another layer than it was trained for).
        revision: a hub revision for ``prompts`` given as a hub id.
        probes: fitted probes (a folder `futurelens eval` saved them in, or a hub id): each cell's tooltip adds
            their top-1 guess N = 0..n_max ahead, at the layers they were fitted for.
        target_layer: write every row's state at this layer (Patchscopes' target layer), with the prompts trained
            for (row layer, target_layer) (`futurelens train --target-layers`) or the fixed prompt.

    Returns:
        the `LensGrid`; its page header says where the prompts came from (package, folder, file,
        hub repo and revision, the authors' file) and how they were applied.
    """
    prompts, source = for_lens(lm, prompts, layer=layer, shared=shared, force=force, revision=revision)
    grid = lens_grid(lm, text, prompts, layers=layers, rollout=rollout, top_k=top_k, fixed_prompt=fixed_prompt,
                     chunk_size=chunk_size, progress=progress, patch_layer=layer, source=source, target_layer=target_layer)
    if probes:
        ids, n_pre = _text_ids(lm, text)
        grid.probes, where = _probe_guesses(lm, ids, n_pre, grid.layers, probes, revision)
        grid.source = f"{grid.source}; {where}"
        grid.__post_init__()
    return grid


def _probe_guesses(lm: "LensModel", ids: list[int], n_pre: int, rows: list[int], probes: Any, revision: str | None):
    """``({name: {"layers", "tokens", "probs"}}, description)``: fitted probes' top-1 guesses for every cell."""
    import torch

    from ..artifacts import PROBE_KINDS, probe_path, probes_folder, read_probe
    from ..tracing import decode, token_states

    folder, where = probes_folder(probes, revision)
    names = {"vocab": "linear (vocab)", "linear": "linear (hidden)", "mlp": "mlp probe"}
    states = None
    out, data = {}, set()
    for kind in PROBE_KINDS:
        entry: dict = {"layers": [], "tokens": [], "probs": []}
        for i, layer in enumerate(rows):
            path = probe_path(folder, kind, layer)
            if not path.exists():
                continue
            tensors, meta = read_probe(path)
            if meta["model"] != lm.name:
                raise FutureLensError(f"{path} was fitted on {meta['model']!r}, not {lm.name!r}: fit probes for this model "
                                      "(futurelens eval), or leave --probes out.")
            if states is None:
                states = token_states(lm, torch.tensor([ids], dtype=torch.long), rows)[:, n_pre:].float()  # [L, T, d]
            x = states[i]
            with torch.no_grad():
                if kind == "vocab":
                    from ..methods.linear import vocab_logits

                    logits = vocab_logits(tensors, x, lm.vocab_size)  # a compact probe too
                elif kind == "mlp":
                    params = tuple(tensors[k].float() for k in ("w1", "b1", "w2", "b2"))
                    logits = decode(lm, jobs.mlp_states(params, x)).float()
                else:
                    maps = tensors["maps"].float()
                    xb = torch.cat([x, torch.ones(len(x), 1)], -1)
                    logits = decode(lm, torch.einsum("td,nde->tne", xb, maps)).float()
            p, top = logits.softmax(-1).max(-1)  # [T, n_max + 1]
            decoder = _Decoder(lm.tokenizer)
            entry["layers"].append(layer)
            entry["tokens"].append([decoder(row.tolist()) for row in top])
            entry["probs"].append(p.numpy())
            data.add(meta["data"])
        if entry["layers"]:
            out[names[kind]] = {**entry, "probs": np.stack(entry["probs"]).astype(np.float64)}
    if not out:
        raise FutureLensError(f"No fitted probes for layers {rows} in {folder}: run `futurelens eval` (it saves them in "
                              "<out>/probes), or point --probes at that folder.")
    at = f"{where.location} @ {where.revision}" if where.kind == "hub" else str(folder)
    return out, f"fitted probes from {at} (data {', '.join(sorted(data))})"


def _text_ids(lm: "LensModel", text: Any) -> tuple[list[int], int]:
    """``(context ids, number of leading special tokens)``: the columns are ``ids[n:]``."""
    import torch

    if isinstance(text, str):
        # Keep a prepended BOS (the model was trained with it); anything else the tokenizer
        # adds (an EOS after the text, say) would be a column the text does not have (futurelens.tokens).
        ids, n_pre = encode(lm.tokenizer, text), len(prepended(lm.tokenizer))
    else:
        if isinstance(text, torch.Tensor):
            if text.dim() == 2 and text.shape[0] == 1:
                text = text[0]
            if text.dim() != 1:
                raise FutureLensError(f"text ids must be [T] or [1, T], got shape {tuple(text.shape)}.")
            text = text.tolist()
        ids, n_pre = [int(t) for t in text], 0
    if len(ids) == n_pre:
        raise FutureLensError("The text is empty (no tokens): the lens needs at least one token.")
    return ids, n_pre


class _Decoder:
    """Token id -> text via ``tokenizer.decode([id])``, each id decoded once."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.seen = tokenizer, {}

    def __call__(self, ids: Sequence[int]) -> list[str]:
        out = []
        for i in ids:
            if i not in self.seen:
                self.seen[i] = self.tokenizer.decode([i])
            out.append(self.seen[i])
        return out


def _nest(flat: list[str], L: int, T: int, n: int) -> list[list[list[str]]]:
    """A flat ``[L*T*n]`` list as ``[L][T][n]``."""
    return [[flat[(i * T + t) * n : (i * T + t + 1) * n] for t in range(T)] for i in range(L)]
