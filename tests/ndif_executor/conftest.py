"""Fixtures for tests that run futurelens' remote requests through NDIF's own server code.

``ndif_pair(kind, mode)`` gives ``(remote LensModel, local LensModel)`` over the same tiny
checkpoint saved to disk: the remote one is what ``load_model(folder, remote=True)``
builds (a weightless client model), its requests executed by the stand-in server
(`server.py`: Python 3.12, the ``ndif`` package, futurelens not importable); the local
one is the reference every result must equal.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import nnsight
import nnsight.ndif
import pytest
from huggingface_hub import HfApi
from nnsight.modeling.mixins.remotable import Remotable

import futurelens as fl

from conftest import build_tiny
from ndif_executor.backend import ExecutorBackend, Server

KEY = "ndif-executor-test-key-5e1f"


@pytest.fixture(scope="session")
def ndif_server():
    server = Server()
    yield server
    server.close()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, tokenizer):
    """``checkpoints(kind)`` -> folder of a tiny random model of that architecture (built once)."""
    made: dict[str, str] = {}

    def make(kind: str) -> str:
        if kind not in made:
            folder = tmp_path_factory.mktemp(f"ckpt-{kind}")
            build_tiny(kind, tokenizer).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            made[kind] = str(folder)
        return made[kind]

    return make


@pytest.fixture
def ndif_pair(ndif_server, checkpoints, monkeypatch, restore_log_filters):
    """``ndif_pair(kind, mode="whitelist")`` -> (lm on the stand-in NDIF, the same model run here).

    ``mode``: ``"whitelist"`` (NDIF's trusted path under its production import whitelist, the default: what
    NDIF runs), ``"trusted"`` (the same without the whitelist) or ``"sandbox"`` (NDIF's process sandbox).
    """
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", KEY)
    monkeypatch.setattr(nnsight.CONFIG.APP, "REMOTE_LOGGING", False)
    modes: dict[str, str] = {}
    original = Remotable._remote_backend

    def backend(self, remote, blocking, job_id, verbose):
        if remote is True and self.repo_id in modes:
            return ExecutorBackend(ndif_server, self.to_model_key(), modes[self.repo_id], env=self._remoteable_get_env())
        return original(self, remote, blocking, job_id, verbose)

    monkeypatch.setattr(Remotable, "_remote_backend", backend)
    # nnsight names the model to NDIF by its hub id, which it asks the hub for (HfApi.model_info); a folder is its
    # own id here, as the stand-in server loads that folder. (huggingface_hub's public API, not nnsight's cache.)
    real_info = HfApi.model_info

    def model_info(self, repo_id, *args, **kwargs):
        return SimpleNamespace(id=repo_id) if repo_id in modes else real_info(self, repo_id, *args, **kwargs)

    monkeypatch.setattr(HfApi, "model_info", model_info)
    served = ndif_server.env()  # what NDIF's GET /env reports, from the stand-in server's own interpreter
    monkeypatch.setattr(nnsight.ndif, "get_remote_env", lambda force_refresh=False: {
        "python_version": served["python"], "packages": {"nnsight": served["nnsight"], "torch": served["torch"]}})

    def make(kind: str, mode: str = "whitelist"):
        folder = checkpoints(kind)
        modes[folder] = mode
        ndif_server.requests.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            remote = fl.load_model(folder, remote=True)
        remote.load_warnings = [str(w.message) for w in caught if "NDIF runs Python" in str(w.message)]
        return remote, fl.load_model(folder)

    return make
