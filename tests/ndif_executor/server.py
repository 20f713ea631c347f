"""A stand-in NDIF model server: NDIF's own executor code, run on tiny models, in a process without futurelens.

This file runs under the Python 3.12 venv `make ndif-env` builds (``.ndif-venv``: the
PyPI ``ndif`` server package, nnsight, torch, transformers) with ``python -I``, so
neither the repository nor futurelens is importable: a request only runs here if what
it ships is enough, exactly as on NDIF. It shares no code with futurelens or the tests.

What runs a request is NDIF's, not ours:
- trusted keys: ``prepare_traced_block`` + ``execute_traced_block`` from
  ``ndif.services.ray.deployments.modeling.nns`` with ``BackendRequestModel.deserialize``,
  the result saved with NDIF's ``cpu_pickle_module`` (what ``ModelActor.execute`` does);
- the production whitelist (mode ``whitelist``): the trusted path with NDIF's published import guard
  around each phase, as its model actor runs them (`protector.py`: deserialising under the
  deserialisation list, executing under the execution list with builtins restricted); a refused
  import fails the job with NDIF's own ``Module <name> is not whitelisted``;
- untrusted keys: NDIF's process sandbox (``ndif.services.ray.sandbox``): a fresh runner
  process holding a weightless model runs the block, this process drives the real model
  with ``SandboxDriver`` (what ``SandboxModelDeployment.run_in_runner`` does).
Errors come back as NDIF formats them for the client (``format_error``), results compressed as
``prepare_result`` does.

Protocol on stdin/stdout: length-prefixed pickles. ``{"op": "run", "key", "payload",
"compress", "env", "mode": "trusted" | "whitelist" | "sandbox"}`` -> ``{"ok": True, "data": bytes}`` or
``{"ok": False, "error": text}``; ``{"op": "env"}`` -> the server's versions.
"""

import importlib.util
import io
import pickle
import struct
import sys
import traceback
from pathlib import Path


def _read(stream):
    head = stream.read(8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(size))


def _write(stream, obj):
    data = pickle.dumps(obj, protocol=4)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def main():
    if importlib.util.find_spec("futurelens") is not None:
        raise SystemExit("futurelens is importable in the stand-in server: it must not be (run with python -I).")
    channel_in, channel_out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # the block's prints must not corrupt the channel

    import torch

    torch.set_num_threads(1)
    from ndif.common.errors import RequestError
    from ndif.common.schema.request import BackendRequestModel
    from ndif.services.ray.deployments.modeling.nns import block_scope, execute_traced_block, prepare_traced_block
    from ndif.services.ray.deployments.modeling.util import cpu_pickle_module
    from ndif.services.ray.sandbox.driver import RunnerError, SandboxDriver
    from ndif.services.ray.sandbox.host import Pool, spawn
    from nnsight.intervention.serialization import CustomCloudUnpickler
    from nnsight.modeling.huggingface import HuggingFaceModel
    from nnsight.tracing.util import clean_traceback

    class PatientPool(Pool):
        """NDIF's runner pool, waiting up to 5 minutes (not 30 s) for a runner's socket: on a loaded 2-core test
        machine a runner's start (torch, nnsight, a meta model) can take longer. Timing only; the runner is NDIF's."""

        def _spawn(self):
            return spawn(python=self.python, quiet=self.quiet, timeout=300.0, peers=self.peers,
                         model_key=self.model_key, trust_remote_code=self.trust_remote_code)

    models, pools = {}, {}

    def model_for(key):
        if key not in models:
            # As ModelActor.load_from_disk: the wrapper rebuilt from the key, weights dispatched, frozen.
            model = HuggingFaceModel.from_model_key(key, dispatch=True, dtype="float32")
            model._module.requires_grad_(False)
            models[key] = model
        return models[key]

    def trusted(model, message):
        with block_scope():
            tracer, _ = prepare_traced_block(model, message["payload"], message["compress"], BackendRequestModel.deserialize)
            saved = execute_traced_block(tracer, torch.float32)
        buffer = io.BytesIO()
        torch.save(saved, buffer, pickle_module=cpu_pickle_module())
        return buffer.getvalue()

    spec = importlib.util.spec_from_file_location("ndif_protector", Path(__file__).with_name("protector.py"))
    protector = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(protector)

    def whitelisted(model, message):
        # NDIF's ModelActor: pre() deserialises under the deserialisation list, execute() runs the block
        # under the execution list with builtins=True; the result is saved outside both.
        payload = message["payload"]
        if message["compress"]:  # the server's own unpacking, before any of the request's objects exist
            import zstandard

            payload = zstandard.ZstdDecompressor().decompress(payload)
        with block_scope():
            with protector.Protector(protector.WHITELISTED_MODULES_DESERIALIZATION, unpickler=CustomCloudUnpickler):
                tracer, _ = prepare_traced_block(model, payload, False, BackendRequestModel.deserialize)
            with protector.Protector(protector.WHITELISTED_MODULES, builtins=True):
                saved = execute_traced_block(tracer, torch.float32)
        buffer = io.BytesIO()
        torch.save(saved, buffer, pickle_module=cpu_pickle_module())
        return buffer.getvalue()

    def sandboxed(model, message):
        key = message["key"]
        if key not in pools:
            pools[key] = PatientPool(size=1, python=sys.executable, model_key=key)
        sandbox = pools[key].acquire(timeout=300.0)
        connection = sandbox.connection()
        try:
            connection.send((message["payload"], message["compress"], str(torch.float32), None, message.get("env") or {}))
            data, _ = SandboxDriver(model, torch.float32, on_log=lambda text: None).pump(connection)
            return data
        finally:
            connection.close()
            sandbox.stop()

    def format_error(exc):
        # ModelActor.format_error / SandboxHost.format_error: what the client's RemoteError carries.
        if isinstance(exc, (RequestError, RunnerError)):
            return str(exc)
        return "".join(traceback.format_exception(type(exc), exc, clean_traceback(exc.__traceback__)))

    while True:
        message = _read(channel_in)
        if message is None or message.get("op") == "exit":
            break
        if message["op"] == "env":
            import nnsight

            _write(channel_out, {"ok": True, "python": sys.version, "nnsight": nnsight.__version__, "torch": torch.__version__})
            continue
        try:
            model = model_for(message["key"])
            model._remoteable_set_env(message.get("env") or {})
            run = {"trusted": trusted, "whitelist": whitelisted, "sandbox": sandboxed}[message["mode"]]
            data = run(model, message)
            if message["compress"]:  # ModelActor.prepare_result: the result is compressed as the request was
                import zstandard

                data = zstandard.ZstdCompressor(level=3).compress(data)
            _write(channel_out, {"ok": True, "data": data})
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the client, as NDIF does
            _write(channel_out, {"ok": False, "error": format_error(exc)})
    for pool in pools.values():
        pool.close()


if __name__ == "__main__":
    main()
