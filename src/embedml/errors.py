"""The one error hierarchy of embedml.

Every error embedml raises on purpose derives from :class:`EmbedMLError`, so
``except embedml.EmbedMLError`` catches all of them. Some also derive from a
builtin so that generic code keeps working (``LookupError``, ``ValueError``,
``TimeoutError``)::

    EmbedMLError
    ├── InvalidNameError (ValueError)        bad model name, version or alias
    ├── ConfigurationError (ValueError)      an option given to save/load/Batching is invalid
    │   └── MissingExtraError (ImportError)  an optional package is not installed
    ├── NotFoundError (LookupError)
    │   ├── ModelNotFoundError               no such model in the store
    │   ├── VersionNotFoundError             no version / alias matches the spec
    │   └── RequestNotFoundError             log_outcome: no remembered prediction has that id
    ├── VersionExistsError                   versions are immutable
    ├── StoreError                           the store refused an operation
    │   ├── AliasMovedError                  an alias moved while a promotion gate ran
    │   └── RemoteStoreError                 an object-store operation failed (url, operation, key)
    │       ├── StoreUnavailableError        network, timeout, throttling (after retries)
    │       ├── StoreAccessError (PermissionError)  credentials refused, access denied
    │       ├── StoreNotFoundError (NotFoundError)  the bucket or root folder does not exist
    │       ├── ObjectNotFoundError (NotFoundError) no object at that key
    │       ├── PreconditionFailedError      a compare-and-swap write lost (the ETag changed)
    │       │   └── ObjectExistsError (FileExistsError)  a create-only write lost
    │       ├── CacheMissError (NotFoundError)  offline: the local cache does not hold it
    │       └── NotAStoreError                  the prefix holds something else than a store
    ├── IntegrityError                       artifact hash or signature mismatch
    │   ├── SignatureError                   unsigned or wrongly signed version
    │   └── UntrustedArtifactError           pickle bytes nobody vouched for / type refused
    ├── FrameworkVersionError                installed framework differs (strict_versions)
    ├── UnsupportedFormatError               unknown or unusable model format
    ├── SchemaError (ValueError)             input/output does not match the schema
    ├── PredictionError                      the model or a processing step raised
    ├── HandleClosedError                    the handle was closed
    ├── OverloadedError                      the batching queue is full
    ├── PredictionTimeoutError (TimeoutError) the call's deadline passed
    ├── GateFailedError                      a promotion gate rejected a version
    └── BrokerError                          a message broker (Redis) refused, or failed too long
        └── BrokerUnavailableError           it did not answer (retried until a deadline)

Warnings (not errors): :class:`FrameworkVersionWarning` (a ``UserWarning``), issued when
the installed scikit-learn / torch / onnxruntime differs from the one in the manifest.

This module depends on nothing else in embedml.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "EmbedMLError",
    "InvalidNameError",
    "ConfigurationError",
    "MissingExtraError",
    "NotFoundError",
    "ModelNotFoundError",
    "VersionNotFoundError",
    "RequestNotFoundError",
    "VersionExistsError",
    "StoreError",
    "AliasMovedError",
    "RemoteStoreError",
    "StoreUnavailableError",
    "StoreAccessError",
    "StoreNotFoundError",
    "ObjectNotFoundError",
    "PreconditionFailedError",
    "ObjectExistsError",
    "CacheMissError",
    "NotAStoreError",
    "IntegrityError",
    "SignatureError",
    "UntrustedArtifactError",
    "FrameworkVersionError",
    "FrameworkVersionWarning",
    "UnsupportedFormatError",
    "SchemaError",
    "PredictionError",
    "HandleClosedError",
    "OverloadedError",
    "PredictionTimeoutError",
    "GateFailedError",
    "BrokerError",
    "BrokerUnavailableError",
    "import_extra",
]


class EmbedMLError(Exception):
    """Base class of every error raised by embedml."""


class InvalidNameError(EmbedMLError, ValueError):
    """A model name, version string or alias name is not valid."""


class ConfigurationError(EmbedMLError, ValueError):
    """An option given to ``save``, ``load`` or a settings object is invalid; says the allowed range."""


class MissingExtraError(ConfigurationError, ImportError):
    """A feature needs an optional package that cannot be imported.

    ``extra`` is the embedml extra that installs it (``pip install 'embedml[<extra>]'``, which
    the message says); ``name`` (as for any ``ImportError``) is the missing package. Also an
    ``ImportError``, so code that guards optional features with ``except ImportError`` works.
    """

    def __init__(self, message: str, *, extra: str, name: str) -> None:
        super().__init__(message)
        self.msg = message  # what ImportError.__init__ would set
        self.extra = extra
        self.name = name

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_missing_extra, (str(self), self.extra, self.name))


def _rebuild_missing_extra(message: str, extra: str, name: str) -> MissingExtraError:
    return MissingExtraError(message, extra=extra, name=name)


def import_extra(extra: str, what: str, *modules: str) -> list[Any]:
    """Import ``modules`` (dotted names), which ``what`` needs, and return them in order.

    Raises :class:`MissingExtraError` when one cannot be imported: its message says
    ``what``, the first module's package, the import's own error and
    ``pip install 'embedml[<extra>]'``; its ``name`` is that package.
    """
    try:
        return [importlib.import_module(module) for module in modules]
    except ImportError as exc:
        package = modules[0].partition(".")[0]
        raise MissingExtraError(
            f"{what}: {package} cannot be imported ({exc}): pip install 'embedml[{extra}]'",
            extra=extra,
            name=package,
        ) from exc


class NotFoundError(EmbedMLError, LookupError):
    """Something asked for is not in the store."""


class ModelNotFoundError(NotFoundError):
    """No model of that name exists in the store. The message lists the models that do."""


class VersionNotFoundError(NotFoundError):
    """No version of the model matches the spec. The message lists versions and aliases."""


class RequestNotFoundError(NotFoundError):
    """``log_outcome`` got a request id the handle does not remember (unknown, already
    joined, or older than the remembered window)."""


class VersionExistsError(EmbedMLError, FileExistsError):
    """A version with that number already exists; versions are immutable."""


class StoreError(EmbedMLError):
    """The store refused an operation (for example deleting a version an alias points to)."""


class RemoteStoreError(StoreError):
    """An operation on an object store (``s3://``, ``gs://``, ``file://``) failed.

    ``url`` is the store, ``operation`` what was being done (``"get"``, ``"put"``,
    ``"list"``, ...), ``key`` the object (``None`` for the store itself). The message starts
    with all three; the backend's own exception is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, url: str, operation: str, key: str | None = None) -> None:
        where = f"{url}/{key}" if key else url
        super().__init__(f"{operation} {where}: {message}")
        self.url = url
        self.operation = operation
        self.key = key
        self.reason = message

    def __reduce__(self) -> tuple[Any, ...]:
        state = (self.reason, self.url, self.operation, self.key)
        return (_rebuild_remote_store_error, (type(self), *state))


def _rebuild_remote_store_error(
    cls: type[RemoteStoreError], message: str, url: str, operation: str, key: str | None
) -> RemoteStoreError:
    return cls(message, url=url, operation=operation, key=key)


class StoreUnavailableError(RemoteStoreError):
    """The store did not answer, timed out or kept throttling, after the retries."""


class StoreAccessError(RemoteStoreError, PermissionError):
    """The store refused the credentials, or they do not allow the operation."""


class StoreNotFoundError(RemoteStoreError, NotFoundError):
    """The bucket (or the root folder of a ``file://`` store) does not exist."""


class ObjectNotFoundError(RemoteStoreError, NotFoundError):
    """No object exists at that key."""


class PreconditionFailedError(RemoteStoreError):
    """A conditional write lost: the object changed (or vanished) since its ETag was read."""


class ObjectExistsError(PreconditionFailedError, FileExistsError):
    """A create-only write lost: an object already exists at that key."""


class CacheMissError(RemoteStoreError, NotFoundError):
    """Offline mode: the local cache does not hold what was asked for."""


class NotAStoreError(RemoteStoreError):
    """The URL's prefix holds objects but no embedml store marker: embedml refuses to
    read or write there (an empty or missing prefix is an empty store)."""


class AliasMovedError(StoreError):
    """:meth:`ModelStore.promote <embedml.ModelStore.promote>` did not move the alias: another
    move changed it while the gate was scoring (against the version it pointed to before).
    ``expected`` is that version, ``found`` the one it points to now (``None``: removed).
    Promote again to score against the new one."""

    def __init__(
        self, message: str, *, expected: str | None = None, found: str | None = None
    ) -> None:
        super().__init__(message)
        self.expected = expected
        self.found = found


class IntegrityError(EmbedMLError):
    """An artifact does not match its manifest (hash, size or signature)."""


class SignatureError(IntegrityError):
    """A version has no signature, or one that does not match, while one is required."""


class UntrustedArtifactError(IntegrityError):
    """Pickle bytes nobody vouched for, or a type refused by restricted unpickling.

    ``type_name`` is the refused ``module.qualname`` when a restricted load refused a type.
    """

    def __init__(self, message: str, *, type_name: str | None = None) -> None:
        super().__init__(message)
        self.type_name = type_name

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_untrusted, (str(self), self.type_name))


def _rebuild_untrusted(message: str, type_name: str | None) -> UntrustedArtifactError:
    return UntrustedArtifactError(message, type_name=type_name)


class FrameworkVersionError(EmbedMLError):
    """With ``strict_versions=True``: an installed framework differs from the manifest's."""


class FrameworkVersionWarning(UserWarning):
    """The installed version of a framework differs from the one the model was saved with."""


class UnsupportedFormatError(EmbedMLError):
    """The model format is unknown, cannot be inferred, or its framework is missing."""


class SchemaError(EmbedMLError, ValueError):
    """An input or output does not match the schema.

    Attributes say where: ``field`` (field or tensor name), ``index`` (record index in a
    batch), ``expected`` and ``got``, and ``model`` / ``version`` once a handle adds them.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        index: int | None = None,
        expected: Any = None,
        got: Any = None,
        model: str | None = None,
        version: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.index = index
        self.expected = expected
        self.got = got
        self.model = model
        self.version = version

    def __str__(self) -> str:
        where = []
        if self.model is not None:
            where.append(f"{self.model}@{self.version}")
        if self.index is not None:
            where.append(f"record {self.index}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_schema_error, (self.message, self.__dict__))


def _rebuild_schema_error(message: str, state: dict[str, Any]) -> SchemaError:
    err = SchemaError(message)
    err.__dict__.update(state)
    return err


class PredictionError(EmbedMLError):
    """The model, or a pre/post-processing step, raised. The original is chained as ``__cause__``.

    ``stage`` is one of ``"preprocess"``, ``"model"``, ``"postprocess"``, ``"output"``.
    """

    def __init__(self, message: str, *, stage: str = "model", index: int | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.index = index


class HandleClosedError(EmbedMLError):
    """The handle was closed; it serves no more calls."""


class OverloadedError(EmbedMLError):
    """The batching queue is full; the call was refused at once (back off and retry)."""


class PredictionTimeoutError(EmbedMLError, TimeoutError):
    """The call's deadline passed before a result was ready; the request was dropped."""


class GateFailedError(EmbedMLError):
    """A promotion gate rejected a candidate version. ``scores`` holds what was measured."""

    def __init__(self, message: str, *, scores: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.scores = dict(scores or {})


class BrokerError(EmbedMLError):
    """A message broker (a Redis server, for stream consumers) could not be reached, or
    kept failing, until the configured deadline passed; or it refused a command outright
    (a wrong password, a key of another type). ``url`` names the broker (without its
    password) and ``operation`` what was being done (``"read"``, ``"write"``,
    ``"ack"``...); the broker client's own exception is chained as ``__cause__``. No entry
    is acknowledged without its output when this is raised: what was read stays pending in
    the consumer group and is delivered again."""

    def __init__(self, message: str, *, url: str = "", operation: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.operation = operation


class BrokerUnavailableError(BrokerError):
    """The broker did not answer (connection refused or dropped, a timeout, a server still
    loading its data). A :class:`~embedml.offline.broker.StreamRunner` retries it with
    backoff until its ``broker_timeout_s``, then raises :class:`BrokerError`."""
