"""Names, PEP 440 versions, specifiers and aliases (embedml.store.versions and their use by the store)."""

from __future__ import annotations

import pytest
from packaging.version import Version

import embedml
from embedml.store import versions as V


class Tiny:
    """A picklable object; enough for store tests that never load the model."""

    def predict(self, x):
        return x


# ---------------------------------------------------------------- pure rules


def test_pep440_ordering_and_canonical_form():
    assert V.parse_version("1.10") > V.parse_version("1.9")
    assert V.parse_version("1.0") == V.parse_version("1")
    assert V.canonical_version("1.0") == "1"
    assert V.canonical_version("2.0.0") == "2"
    assert V.canonical_version("1.10") == "1.10"
    assert V.canonical_version(3) == "3"


@pytest.mark.parametrize("bad", ["", "abc", "v1", "1..2", "@1", "1/2", "latest"])
def test_invalid_versions_are_refused(bad):
    with pytest.raises(embedml.InvalidNameError):
        V.parse_version(bad)


def test_next_major():
    assert V.next_major([]) == "1"
    assert V.next_major([Version("1"), Version("2.5"), Version("1.10")]) == "3"


def test_latest_skips_prereleases_unless_only_prereleases():
    spec = V.parse_spec("latest")
    assert V.select(spec, [Version("1"), Version("2"), Version("3rc1")]) == Version("2")
    assert V.select(spec, [Version("1a1"), Version("1b2")]) == Version("1b2")
    assert V.parse_spec(None) == spec


def test_specifier_and_exact_selection():
    vs = [Version(v) for v in ("1", "1.2", "1.9", "1.10", "2", "2.1")]
    assert V.select(V.parse_spec(">=1.2,<2"), vs) == Version("1.10")
    assert V.select(V.parse_spec("<1.5"), vs) == Version("1.2")
    assert V.select(V.parse_spec("1.0"), vs) == Version("1")
    assert V.select(V.parse_spec("3"), vs) is None
    assert V.select(V.parse_spec(">5"), vs) is None


def test_alias_spec_is_parsed_not_selected():
    spec = V.parse_spec("@production")
    assert spec.alias == "production"
    assert spec.exact is None and spec.specifier is None
    with pytest.raises(ValueError):
        V.select(spec, [Version("1")])


@pytest.mark.parametrize("bad", ["=>1", "~~1", "@", "@1abc", "@..x"])
def test_invalid_specs(bad):
    with pytest.raises(embedml.InvalidNameError):
        V.parse_spec(bad)


@pytest.mark.parametrize("good", ["fraud", "Fraud-v2", "a.b_c-d", "0model", "x" * 128])
def test_valid_names(good):
    assert V.check_name(good) == good


@pytest.mark.parametrize(
    "bad", ["", "../x", "a/b", "a\\b", "..", "a..b", ".hidden", "-x", "_x", "a b", "x" * 129, 7]
)
def test_invalid_names(bad):
    with pytest.raises(embedml.InvalidNameError):
        V.check_name(bad)


@pytest.mark.parametrize("good,stored", [("production", "production"), ("@prod-2", "prod-2")])
def test_valid_aliases(good, stored):
    assert V.check_alias(good) == stored


@pytest.mark.parametrize("bad", ["1prod", "", "@", "a/b", "a..b", "-prod", "latest", "@latest"])
def test_invalid_aliases(bad):
    with pytest.raises(embedml.InvalidNameError):
        V.check_alias(bad)


# ---------------------------------------------------------------- through the store


@pytest.fixture
def filled(store):
    for v in ("1", "1.2", "1.9", "1.10", "2", "3rc1"):
        store.save("m", Tiny(), version=v)
    return store


def test_store_versions_are_pep440_ascending(filled):
    assert filled.versions("m") == ["1", "1.2", "1.9", "1.10", "2", "3rc1"]


def test_store_resolve_latest_exact_specifier(filled):
    assert filled.resolve("m").version == "2"
    assert filled.resolve("m", "latest").version == "2"
    assert filled.resolve("m", "1.0").version == "1"
    assert filled.resolve("m", 1).version == "1"
    assert filled.resolve("m", ">=1.2,<2").version == "1.10"
    assert filled.resolve("m", ">=3rc1").version == "3rc1"  # an explicit pre-release opts in


def test_store_latest_falls_back_to_prerelease(store):
    store.save("m", Tiny(), version="1a1")
    store.save("m", Tiny(), version="1b1")
    assert store.resolve("m").version == "1b1"


def test_same_version_spelled_differently_exists(store):
    store.save("m", Tiny(), version="1.0")
    assert store.versions("m") == ["1.0"]  # the folder is "1", shown as saved
    with pytest.raises(embedml.VersionExistsError):
        store.save("m", Tiny(), version="1")
    with pytest.raises(embedml.VersionExistsError):
        store.save("m", Tiny(), version="1.0.0")


def test_alias_resolution(filled):
    filled.set_alias("m", "production", "1.9")
    filled.set_alias("m", "@canary", "2.0")
    assert filled.aliases("m") == {"production": "1.9", "canary": "2"}
    assert filled.resolve("m", "@production").version == "1.9"
    assert filled.resolve("m", "@canary").version == "2"
    # moving an alias
    filled.set_alias("m", "production", "1.10")
    assert filled.resolve("m", "@production").version == "1.10"
    filled.remove_alias("m", "canary")
    assert filled.aliases("m") == {"production": "1.10"}
    with pytest.raises(embedml.VersionNotFoundError):
        filled.remove_alias("m", "canary")


def test_alias_must_point_to_existing_version(filled):
    with pytest.raises(embedml.VersionNotFoundError):
        filled.set_alias("m", "production", "7")
    assert filled.aliases("m") == {}


@pytest.mark.parametrize("alias", ["1prod", "a/b", "..", "latest"])
def test_store_refuses_bad_alias_names(filled, alias):
    with pytest.raises(embedml.InvalidNameError):
        filled.set_alias("m", alias, "1")


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "/abs", "a..b", ""])
def test_store_refuses_bad_model_names(store, name, tmp_path):
    with pytest.raises(embedml.InvalidNameError):
        store.save(name, Tiny())
    with pytest.raises(embedml.InvalidNameError):
        store.resolve(name)
    # nothing was written outside (or inside) the store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert list(store.root.iterdir()) == []


def test_store_refuses_bad_versions(store):
    for bad in ("abc", "v1", "1/2", "..", "@x"):
        with pytest.raises(embedml.InvalidNameError):
            store.save("m", Tiny(), version=bad)
    assert store.models() == []


def test_name_at_alias_vs_version_is_unambiguous(filled):
    filled.set_alias("m", "p1", "1.2")
    # "@p1" is an alias, "1.2" a version: an alias can never look like a version
    assert filled.resolve("m", "@p1").version == "1.2"
    with pytest.raises(embedml.InvalidNameError):
        filled.set_alias("m", "1.2", "1")
