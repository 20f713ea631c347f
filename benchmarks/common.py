"""What every benchmark shares: the machine header, the device, fair timing, the models and pydoc prefixes.

Timing rules (see README): every timed call is bracketed by a device synchronisation
(a no-op on CPU), the two sides of a ratio are timed *interleaved* in the same
process (A, B, A, B, ...) so that load from other jobs hits both alike, and a ratio
is the median of the per-round ratios, which is robust to the odd slow spike.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def status_mb(field: str) -> float:
    """A ``Vm*`` field of /proc/self/status (``VmRSS``, ``VmHWM``: this address space's peak), in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU: benchmarks run unchanged on both."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def machine() -> dict[str, Any]:
    """Everything a reader needs to compare two reports: CPU, cores, library versions, threads, device."""
    import nnsight
    import transformers

    dev = device()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "nnsight": nnsight.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
    }


# --------------------------------------------------------------------------- timing


def sync() -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call of ``fn``, synchronised on both ends."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def lap_timer() -> Callable[[], float]:
    """A lap timer: each call returns the seconds since the previous call (or since creation), synchronised."""
    sync()
    last = [time.perf_counter()]

    def lap() -> float:
        sync()
        now = time.perf_counter()
        elapsed, last[0] = now - last[0], now
        return elapsed

    return lap


def interleaved(sides: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each side ``repeats`` times, round-robin (A, B, A, B, ...), after ``warmup`` untimed rounds.

    Round-robin matters on a shared machine: a burst of load from another job lands
    on neighbouring calls of *both* sides instead of on one side's whole block.
    """
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            times[name].append(timed(fn))
    return times


def stats(times: list[float]) -> dict[str, Any]:
    """Median, best and every sample (seconds, rounded) of one side's timings."""
    return {
        "median_s": round(statistics.median(times), 5),
        "best_s": round(min(times), 5),
        "runs_s": [round(t, 5) for t in times],
    }


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]`` (the rounds were interleaved)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def result(
    name: str,
    goal: str,
    passed: bool,
    summary: str,
    details: dict[str, Any],
    ratio: float | None = None,
    value: float | None = None,
) -> dict[str, Any]:
    """The dict every benchmark's ``run`` returns (what `run.py` writes to report.json / report.md)."""
    out: dict[str, Any] = {"name": name, "goal": goal}
    if ratio is not None:
        out["ratio"] = round(ratio, 4)
    if value is not None:
        out["value"] = round(value, 4)
    out.update(passed=bool(passed), summary=summary, details=details)
    return out


# --------------------------------------------------------------------------- models


@functools.lru_cache(maxsize=1)
def default_lm():
    """The embedded default (SmolLM2-135M-Instruct, fp32) through futurelens; on the GPU when there is one."""
    import futurelens as fl

    return fl.load_model(device=str(device()))


@functools.lru_cache(maxsize=1)
def plain_default():
    """A second, plain Hugging Face copy of the default model: no nnsight wrapper anywhere near it.

    The baselines run on this copy so that nothing futurelens or nnsight installs on
    the wrapped model can slow (or speed) them; the weights are the same checkpoint.
    """
    from transformers import AutoModelForCausalLM

    from futurelens.embedded import ensure_default_model

    model = AutoModelForCausalLM.from_pretrained(ensure_default_model(), dtype=torch.float32)
    return model.to(device()).requires_grad_(False).eval()


# --------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=2)
def _pydoc_ids(tokenizer) -> tuple[tuple[int, ...], ...]:
    """Every pydoc topic as token ids (the offline corpus `futurelens data` uses by default)."""
    from futurelens.data.corpus import documents

    return tuple(tuple(tokenizer(d.text, add_special_tokens=False)["input_ids"]) for d in documents("pydoc"))


def pydoc_prefixes(
    tokenizer, n: int, min_len: int = 8, max_len: int = 96, ahead: int = 4, seed: int = 0
) -> list[tuple[list[int], list[int]]]:
    """``n`` seeded ``(prefix ids, next ahead ids)`` pairs cut from pydoc, prefix lengths uniform in min_len..max_len.

    Real text rather than random ids: padding, lengths and token statistics look like
    what `futurelens data` produces, without the model-labelling pass that costs minutes.
    """
    g = torch.Generator().manual_seed(seed)
    docs = [d for d in _pydoc_ids(tokenizer) if len(d) >= max_len + ahead]
    out = []
    for _ in range(n):
        doc = docs[int(torch.randint(len(docs), (1,), generator=g))]
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        start = int(torch.randint(len(doc) - length - ahead + 1, (1,), generator=g))
        out.append((list(doc[start : start + length]), list(doc[start + length : start + length + ahead])))
    return out


def length_sorted_batches(rows: list, batch_size: int, key: Callable[[Any], int] = len) -> list[list]:
    """Rows sorted by length and cut into batches, as `build_cache` does inside a shard (least padding)."""
    ordered = sorted(rows, key=key)
    return [ordered[a : a + batch_size] for a in range(0, len(ordered), batch_size)]


def cli(run: Callable[[bool], dict[str, Any]]) -> None:
    """``python -m benchmarks.<name> [--quick]``: run one benchmark and print its result as JSON."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=run.__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    print(json.dumps(run(parser.parse_args().quick), indent=2))


def prefix_table(lm, pairs: list[tuple[list[int], list[int]]], n_train: int, out: Path, n_max: int) -> Path:
    """A futurelens prefix table (`save_prefixes`) from ``(prefix, next tokens)`` pairs: the first
    ``n_train`` rows in the train split, the rest in test; the real next tokens stand in as targets."""
    from futurelens.artifacts.dataset import save_prefixes
    from futurelens.tokens import tokenizer_hash

    n = len(pairs)
    columns = {
        "doc_id": [f"pydoc:{i}" for i in range(n)],
        "offset": [0] * n,
        "prefix_ids": [p for p, _ in pairs],
        "next_ids": [c for _, c in pairs],
        "target_ids": [c for _, c in pairs],
        "split": ["train" if i < n_train else "test" for i in range(n)],
    }
    meta = {"model": lm.name, "tokenizer_hash": tokenizer_hash(lm.tokenizer), "config": {"n_max": n_max}, "n_kept": n}
    return save_prefixes(columns, meta, out)


def per_cell_phrases(model, blocks, norm, head, states: torch.Tensor, prompts: dict, rollout: int, top_k: int,
                     pad_id: int) -> dict:
    """The authors' lens, one cell at a time, with plain hooks (the baseline the batched lens is measured against).

    For each (layer, token) of ``states [n_layers + 1, T, d]``: the logit lens top-k, and
    ``generate(inputs_embeds=prompts[layer], max_new_tokens=rollout)`` with a hook writing the cell's state over
    ``blocks[layer - 1]``'s output at the prompt's last position (layer 0: the prompt's last embedding).
    Returns ``{"phrase_ids": [L, T, R], "top_ids": [L, T, k]}``.
    """
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    layers, T = list(prompts), states.shape[1]
    phrase = torch.zeros(len(layers), T, rollout, dtype=torch.long)
    top = torch.zeros(len(layers), T, top_k, dtype=torch.long)
    for i, layer in enumerate(layers):
        soft = prompts[layer].to(device, dtype)
        P = soft.shape[0]
        for t in range(T):
            state = states[layer, t]
            top[i, t] = head(norm(state)).topk(top_k).indices.cpu()
            embeds = soft[None].clone()
            hook = None
            if layer == 0:
                # generate() feeds inputs_embeds straight to the blocks: the embedding output is the prompt itself.
                embeds[0, P - 1] = state
            else:

                def patch(_m, _i, out, state=state):
                    hidden = out[0] if isinstance(out, tuple) else out
                    if hidden.shape[1] != P:  # a decoding step: the patched position lives in the KV cache
                        return out
                    hidden = hidden.clone()
                    hidden[:, P - 1] = state
                    return (hidden,) + tuple(out[1:]) if isinstance(out, tuple) else hidden

                hook = blocks[layer - 1].register_forward_hook(patch)
            try:
                out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones(1, P, dtype=torch.long, device=device),
                                     max_new_tokens=rollout, do_sample=False,
                                     eos_token_id=None,  # greedy to the end, like lens_grid's rollout
                                     pad_token_id=pad_id)
            finally:
                if hook is not None:
                    hook.remove()
            phrase[i, t] = out[0, -rollout:].cpu()
    return {"phrase_ids": phrase, "top_ids": top}


def hook_kl_loss(plain, embed, block, norm, head, pad_id: int, n: int, prompt_len: int) -> Callable:
    """The hand-written soft-prompt objective with plain hooks, no nnsight (the baseline training is measured
    against): ``loss(prompt [P, d], batch)``. Forward hooks write the prompt over ``embed``'s output and the batch's
    states over ``block``'s output at the prompt's last position; the loss is the KL at the read position
    ``P - 1 + n`` against the model's head on the cached last-layer state (the paper's loss)."""
    device, dtype = next(plain.parameters()).device, next(plain.parameters()).dtype
    P = prompt_len

    def loss(prompt: torch.Tensor, batch: Any) -> torch.Tensor:
        state = batch.states.to(device)
        # Placeholder ids under the prompt, then the n teacher-forced continuation tokens.
        ids = torch.cat([torch.full((len(state), P), pad_id), batch.target[:, :n]], 1).to(device)

        def on_embed(_m, _i, out):
            return torch.cat([prompt.to(out.dtype).expand(out.shape[0], -1, -1), out[:, P:]], 1)

        def on_block(_m, _i, out):
            hidden = (out[0] if isinstance(out, tuple) else out).clone()
            hidden[:, P - 1] = state.to(hidden.dtype)
            return (hidden,) + tuple(out[1:]) if isinstance(out, tuple) else hidden

        handles = [embed.register_forward_hook(on_embed), block.register_forward_hook(on_block)]
        try:
            logits = plain(input_ids=ids).logits
        finally:
            for h in handles:
                h.remove()
        logprobs = logits[:, P - 1 + n].float().log_softmax(-1)
        with torch.no_grad():
            reference = head(norm(batch.final[:, n].to(device, dtype))).float().log_softmax(-1)
        return torch.nn.functional.kl_div(logprobs, reference, log_target=True, reduction="batchmean")

    return loss
