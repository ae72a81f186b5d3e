"""A test server in a process of its own: started on a free port of 127.0.0.1, waited for
(bounded) until it answers HTTP, stopped (SIGTERM, then SIGKILL after a bounded wait) at
the end, and killed by the kernel if the test process dies first.

``s3_server.py`` (moto) and ``gcs_server.py`` (fake-gcs-server) build on it. Only the
standard library is imported: ``conftest.py`` imports those modules, and the suite must
still start where their packages are not installed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

HOST = "127.0.0.1"
STOP_TIMEOUT_S = 15.0

# Runs first in the server process: ask the kernel to SIGTERM it when the test process dies
# (even by SIGKILL, when no fixture finalizer can run; the setting survives the exec), then
# become the server. Set in the child itself: preexec_fn is unsafe with threads.
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


@dataclass
class ServerProcess:
    """A running server process: its address, process and log file."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def endpoint(self) -> str:
        """The endpoint URL (``http://127.0.0.1:PORT``)."""
        return f"http://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """The server's output so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL after a bounded wait); idempotent."""
        end_group(self.process, signal.SIGTERM)


def end_group(process: subprocess.Popen[bytes], sig: int) -> None:
    """Sends ``sig`` to the process group of ``process`` (started with
    ``start_new_session``) and waits for it, with SIGKILL after a bounded wait; nothing if
    it has already ended."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT_S)


S = TypeVar("S", bound=ServerProcess)


@dataclass(frozen=True)
class Bucket:
    """A fresh bucket on a test server; ``url`` is ``SCHEME://NAME``."""

    scheme: ClassVar[str]
    name: str
    server: ServerProcess

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.name}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    """True once anything answers HTTP at ``url`` (an error reply counts)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _wait_until_ready(server: ServerProcess, probe: str, what: str, timeout: float) -> bool:
    """Polls until the server answers (True), its process exits (False), or ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if not server.alive():
            return False
        if _answers(server.endpoint + probe):
            return True
        time.sleep(delay)  # bounded poll of another process; nothing to wait on instead
        delay = min(delay * 2, 0.5)
    raise RuntimeError(
        f"the {what} on port {server.port} did not answer within {timeout:.0f} s;"
        f" its output:\n{server.log()}"
    )


@contextlib.contextmanager
def start_server(
    kind: type[S],
    argv: Callable[[int], list[str]],
    *,
    what: str,
    log_name: str,
    probe: str,
    start_timeout: float,
    log_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[S]:
    """Starts ``argv(port)`` (an executable and its arguments) on a free port as a
    ``kind``; stops it on exit, even on error. ``probe``: the path that answers once it
    is ready; ``what`` names it in errors, ``log_name`` its log file; ``env`` adds to its
    environment. Raises
    ``RuntimeError`` (with the server's output) when it cannot be started."""
    log_dir = Path(log_dir or tempfile.gettempdir())
    server: S | None = None
    try:
        for _attempt in range(3):  # another process may take the free port before it binds
            port = _free_port()
            log_path = log_dir / f"{log_name}-{port}-{uuid.uuid4().hex[:8]}.log"
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-c", _LAUNCH, str(os.getpid()), *argv(port)],
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **(env or {})},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group: stop() signals it and nothing else
                )
            server = kind(port=port, process=process, log_path=log_path)
            if _wait_until_ready(server, probe, what, start_timeout):
                break
            server.stop()
        else:
            raise RuntimeError(f"the {what} exited at start; its output:\n{server.log()}")
        yield server
    finally:
        if server is not None:
            server.stop()
