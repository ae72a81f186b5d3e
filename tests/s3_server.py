"""A real S3-compatible server for the tests: moto's server mode, in a process of its own.

Nothing here patches a client or fakes S3 in-process: the tests talk HTTP to
``python -m moto.server`` (moto's own entry point) listening on 127.0.0.1.

Fixtures (registered in ``conftest.py``):

- ``s3_server`` (session): starts the server on a free port, waits (bounded) until it
  answers, and stops it when the session ends, whether the tests passed or not.
- ``s3_bucket`` (function): a fresh, empty bucket on that server, with ``AWS_ENDPOINT_URL``,
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and ``AWS_DEFAULT_REGION`` set for the test
  (and a developer's own AWS profile, config files and metadata service kept out of it).

``start_s3_server()`` is the same server as a context manager, for a test that needs one of
its own (for example to stop it in the middle of an operation).

Only the standard library is imported at module level: ``conftest.py`` imports this module,
and the suite must still start where the ``s3`` extra is not installed.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
ACCESS_KEY = "embedml-test-key"
SECRET_KEY = "embedml-test-secret"
REGION = "us-east-1"
# A loaded 2-core machine can take several seconds to import moto and bind.
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0

# Runs in the server process: ask the kernel to SIGTERM it when the test process dies
# (even by SIGKILL, when no fixture finalizer can run), then hand over to moto's own
# `moto_server` entry point. Set in the child itself: preexec_fn is unsafe with threads.
_LAUNCH = """\
import os, signal, sys
parent = int(sys.argv.pop(1))
if sys.platform == "linux":
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(0)
from moto.server import main
main(sys.argv[1:])
"""

# Variables that would point botocore at something other than the test server.
_AWS_VARS_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@dataclass
class S3Server:
    """A running moto server process: its address, process and log file."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    _admin: Any = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """The endpoint URL (``http://127.0.0.1:PORT``)."""
        return f"http://{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        """The ``AWS_*`` variables that make any AWS client talk to this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            # No ~/.aws files and no instance-metadata probing from a test.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def storage_options(self) -> dict[str, Any]:
        """The same settings as explicit s3fs ``storage_options`` (no environment needed)."""
        return {
            "endpoint_url": self.endpoint,
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "client_kwargs": {"region_name": REGION},
        }

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """The server's output so far (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def admin(self) -> Any:
        """A synchronous botocore client for set-up and clean-up (buckets), made once.

        Plain botocore (a dependency of s3fs) rather than the layer under test: it starts no
        event-loop thread, so fixtures leave no thread behind for ``threads_checked``.
        """
        if self._admin is None:
            import botocore.config
            import botocore.session

            self._admin = botocore.session.get_session().create_client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                region_name=REGION,
                config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 3}),
            )
        return self._admin

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL after a bounded wait); idempotent."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
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
    """True once anything answers HTTP at ``endpoint`` (an S3 error reply counts)."""
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _wait_until_ready(server: S3Server, timeout: float) -> bool:
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
        f"the S3 test server on port {server.port} did not answer within {timeout:.0f} s;"
        f" its output:\n{server.log()}"
    )


@contextlib.contextmanager
def start_s3_server(
    log_dir: Path | None = None, *, env: dict[str, str] | None = None
) -> Iterator[S3Server]:
    """Starts ``moto.server`` on a free port of 127.0.0.1; stops it on exit, even on error.

    ``env`` adds variables to the server's environment, for example
    ``INITIAL_NO_AUTH_ACTION_COUNT="0"`` to make it check credentials (moto accepts any by
    default). Raises ``RuntimeError`` (with the server's output) when it cannot be started.
    """
    log_dir = Path(log_dir or tempfile.gettempdir())
    server: S3Server | None = None
    try:
        for _attempt in range(3):  # another process may take the free port before moto binds
            port = _free_port()
            log_path = log_dir / f"moto-{port}-{uuid.uuid4().hex[:8]}.log"
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-c", _LAUNCH, str(os.getpid()), "-H", HOST, "-p", str(port)],
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **(env or {})},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group: stop() signals it and nothing else
                )
            server = S3Server(port=port, process=process, log_path=log_path)
            if _wait_until_ready(server, START_TIMEOUT_S):
                break
            server.stop()
        else:
            raise RuntimeError(f"the S3 test server exited at start; its output:\n{server.log()}")
        yield server
    finally:
        if server is not None:
            server.stop()


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the test server; ``url`` is ``s3://NAME``."""

    name: str
    server: S3Server

    @property
    def url(self) -> str:
        return f"s3://{self.name}"

    def logged_requests(self, *parts: str) -> int:
        """Lines of the server's request log holding every one of ``parts``, once every
        earlier request is logged (a marker request is sent, and waited for in the log)."""
        marker = f"marker-{uuid.uuid4().hex}"
        with pytest.raises(Exception):  # noqa: B017,PT011 (any answer: it is only a marker)
            self.server.admin().get_object(Bucket=self.name, Key=marker)
        deadline = time.monotonic() + 60
        while marker not in self.server.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the server never logged the marker request"
            time.sleep(0.05)  # another process writes the log; nothing to wait on instead
        lines = self.server.log_path.read_text(errors="replace").splitlines()
        return sum(all(p in line for p in parts) for line in lines)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3-compatible server (moto, its own process) for the whole test session."""
    pytest.importorskip("moto.server", reason="the S3 test server needs moto[server] (dev extra)")
    with start_s3_server(tmp_path_factory.mktemp("s3-server")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A new empty bucket, with the test's ``AWS_*`` environment pointing at the server."""
    for name in _AWS_VARS_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = S3Bucket(name=f"embedml-{uuid.uuid4().hex[:24]}", server=s3_server)
    admin = s3_server.admin()
    admin.create_bucket(Bucket=bucket.name)
    yield bucket
    if s3_server.alive():  # empty and drop it so the server's memory stays small
        pages = admin.get_paginator("list_objects_v2").paginate(Bucket=bucket.name)
        for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                admin.delete_objects(Bucket=bucket.name, Delete={"Objects": keys})
        admin.delete_bucket(Bucket=bucket.name)
