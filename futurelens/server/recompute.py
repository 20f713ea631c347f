"""Soft-prompt training whose source states are recomputed where the model is, from the prefix ids. Ships to NDIF
(see the rule in `futurelens.server`).

The shipped-states way (`futurelens.server.jobs.train_steps` on batches read from the cache) sends every batch's
states ``[b, d]`` and, for the KL loss, the last layer over the continuation ``[b, N + 1, d]``: at 70B width
~160 KB a row. Here a batch is ids only (``prefix`` int32 ``[b, T]`` right-padded, ``lengths [b]``,
``target [b, N + 1]``, about 4 bytes a token); each is turned into the same plain batch the cache would have
given (`futurelens.server.jobs.cache_job`, the forward `futurelens cache` runs, cast to the cache's storage
dtype) just before its step, in the same request, and the steps are `train_steps`' own.
"""

from __future__ import annotations

import torch

from .jobs import cache_job, train_steps


def states_batch(model, spec, batch, layer, dtype, final):
    """The plain batch the cache holds for these rows: ``states [b, d]``, ``target``, ``final [b, N + 1, d]`` (with
    ``final``) or None, read at ``layer`` and stored in ``dtype`` as `futurelens.data.states.build_cache` stores
    them."""
    rows = [batch["prefix"][i, :n].tolist() for i, n in enumerate(batch["lengths"].tolist())]
    conts = batch["target"][:, :-1].tolist() if final else None
    with torch.no_grad():
        states, last = cache_job(model, spec, rows, conts, [layer])
    return {"states": states[0].to("cpu", dtype), "target": batch["target"],
            "final": None if last is None else last.to("cpu", dtype)}


def recomputed(model, spec, batches, layer, dtype, final):
    """``(epoch, i, last, batch)`` items with each id batch replaced by its states batch, one at a time (lazily: a
    request's states never all exist at once)."""
    for epoch, i, last, batch in batches:
        yield epoch, i, last, states_batch(model, spec, batch, layer, dtype, final)


def train_steps_recompute(model, spec, prompt, optimizer_state, grad, pending, batches, settings, layer, source, dtype,
                          final):
    """`futurelens.server.jobs.train_steps` on id batches: each batch's states at ``source`` (the cached layer;
    ``layer`` is where the prompt writes) are recomputed here first. Same arguments and return as `train_steps`,
    plus ``source``, the cache's ``dtype`` and ``final`` (the KL loss needs the last layer over the continuation)."""
    return train_steps(model, spec, prompt, optimizer_state, grad, pending,
                       recomputed(model, spec, batches, source, dtype, final), settings, layer)
