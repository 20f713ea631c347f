"""NDIF configuration, error translation and secret hygiene, without network or NDIF.

Failures are produced the way nnsight produces them: its own `RemoteBackend` posts to an
`httpx.MockTransport` that answers like NDIF's FastAPI server, or handles an ERROR status
update carrying NDIF's job-error text; network failures are real connection refusals
against 127.0.0.1:9.
"""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import httpx
import nnsight
import pytest
import requests
import torch
import websocket
from huggingface_hub import HfApi
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
from nnsight.intervention.backends.remote import RemoteBackend, RemoteError
from nnsight.schema.request import RequestModel
from nnsight.schema.response import ResponseModel, Status

import futurelens as fl
from futurelens import remote
from futurelens.ndif_errors import ndif_errors, translate

MODEL = "meta-llama/Llama-3.1-8B"
KEY = "ndif-test-4f9c2e7a1b8d6053"
WANDB = "0123456789abcdef0123456789abcdef01234567"
DEAD_HOST = "http://127.0.0.1:9"  # discard port: nothing listens, connections are refused at once

# NDIF's own texts (ndif-team/ndif: api dependencies.py, queue processor.py, ray modeling/base.py).
NOT_SERVED = (
    "Model is not dedicated and hotswapping is not supported for this API key. "
    "See https://nnsight.net/status/ for a list of scheduled models."
)
# ndif 0.1.2's queue (services/api/queue/processor.py): "Could not deploy this model. {reason}", reason being
# the controller's (cluster.py) or Hugging Face's own exception text for an unknown repo.
NOT_DEPLOYED = (
    "Could not deploy this model. CANT_ACCOMMODATE: placed 0 of 1 new replicas before the cluster ran out of room."
)
NOT_FOUND = (
    "Could not deploy this model. 404 Client Error. (Request ID: Root=1-6750a1b2)\n\nRepository Not Found for url: "
    "https://huggingface.co/api/models/meta-llama/Llama-9.9-1B/revision/main.\nPlease make sure you specified the "
    "correct `repo_id` and `repo_type`.\nIf you are trying to access a private or gated repo, make sure you are "
    "authenticated."
)
NO_GPU = "Could not deploy this model. No GPU nodes available."
PROVISIONING = "Error provisioning model. Please try again later. Sorry for the inconvenience."
# NDIF's Protector (ndif-team/ndif, nn/security/protected_environment.py): a module off the whitelist, used while
# the job runs, and the same refusal met while the payload is read (ndif 0.1.2's PayloadError wording around it).
REFUSED_IMPORT = (
    "Traceback (most recent call last):\n  File \"[rollout:391] futurelens/server/traces.py\", line 408, in rollout\n"
    "ImportError: Module copy is not whitelisted"
)
REFUSED_READING = (
    "Your request payload could not be read (ImportError: Module dataclasses is not whitelisted). It may be "
    "truncated or corrupted in transit, or compressed differently than the request declared. Re-sending it usually "
    "resolves this; if it persists, check that the client and server nnsight versions match."
)
BAD_KEY = "Missing or invalid API key. Please visit https://login.ndif.us/ to create a new one."
OLD_CLIENT = (
    "Client nnsight version 0.8.1 is incompatible with the server nnsight version. The minimum supported "
    "version is 0.9.0. Please update nnsight to the latest version: `pip install --upgrade nnsight`"
)


@pytest.fixture
def with_key(monkeypatch):
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", KEY)
    monkeypatch.setenv("WANDB_API_KEY", WANDB)
    monkeypatch.setattr(nnsight.CONFIG.APP, "REMOTE_LOGGING", False)
    return KEY


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    monkeypatch.setattr(nnsight.CONFIG.APP, "REMOTE_LOGGING", False)


def post_to_fake_ndif(monkeypatch, handler) -> Exception:
    """What nnsight's RemoteBackend raises when NDIF's POST /request is answered by ``handler``."""
    real_client = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda **kw: real_client(transport=httpx.MockTransport(handler), **kw))
    backend = RemoteBackend('nnsight.modeling.language.LanguageModel:{"repo_id": "x"}', host="https://ndif.test")
    with pytest.raises(Exception) as info:
        backend._post(RequestModel(model_key=backend.model_key), b"payload")
    return info.value


def answer(status: int, detail: str | None = None, text: str | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text, request=request)
        return httpx.Response(status, json={"detail": detail}, request=request)

    return handler


def job_error(description: str) -> Exception:
    """What nnsight raises when NDIF sends an ERROR status update for a job."""
    backend = RemoteBackend("k", host="https://ndif.test")
    with pytest.raises(RemoteError) as info:
        backend.note(ResponseModel(id="job-1", status=Status.ERROR, description=description))
    return info.value


def translated(exc: Exception) -> str:
    """Raise ``exc`` inside ndif_errors; return the FutureLensError's message after the common checks."""
    with pytest.raises(fl.FutureLensError) as info, ndif_errors(MODEL):
        raise exc
    assert info.value.__cause__ is exc
    message = str(info.value)
    assert KEY not in message and WANDB not in message
    assert MODEL in message
    return message


# --------------------------------------------------------------------------- error translation


def test_missing_key_rejected_by_ndif_says_how_to_set_one(no_key, monkeypatch):
    exc = post_to_fake_ndif(monkeypatch, answer(401, BAD_KEY))
    assert isinstance(exc, RemoteError) and isinstance(exc.__cause__, httpx.HTTPStatusError)
    message = translated(exc)
    assert "no API key is set" in message
    assert 'nnsight.CONFIG.set_default_api_key("...")' in message and "export NDIF_API_KEY=..." in message
    assert "https://login.ndif.us" in message


def test_invalid_key_is_reported_without_the_key(with_key, monkeypatch):
    # A server that echoes the key back: the message must still not contain it.
    exc = post_to_fake_ndif(monkeypatch, answer(401, f"Missing or invalid API key {KEY}."))
    message = translated(exc)
    assert "rejected the API key" in message and "https://login.ndif.us" in message and "***" in message


def test_forbidden_websocket_handshake_is_an_auth_error(with_key):
    exc = websocket.WebSocketBadStatusException("Handshake status 403 Forbidden", 403, "Forbidden")
    assert "rejected the API key" in translated(exc)


def test_model_not_served_points_to_status_page_and_helper(with_key):
    message = translated(job_error(NOT_SERVED))
    assert "not serving" in message
    assert "https://nnsight.net/status/" in message and "served_models()" in message


@pytest.mark.parametrize("text", [NOT_DEPLOYED, NOT_FOUND, NO_GPU])
def test_ndifs_could_not_deploy_is_the_not_served_message(with_key, text):
    message = translated(job_error(text))
    assert "is not serving" in message and "https://nnsight.net/status/" in message and "remote=False" in message


def test_ndifs_failed_provisioning_says_to_try_again(with_key):
    message = translated(job_error(PROVISIONING))
    assert "Could not reach NDIF" in message and "or it is unavailable" in message and "nnsight.net/status/" in message


@pytest.mark.parametrize("text, module", [(REFUSED_IMPORT, "copy"), (REFUSED_READING, "dataclasses")])
def test_an_import_refused_by_ndifs_whitelist_names_the_module_and_is_a_bug_to_report(with_key, text, module):
    message = translated(job_error(text))
    assert f"refused to import {module}" in message and "import whitelist" in message
    assert "futurelens bug" in message and "report it" in message
    assert "disagree on versions" not in message  # it was reported as a version mismatch


def test_version_mismatch_says_to_upgrade(with_key, monkeypatch):
    message = translated(post_to_fake_ndif(monkeypatch, answer(400, OLD_CLIENT)))
    assert "disagree on versions" in message and "pip install -U" in message and "nnsight.compare()" in message


def _connect_error(request: httpx.Request):
    raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution", request=request)


def _read_timeout(request: httpx.Request):
    raise httpx.ReadTimeout("The read operation timed out", request=request)


@pytest.mark.parametrize(
    "make",
    [
        lambda mp: post_to_fake_ndif(mp, _connect_error),  # DNS failure on POST /request
        lambda mp: post_to_fake_ndif(mp, answer(503, "Service temporarily unavailable: compute backend is reconnecting.")),
        lambda mp: ConnectionRefusedError(111, "Connection refused"),  # websocket.create_connection
        lambda mp: websocket.WebSocketAddressException(socket.gaierror(-2, "Name or service not known")),
        lambda mp: websocket.WebSocketConnectionClosedException("Connection to remote host was lost."),
        lambda mp: requests.exceptions.ConnectionError("Max retries exceeded (Failed to establish a new connection)"),
    ],
    ids=["dns", "503", "refused", "ws-dns", "ws-dropped", "requests"],
)
def test_network_down_says_check_connection_and_status(with_key, monkeypatch, make):
    message = translated(make(monkeypatch))
    assert "Could not reach NDIF" in message and "internet connection" in message
    assert "https://nnsight.net/status/" in message and "remote=False" in message


@pytest.mark.parametrize(
    "make",
    [
        lambda mp: job_error("Job took longer than timeout: 3600.0 seconds"),
        lambda mp: post_to_fake_ndif(mp, answer(413, text="<html><h1>413 Request Entity Too Large</h1></html>")),
        lambda mp: post_to_fake_ndif(mp, _read_timeout),
        lambda mp: job_error("CUDA out of memory. Tried to allocate 20.00 GiB"),
    ],
    ids=["job-timeout", "413", "read-timeout", "oom"],
)
def test_time_or_size_limit_suggests_smaller_requests(with_key, monkeypatch, make):
    message = translated(make(monkeypatch))
    assert "server limit" in message
    assert "smaller batch" in message and "fewer layers" in message and "shorter rollout" in message


def test_generic_job_error_keeps_server_message_redacted(with_key):
    description = (
        "Traceback (most recent call last):\n  ...\nIndexError: index 7 is out of bounds for dimension 1 "
        f"with size 3 (request headers: ndif-api-key={KEY}, Authorization: Bearer {WANDB})"
    )
    message = translated(job_error(description))
    assert "IndexError: index 7 is out of bounds" in message and "remote='local'" in message


def test_unresolvable_hub_id_says_ndif_needs_a_hub_id(with_key):
    exc = HFValidationError("Repo id must use alphanumeric chars, '-', '_' or '.': ''.")
    assert "Hugging Face hub id" in translated(exc)
    # The hub answers 401 for a repo that does not exist: that is not NDIF rejecting the key.
    import httpx2

    url = f"https://huggingface.co/api/models/{MODEL}"
    response = httpx2.Response(401, request=httpx2.Request("GET", url))
    message = translated(RepositoryNotFoundError(f"401 Client Error. Repository Not Found for url: {url}", response=response))
    assert "Hugging Face hub id" in message and "rejected the API key" not in message


def test_expired_result_link_is_not_blamed_on_the_key(with_key, monkeypatch):
    signature = "9d1f0c3b2a7e6d5c4b3a29180706f5e4"
    url = f"https://storage.ndif.test/results/job-1?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature={signature}"
    real_client = httpx.Client
    handler = answer(403, text="<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>")
    monkeypatch.setattr(httpx, "Client", lambda **kw: real_client(transport=httpx.MockTransport(handler), **kw))
    with pytest.raises(httpx.HTTPStatusError) as info:
        RemoteBackend("k", host="https://ndif.test").download_result(url)
    message = translated(info.value)
    assert "rejected the API key" not in message and "downloading its result failed" in message
    assert signature not in message and "AKIAEXAMPLE" not in message


@pytest.mark.parametrize(
    "exc",
    [
        fl.FutureLensError("layer=99 is out of range"),
        ValueError("bad shape"),
        FileNotFoundError(2, "No such file or directory"),  # an OSError, but not a network one
        KeyError("missing"),
    ],
)
def test_non_remote_exceptions_pass_through_unchanged(exc):
    with pytest.raises(type(exc)) as info, ndif_errors(MODEL):
        raise exc
    assert info.value is exc and translate(exc, MODEL) is None


def test_torch_error_from_traced_code_passes_through():
    with pytest.raises(RuntimeError) as info, ndif_errors(MODEL):
        torch.cat([torch.zeros(2, 3), torch.zeros(2, 4)])
    assert not isinstance(info.value, fl.FutureLensError) and info.value.__cause__ is None


def test_a_real_remote_attempt_against_a_dead_host_ends_in_network_error(tiny, monkeypatch):
    lm, _ = tiny("llama")
    lm.remote = True  # load_model refuses remote=True for a model built here
    monkeypatch.setattr(nnsight.CONFIG.API, "HOST", DEAD_HOST)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", "dummy-key-0000")
    monkeypatch.setattr(nnsight.CONFIG.APP, "REMOTE_LOGGING", False)

    # A built model has no hub id, and nnsight resolves it on the hub before any
    # network activity to NDIF: that ends in the clear hub-id error.
    start = time.monotonic()
    with pytest.raises(fl.FutureLensError, match="Hugging Face hub id"), ndif_errors("tiny-llama"):
        fl.cache(lm, [[1, 2, 3]])

    # Give it an id, as a hub model would have: the request really goes out and is refused.
    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, *a, **k: SimpleNamespace(id="tiny/llama"))
    with pytest.raises(fl.FutureLensError) as info, ndif_errors("tiny-llama"):
        fl.cache(lm, [[1, 2, 3]])
    assert time.monotonic() - start < 30
    assert "Could not reach NDIF" in str(info.value) and "dummy-key-0000" not in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


# --------------------------------------------------------------------------- configuration


def test_importing_remote_loads_neither_torch_nor_nnsight():
    import subprocess
    import sys

    code = "import sys, futurelens.remote; print('torch' in sys.modules, 'nnsight' in sys.modules)"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).split() == ["False", "False"]


def test_check_remote_ready_without_key_says_how_to_get_and_set_one(no_key):
    assert remote.api_key() is None
    with pytest.raises(fl.FutureLensError) as info:
        remote.check_remote_ready(MODEL)
    message = str(info.value)
    assert "No NDIF API key is set" in message and MODEL in message
    assert 'nnsight.CONFIG.set_default_api_key("...")' in message and "export NDIF_API_KEY=..." in message
    assert "https://login.ndif.us" in message


def test_key_exported_after_nnsight_import_is_handed_to_nnsight(no_key, monkeypatch):
    # nnsight reads NDIF_API_KEY only at import; a later export would be ignored by it.
    monkeypatch.setenv("NDIF_API_KEY", KEY)
    assert remote.api_key() == KEY
    remote.check_remote_ready(MODEL)
    assert nnsight.CONFIG.API.APIKEY == KEY


def test_host_follows_nnsight_config_and_must_be_a_url(with_key, monkeypatch):
    assert remote.host() == nnsight.CONFIG.API.HOST
    monkeypatch.setattr(nnsight.CONFIG.API, "HOST", "api.ndif.us")
    with pytest.raises(fl.FutureLensError, match="not a URL.*NDIF_HOST"):
        remote.check_remote_ready(MODEL)


def test_served_models_reports_an_unreachable_host(monkeypatch):
    monkeypatch.setattr(nnsight.CONFIG.API, "HOST", DEAD_HOST)
    with pytest.raises(fl.FutureLensError, match="Could not reach NDIF.*127.0.0.1") as info:
        remote.served_models()
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_served_models_reports_dns_failure(monkeypatch):
    def down(url, **kwargs):  # what nnsight.ndif._get calls to reach the server
        raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution", request=httpx.Request("GET", url))

    monkeypatch.setattr(httpx, "get", down)
    with pytest.raises(fl.FutureLensError, match="Could not reach NDIF.*name resolution.*nnsight.net/status"):
        remote.served_models()


def test_served_models_and_check_served(with_key, monkeypatch):
    status = {
        "deployments": {
            "a": {"repo_id": "openai-community/gpt2", "deployment_level": "HOT", "application_state": "RUNNING"},
            "b": {"repo_id": MODEL, "deployment_level": "WARM", "application_state": "DEPLOYING"},
            "c": {"repo_id": "EleutherAI/gpt-j-6b", "deployment_level": "COLD", "application_state": "RUNNING"},
        }
    }
    monkeypatch.setattr(httpx, "get", lambda url, **kw: httpx.Response(200, json=status, request=httpx.Request("GET", url)))
    assert remote.served_models() == {"openai-community/gpt2": "RUNNING", MODEL: "DEPLOYING"}
    remote.check_remote_ready("gpt2", check_served=True)  # nnsight's hub canonicalisation, owner-less
    with pytest.raises(fl.FutureLensError, match=r"not running.*openai-community/gpt2.*nnsight.net/status.*served_models"):
        remote.check_remote_ready(MODEL, check_served=True)


# --------------------------------------------------------------------------- version skew


def test_server_nnsight_of_another_minor_version_is_refused_with_what_to_do():
    local = nnsight.__version__
    newer = {"python_version": "3.12.1 (main)", "packages": {"nnsight": "0.9.0"}}
    with pytest.raises(fl.FutureLensError, match=rf"NDIF serves nnsight 0.9.0, this client has nnsight {local}.*upgrade futurelens"):
        remote.check_versions(newer)
    older = {"python_version": "3.12.1", "packages": {"nnsight": "0.7.4"}}
    with pytest.raises(fl.FutureLensError, match=r"pip install -U 'nnsight>=0.8.1,<0.9'"):
        remote.check_versions(older)


def test_same_nnsight_other_python_is_a_warning_naming_the_server_python(monkeypatch):
    same = nnsight.__version__
    monkeypatch.setattr(remote.sys, "version", "3.11.7 (main, Oct 1 2026)")
    warnings = remote.check_versions({"python_version": "3.12.1 (main)", "packages": {"nnsight": same}})
    assert len(warnings) == 1 and "NDIF runs Python 3.12.1, this client 3.11.7" in warnings[0] and "3.12-3.13" in warnings[0]
    monkeypatch.setattr(remote.sys, "version", "3.12.4 (main)")
    assert remote.check_versions({"python_version": "3.12.1 (main)", "packages": {"nnsight": same}}) == []


def test_unreachable_env_endpoint_skips_the_check(monkeypatch):
    def down(force_refresh=False):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(nnsight.ndif, "get_remote_env", down)
    assert remote.check_versions() == []
