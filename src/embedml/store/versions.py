"""The one rule for names, versions, specifiers and aliases.

* Model names: letters, digits, ``-``, ``_`` and ``.``; they start with a letter or digit,
  so ``..`` or a path separator can never appear.
* Versions are PEP 440 (:class:`packaging.version.Version`) and compare as such:
  ``"1.10" > "1.9"``; ``"1.0"`` and ``"1"`` are the same version, kept in the folder named
  by :func:`canonical_version` (``"1"``), while the manifest keeps the spelling it was saved
  with (:func:`display_version`: ``"2.0rc1"`` stays ``"2.0rc1"``) for display.
* Alias names start with a letter, versions with a digit, so ``fraud@production`` and
  ``fraud@1.2`` are never ambiguous.
* A *spec* is ``"latest"``, an exact version (``"1.2"``), a PEP 440 specifier
  (``">=1.2,<2"``), or an alias written ``"@production"``. A *reference* is
  ``NAME[@SPEC]`` (``"churn@production"``, ``"churn@1.2"``), see :func:`parse_ref`.
* ``"latest"`` follows pip: the highest final release, or the highest pre-release when
  there is no final release.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from packaging.version import InvalidVersion, Version

from ..errors import InvalidNameError

if TYPE_CHECKING:
    from packaging.specifiers import SpecifierSet

__all__ = [
    "MAX_VERSION_LENGTH",
    "Spec",
    "canonical_version",
    "check_alias",
    "display_version",
    "check_name",
    "next_major",
    "parse_ref",
    "parse_spec",
    "parse_version",
    "select",
]

# fullmatch, not match + "$": "$" also matches before a trailing newline ("m\n").
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,127}")
_RESERVED_ALIASES = frozenset({"latest"})
#: The longest version string accepted (like names and aliases).
MAX_VERSION_LENGTH = 128


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise :class:`InvalidNameError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidNameError(
            f"invalid model name {name!r}: use letters, digits, '-', '_' and '.', "
            "starting with a letter or digit (no path separators, no '..')"
        )
    return name


def check_alias(alias: str) -> str:
    """Return ``alias`` (without a leading ``@``) if valid, else raise :class:`InvalidNameError`."""
    if isinstance(alias, str) and alias.startswith("@"):
        alias = alias[1:]
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias) or ".." in alias:
        raise InvalidNameError(
            f"invalid alias {alias!r}: an alias starts with a letter and has letters, "
            "digits, '-', '_' and '.'"
        )
    if alias in _RESERVED_ALIASES:
        raise InvalidNameError(f"{alias!r} is reserved and cannot be an alias")
    return alias


def parse_version(version: str | int | Version) -> Version:
    """Parse a PEP 440 version; raise :class:`InvalidNameError` if it is not one."""
    if isinstance(version, Version):
        return version
    text = str(version)
    if len(text) > MAX_VERSION_LENGTH:  # before anything else: a version becomes a folder name
        raise InvalidNameError(
            f"invalid version {text[:40]!r}...: longer than {MAX_VERSION_LENGTH} characters"
        )
    if not text[:1].isdigit():
        raise InvalidNameError(f"invalid version {text!r}: a version starts with a digit")
    try:
        return Version(text)
    except InvalidVersion:
        raise InvalidNameError(f"invalid version {text!r}: not a PEP 440 version") from None


def canonical_version(version: str | int | Version) -> str:
    """The one spelling a version is stored under (``"1.0"`` -> ``"1"``).

    Same result as ``packaging.utils.canonicalize_version``, whose module costs a fresh
    process more to import than the rest of the load path (it pulls in ``packaging.tags``).
    """
    v = parse_version(version)
    release = list(v.release)
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    epoch = f"{v.epoch}!" if v.epoch else ""
    return epoch + ".".join(map(str, release)) + str(v)[len(v.base_version) :]


def display_version(version: str | int | Version) -> str:
    """The spelling a version is shown with: PEP 440's normal form, trailing zeros kept
    (``"2.0RC1"`` -> ``"2.0rc1"``, ``"1.0"`` -> ``"1.0"``). Raises :class:`InvalidNameError`."""
    return str(parse_version(version))


def next_major(existing: Iterable[Version]) -> str:
    """The next major version after the highest existing one (``"1"`` when none)."""
    top = max(existing, default=None)
    return "1" if top is None else str(top.major + 1)


@dataclass(frozen=True)
class Spec:
    """A parsed version spec: at most one of ``alias``, ``exact`` or ``specifier`` is set;
    none of them means ``"latest"``."""

    text: str
    alias: str | None = None
    exact: Version | None = None
    specifier: SpecifierSet | None = None


def parse_spec(spec: str | int | Version | None) -> Spec:
    """Parse ``"latest"``, ``"1.2"``, ``">=1,<2"`` or ``"@production"`` into a :class:`Spec`."""
    if spec is None:
        spec = "latest"
    if isinstance(spec, Version | int):
        return Spec(str(spec), exact=parse_version(spec))
    text = str(spec).strip()
    if text == "latest":
        return Spec(text)
    if text.startswith("@"):
        return Spec(text, alias=check_alias(text))
    if text[:1].isdigit():
        return Spec(text, exact=parse_version(text))
    if _ALIAS.fullmatch(text):  # a bare word is no version or specifier: an alias without "@"
        raise InvalidNameError(
            f"invalid version spec {text!r}: did you mean '@{text}'? (an alias is written "
            "with '@'; a version starts with a digit)"
        )
    # Imported here: "latest", exact versions and aliases (what ``load`` usually gets) do not
    # need it, and a fresh process loading a model pays for every import.
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        return Spec(text, specifier=SpecifierSet(text))
    except InvalidSpecifier:
        raise InvalidNameError(
            f"invalid version spec {text!r}: use 'latest', a version such as '1.2', "
            "a specifier such as '>=1.2,<2', or an alias such as '@production'"
        ) from None


def parse_ref(ref: str) -> tuple[str, str]:
    """Split a reference ``NAME[@SPEC]``: ``"fraud@production"`` -> ``("fraud", "@production")``,
    ``"fraud@1.2"`` -> ``("fraud", "1.2")``, ``"fraud"`` -> ``("fraud", "latest")``.

    An alias needs no second ``@`` here (``fraud@production``): aliases start with a letter
    and versions with a digit. Raises :class:`InvalidNameError` for a bad name or spec.
    """
    if not isinstance(ref, str):
        raise InvalidNameError(f"a model reference is a string NAME[@SPEC], got {ref!r}")
    name, at, spec = ref.partition("@")
    check_name(name)
    if not at:
        return name, "latest"
    spec = spec.strip()
    if not spec:
        raise InvalidNameError(
            f"{ref!r}: nothing after '@'; write NAME, NAME@VERSION or NAME@ALIAS"
        )
    # "latest" is a reserved word, not an alias.
    if spec[:1].isalpha() and spec != "latest":
        spec = "@" + spec
    parse_spec(spec)
    return name, spec


def select(spec: Spec, versions: Iterable[Version]) -> Version | None:
    """The version ``spec`` picks among ``versions`` (aliases are resolved by the store)."""
    candidates = list(versions)
    if spec.exact is not None:
        return spec.exact if spec.exact in candidates else None
    if spec.alias is not None:
        raise ValueError("alias specs are resolved by the store, not by select()")
    if spec.specifier is None:  # "latest": like pip, pre-releases only when nothing else
        finals = [v for v in candidates if not v.is_prerelease]
        return max(finals or candidates, default=None)
    return max(spec.specifier.filter(candidates), default=None)
