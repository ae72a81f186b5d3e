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
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers_servers import HOST, Bucket, ServerProcess, start_server

ACCESS_KEY = "embedml-test-key"
SECRET_KEY = "embedml-test-secret"
REGION = "us-east-1"
# A loaded 2-core machine can take several seconds to import moto and bind.
START_TIMEOUT_S = 90.0

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
class S3Server(ServerProcess):
    """A running moto server process: its address, process, log file and admin client."""

    _admin: Any = field(default=None, repr=False)

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

    def create_bucket(self, name: str) -> None:
        self.admin().create_bucket(Bucket=name)

    def stop(self) -> None:
        """Closes the admin client, then stops the server; idempotent."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        super().stop()


def start_s3_server(
    log_dir: Path | None = None, *, env: dict[str, str] | None = None
) -> contextlib.AbstractContextManager[S3Server]:
    """Starts ``moto.server`` (moto's own entry point) on a free port of 127.0.0.1 as a
    context manager; stops it on exit, even on error.

    ``env`` adds variables to the server's environment, for example
    ``INITIAL_NO_AUTH_ACTION_COUNT="0"`` to make it check credentials (moto accepts any by
    default). Raises ``RuntimeError`` (with the server's output) when it cannot be started.
    """
    return start_server(
        S3Server,
        lambda port: [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        what="S3 test server", log_name="moto", probe="/", start_timeout=START_TIMEOUT_S,
        log_dir=log_dir, env=env,
    )  # fmt: skip


@dataclass(frozen=True)
class S3Bucket(Bucket):
    """A fresh bucket on the test server; ``url`` is ``s3://NAME``."""

    scheme = "s3"
    server: S3Server

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
