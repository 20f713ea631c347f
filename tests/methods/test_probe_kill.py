"""A SIGKILL at a random moment of probe fitting (`futurelens eval`), then the same command: it resumes, bit-identical.

The child runs the real CLI with hooks that log every checkpoint load (with the epoch it resumes at) and every
checkpoint save, so the test knows where the killed run stood and what the re-run did. In the run to be killed the
hooks also hold the child at one point past the kill's moment (the next checkpoint write, or the final file's write
once its temporary is on disk), so the kill always lands mid-fit however fast or loaded the machine is: a kill timed
by the clock alone once missed, the child having finished first.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import synthetic_prefixes

from futurelens.artifacts import probe_checkpoint_path, probe_path, read_probe

LAYERS = (1, 2)
EPOCHS = {"vocab": 4, "linear": 3}  # --vocab-epochs, --linear-sgd-epochs
FITS = [(kind, layer) for layer in LAYERS for kind in ("vocab", "linear")]  # the order evaluate fits them in

# `futurelens` as `python -m futurelens` runs it, with the checkpoint reads and writes logged to $PROBE_KILL_LOG.
CHILD = """
import os, sys
import futurelens.methods.linear as linear

def note(line):
    with open(os.environ["PROBE_KILL_LOG"], "a") as f:
        f.write(line + "\\n")

real_save, real_load = linear.save_fit_checkpoint, linear.load_fit_checkpoint

HOLD = os.environ.get("PROBE_KILL_HOLD", "").split()  # ["save", name, epoch] or ["final", name]

def hold():
    note("held 0 0 0")
    while True:
        __import__("time").sleep(60)

def save(path, blob):
    if HOLD[:1] == ["save"] and HOLD[1:] == [path.name, str(blob["epoch"])]:
        hold()
    real_save(path, blob)
    note(f"save {path.name} {blob['epoch']} {__import__('time').time()}")

import safetensors.torch as st
real_save_file = st.save_file

def save_file(tensors, filename, metadata=None):
    real_save_file(tensors, filename, metadata=metadata)
    if HOLD[:1] == ["final"] and os.path.basename(filename).startswith("." + HOLD[1] + "-"):
        hold()

st.save_file = save_file

def load(path, settings):
    saved = real_load(path, settings)
    note(f"load {path.name} {saved['epoch'] if saved else 0} {__import__('time').time()}")
    return saved

linear.save_fit_checkpoint, linear.load_fit_checkpoint = save, load
from futurelens.cli import main
sys.argv[0] = "futurelens"
main()
"""


def _log(path: Path) -> list[tuple[str, str, int, float]]:
    if not path.exists():
        return []
    return [(op, name, int(epoch), float(t)) for op, name, epoch, t in (line.split() for line in path.read_text().splitlines())]


def _probes(folder: Path) -> dict[str, tuple[dict[str, torch.Tensor], dict]]:
    return {p.name: read_probe(p) for p in sorted(folder.glob("*-layer-*.safetensors"))}


@pytest.mark.slow
def test_sigkilled_probe_fitting_resumes_to_bit_identical_probes(tiny, tokenizer, tmp_path):
    from futurelens.data.states import CacheConfig, build_cache

    seed = int(os.environ.get("PROBE_KILL_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    lm, model = tiny("llama")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    data, _ = synthetic_prefixes(tmp_path / "data", tokenizer, str(folder), n=160, n_max=1)
    lm.name = str(folder)
    cache = build_cache(lm, CacheConfig(data=str(data), out=str(tmp_path / "cache"), layers=list(LAYERS)), progress=False)
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}

    def cmd(out: Path) -> list[str]:  # absolute paths: a relative `a/probes` that does not exist yet reads as a hub id
        return [sys.executable, "-c", CHILD, "eval", "--cache", str(cache), "--out", str(out), "--methods", "vocab",
                "--methods", "linear", "--vocab-epochs", str(EPOCHS["vocab"]), "--linear-sgd-epochs",
                str(EPOCHS["linear"]), "--k", "3", "--batch-size", "16"]

    def run(out: Path, log: Path) -> None:
        done = subprocess.run(cmd(out), env={**env, "PROBE_KILL_LOG": str(log)}, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"seed {seed}: {done.stderr[-3000:]}"

    whole, whole_log = tmp_path / "whole", tmp_path / "whole.log"
    run(whole, whole_log)
    saves = [(name, epoch, t) for op, name, epoch, t in _log(whole_log) if op == "save"]
    for kind, layer in FITS:  # the uninterrupted run fitted every epoch of every fit, from scratch
        name = probe_checkpoint_path(whole / "probes", kind, layer).name
        assert [e for n, e, _ in saves if n == name] == list(range(1, EPOCHS[kind] + 1)), name

    # The kill: after the target fit's e-th epoch checkpoint, somewhere within the next epoch (its compute or its
    # checkpoint write) or, for a vocabulary probe, while its final file is being written.
    kind, layer = rng.choice(FITS)
    out, out_log = tmp_path / "killed", tmp_path / "killed.log"
    ckpt, final = probe_checkpoint_path(out / "probes", kind, layer), probe_path(out / "probes", kind, layer)
    times = [t for n, _, t in saves if n == ckpt.name]
    epoch_s = statistics.median(b - a for a, b in itertools.pairwise(times))
    during_final_write = kind == "vocab" and rng.random() < 0.25
    after = EPOCHS[kind] if during_final_write else rng.randint(1, EPOCHS[kind] - 1)
    delay = 0.0 if during_final_write else rng.uniform(0, 0.9 * epoch_s)
    where = f"seed {seed}: {kind} layer {layer}, " + (
        "during the final write" if during_final_write else f"{delay:.3f}s after checkpoint {after} ({epoch_s:.3f}s/epoch)")

    hold = f"final {final.name}" if during_final_write else f"save {ckpt.name} {after + 1}"
    proc = subprocess.Popen(cmd(out), env={**env, "PROBE_KILL_LOG": str(out_log), "PROBE_KILL_HOLD": hold},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Wait for checkpoint `after` of the target fit (or the hold in its final write), then kill `delay` later: at
    # that moment the child is computing the next epoch or held at its checkpoint write, never finished.
    mark = ("held", "0", 0) if during_final_write else ("save", ckpt.name, after)
    deadline = time.time() + 300  # a loaded machine can take a while to start the child
    while proc.poll() is None and time.time() < deadline and mark not in [e[:3] for e in _log(out_log)]:
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"{where}: the child ended on its own ({proc.returncode})"

    # What the kill left: a checkpoint of this fit, no final file of it, only complete final files of earlier fits.
    assert not final.exists() and ckpt.exists(), f"{where}: the kill should land mid-fit"
    at_kill = torch.load(ckpt, weights_only=False)["epoch"]
    assert 1 <= at_kill <= EPOCHS[kind], where
    index = FITS.index((kind, layer))
    earlier = {probe_path(out / "probes", k, l).name for k, l in FITS[:index]}
    left = _probes(out / "probes")  # read_probe refuses a truncated file: a final file is whole or absent
    assert set(left) == earlier, where
    ckpts = sorted(p.name for p in (out / "probes").glob("*.ckpt.pt"))
    assert ckpts == [ckpt.name], where
    half_written = sorted(p.name for p in (out / "probes").glob(".*.tmp"))  # a write the kill cut short
    assert half_written or not during_final_write, where
    assert not (out / "results.csv").exists(), where

    rerun_log = tmp_path / "rerun.log"
    run(out, rerun_log)
    rerun = [(op, n, e) for op, n, e, _ in _log(rerun_log)]
    # The re-run loaded the finished fits (no checkpoint touched), resumed this one at the epoch after its checkpoint
    # and fitted the later ones from scratch: fewer epochs than the uninterrupted run.
    expected = [("load", ckpt.name, at_kill)] + [("save", ckpt.name, e) for e in range(at_kill + 1, EPOCHS[kind] + 1)]
    for k, l in FITS[index + 1:]:
        name = probe_checkpoint_path(out / "probes", k, l).name
        expected += [("load", name, 0)] + [("save", name, e) for e in range(1, EPOCHS[k] + 1)]
    assert rerun == expected, where
    assert sum(op == "save" for op, _, _ in rerun) < len(saves), where

    a, b = _probes(out / "probes"), _probes(whole / "probes")
    assert sorted(a) == sorted(b) == sorted(probe_path(whole / "probes", k, l).name for k, l in FITS), where
    for name in a:  # tensors and metadata, not bytes: safetensors writes metadata keys in a per-process order
        (ta, ma), (tb, mb) = a[name], b[name]
        assert ma == mb, f"{where}: {name} metadata"
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), f"{where}: {name} differs"
    assert (out / "results.csv").read_text() == (whole / "results.csv").read_text(), where
    assert not list((out / "probes").glob("*.ckpt.pt")), f"{where}: a finished fit removes its checkpoint"
    assert not list((out / "probes").glob(".*.tmp")), f"{where}: temporaries left by the kill ({half_written}) remain"
