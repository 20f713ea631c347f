"""NDIF's production import whitelist (`protector.py`, from ndif-team/ndif's published code) refuses what it should.

The positive control for the stand-in server's ``whitelist`` mode: a plain nnsight trace that imports a module
off the list fails with NDIF's own text, and the same trace importing a listed module runs. Without this, a
mode that guarded nothing would pass every futurelens test run under it.
"""

from __future__ import annotations

import pytest
import torch
from nnsight.intervention.backends.remote import RemoteError

IDS = torch.tensor([[5, 17, 300, 42]])


def test_a_listed_module_imports_inside_a_trace(ndif_pair):
    remote, local = ndif_pair("gptj", "whitelist")
    model, here = remote.nn, local.nn  # only nnsight's envoys in the block's frame, no futurelens object
    with model.trace(input_ids=IDS, remote=True):
        import math

        out = (model.lm_head.output[0, -1].norm() * math.sqrt(4.0)).save()
    with here.trace(input_ids=IDS):
        want = (here.lm_head.output[0, -1].norm() * 2.0).save()
    torch.testing.assert_close(out, want)


def test_os_is_refused(ndif_pair):
    model = ndif_pair("gptj", "whitelist")[0].nn  # only nnsight's envoy in the block's frame, no futurelens object
    with pytest.raises(RemoteError, match="Module os is not whitelisted"):
        with model.trace(input_ids=IDS, remote=True):
            import os

            out = model.lm_head.output[0, -1, : len(os.sep)].save()


def test_copy_is_refused(ndif_pair):
    model = ndif_pair("gptj", "whitelist")[0].nn  # only nnsight's envoy in the block's frame, no futurelens object
    with pytest.raises(RemoteError, match="Module copy is not whitelisted"):
        with model.trace(input_ids=IDS, remote=True):
            import copy

            out = copy.deepcopy(model.lm_head.output[0, -1]).save()


def test_dataclasses_is_refused(ndif_pair):
    model = ndif_pair("gptj", "whitelist")[0].nn  # only nnsight's envoy in the block's frame, no futurelens object
    with pytest.raises(RemoteError, match="Module dataclasses is not whitelisted"):
        with model.trace(input_ids=IDS, remote=True):
            import dataclasses

            out = model.lm_head.output[0, -1, : int(dataclasses.is_dataclass(1)) + 1].save()


def test_open_is_not_a_builtin_there(ndif_pair):
    model = ndif_pair("gptj", "whitelist")[0].nn  # only nnsight's envoy in the block's frame, no futurelens object
    with pytest.raises(RemoteError, match="name .open. is not defined"):
        with model.trace(input_ids=IDS, remote=True):
            handle = open("/etc/hostname")
            out = model.lm_head.output[0, -1].save()


def test_shipped_functions_are_held_to_the_list(ndif_pair, monkeypatch):
    """What futurelens does: a module shipped by value. Its own imports and builtins obey the whitelist too."""
    import nnsight
    from cloudpickle import unregister_pickle_by_value

    from ndif_executor import shipped

    nnsight.register(shipped)
    try:
        remote, local = ndif_pair("gptj", "whitelist")
        model, here = remote.nn, local.nn
        # Functions, not the module, in the block's frame: as run_job hands over a server function.
        scaled, deep, reads_a_file = shipped.scaled, shipped.deep, shipped.reads_a_file
        with model.trace(input_ids=IDS, remote=True):
            out = scaled(model.lm_head.output[0, -1]).save()
        with here.trace(input_ids=IDS):
            want = (here.lm_head.output[0, -1] * 2.0).save()
        torch.testing.assert_close(out, want)
        with pytest.raises(RemoteError, match="Module copy is not whitelisted"):
            with model.trace(input_ids=IDS, remote=True):
                out = deep(model.lm_head.output[0, -1]).save()
        with pytest.raises(RemoteError, match="name 'open' is not defined"):
            with model.trace(input_ids=IDS, remote=True):
                out = reads_a_file(model.lm_head.output[0, -1]).save()
    finally:
        unregister_pickle_by_value(shipped)


def test_a_refused_import_reaches_the_user_as_a_bug_report_naming_the_module(ndif_pair):
    """NDIF's own refusal text, through nnsight's client, as futurelens translates it."""
    from futurelens.errors import FutureLensError
    from futurelens.ndif_errors import ndif_errors

    remote = ndif_pair("llama", "whitelist")[0]
    model = remote.nn
    with pytest.raises(FutureLensError) as info:
        with ndif_errors(remote.name), model.trace(input_ids=IDS, remote=True):
            import copy

            out = copy.deepcopy(model.lm_head.output[0, -1]).save()
    message = str(info.value)
    assert "refused to import copy" in message and "futurelens bug" in message
    assert "Traceback" not in message.split("(")[0]
