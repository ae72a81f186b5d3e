"""The on-disk manifest of one model version (``manifest.json``), as a pydantic model."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import IntegrityError

__all__ = ["MANIFEST_FILE", "Manifest", "environment"]

MANIFEST_FILE = "manifest.json"


class Manifest(BaseModel):
    """What the store knows about one immutable model version.

    ``frameworks`` maps distribution names (``scikit-learn``, ``onnxruntime``, ``torch`` ...)
    to the versions installed when the version was saved; ``python`` and ``embedml`` likewise.
    ``extra_files`` maps other files in the version folder (for example a reference profile)
    to their SHA-256, so that they are verified like the artifact.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    manifest_version: int = 1
    name: str
    version: str
    format: str
    artifact: str
    sha256: str
    size: int
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    input_schema: dict[str, Any] | list[dict[str, Any]] | None = None
    output_schema: dict[str, Any] | list[dict[str, Any]] | None = None
    preprocess: str | None = None
    postprocess: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    python: str = Field(default_factory=platform.python_version)
    embedml: str = ""
    frameworks: dict[str, str] = Field(default_factory=dict)
    extra_files: dict[str, str] = Field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise with sorted keys (stable bytes, so a signature over them is stable)."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str = "manifest") -> Manifest:
        """Parse a manifest; raise :class:`IntegrityError` if it is not valid JSON or incomplete."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
            raise IntegrityError(f"{where} is not a valid manifest: {loc}: {first['msg']}") from exc


def environment(distributions: list[str]) -> dict[str, str]:
    """Installed versions of the given distributions (missing ones are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in distributions:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found
