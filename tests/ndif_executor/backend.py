"""The client half of the stand-in NDIF server: nnsight's own RemoteBackend, with the HTTP hop replaced by a pipe.

`ExecutorBackend` is ``nnsight.intervention.backends.remote.RemoteBackend`` with only
``request`` overridden: the payload is built by nnsight's ``_serialize`` (``pull_env`` +
``RequestModel.serialize``, the bytes a real request carries), executed by NDIF's code in
`server.py` (another Python, futurelens not importable), and the result read back by
nnsight's ``finalize``; a failed job raises nnsight's ``RemoteError`` with NDIF's text,
as a real ERROR status does. Everything a remote=True call does before and after the
wire is the real thing.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import threading
from pathlib import Path

from nnsight.intervention.backends.remote import RemoteBackend, RemoteError

ROOT = Path(__file__).resolve().parents[2]
SERVER_PYTHON = ROOT / ".ndif-venv" / "bin" / "python"


class Server:
    """One stand-in server process (Python 3.12, NDIF's package) serving any number of tiny models."""

    def __init__(self, python: Path = SERVER_PYTHON) -> None:
        if not python.exists():
            raise RuntimeError(f"{python} is missing: build the NDIF server venv with `make ndif-env`.")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["OMP_NUM_THREADS"] = "1"
        self.proc = subprocess.Popen(
            [str(python), "-I", str(Path(__file__).with_name("server.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd="/",
            env=env,
        )
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        """Every request sent: ``{"mode", "bytes", "result"}`` (payload and result sizes), for bound and count assertions."""

    def call(self, message: dict) -> dict:
        data = pickle.dumps(message, protocol=4)
        with self.lock:
            self.proc.stdin.write(struct.pack("<Q", len(data)) + data)
            self.proc.stdin.flush()
            head = self.proc.stdout.read(8)
            if len(head) < 8:
                raise RuntimeError(f"The stand-in NDIF server died (exit code {self.proc.poll()}); see stderr above.")
            (size,) = struct.unpack("<Q", head)
            return pickle.loads(self.proc.stdout.read(size))

    def env(self) -> dict:
        return self.call({"op": "env"})

    def close(self) -> None:
        try:
            self.call({"op": "exit"})
        except (RuntimeError, BrokenPipeError, OSError):
            pass
        self.proc.wait(timeout=30)


class ExecutorBackend(RemoteBackend):
    """nnsight's RemoteBackend whose transport is the stand-in server; ``mode`` is 'trusted' or 'sandbox'."""

    def __init__(self, server: Server, model_key: str, mode: str, env: dict | None = None) -> None:
        super().__init__(model_key, host="https://ndif.invalid", api_key="test-key", env=env)
        self.server, self.mode = server, mode

    def request(self, request, tracer):
        blob = self._serialize(tracer)
        self.server.requests.append({"mode": self.mode, "bytes": len(blob)})
        reply = self.server.call(
            {"op": "run", "key": self.model_key, "payload": blob, "compress": self.compress, "env": self.env, "mode": self.mode}
        )
        if not reply["ok"]:
            raise RemoteError(reply["error"])
        self.server.requests[-1]["result"] = len(reply["data"])
        return self.finalize(reply["data"])
