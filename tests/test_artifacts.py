"""The artifact cache trusts a file only by its recorded sha256, and Etherpad is built from the
lockfile the pads role ships.

The checksum rules are tested on real files in a temporary cache, with a fetch function that
writes given bytes (what Maven or npm would bring); fetch_keycloak and fetch_etherpad are also
run for real on damaged copies, with their registry client off the PATH, so a damaged file can
only be refused, never used or silently replaced. The last tests read the Etherpad artifact that
`bash .ci/setup` built and compare its installed tree with the lockfile.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from provisioner import artifacts
from provisioner.artifacts import (
    DEFAULT_ARTIFACTS_DIR,
    ETHERPAD_VERSION,
    KEYCLOAK_VERSION,
    RECORDED_SHA256,
    ArtifactError,
    cached_artifact,
    etherpad_lockfile,
    fetch_etherpad,
    fetch_keycloak,
)
from provisioner.errors import CoopError

GOOD = b"the artifact as the registry serves it\n"
# The machine's real artifacts cache (the tests below point COOPCTL_ARTIFACTS_DIR elsewhere).
REAL_CACHE = Path(os.environ.get("COOPCTL_ARTIFACTS_DIR") or DEFAULT_ARTIFACTS_DIR)
NAME = "thing-1.0.bin"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty artifacts directory, and a recorded sha256 for NAME (GOOD's)."""
    directory = tmp_path / "artifacts"
    monkeypatch.setenv("COOPCTL_ARTIFACTS_DIR", str(directory))
    monkeypatch.setitem(RECORDED_SHA256, NAME, sha256(GOOD))
    return artifacts.artifacts_dir()


class Fetcher:
    """Writes the next of `payloads` where cached_artifact asks; counts fetches and purges."""

    def __init__(self, *payloads: bytes) -> None:
        self.payloads = list(payloads)
        self.fetches = 0
        self.purges = 0

    def fetch(self, partial: Path) -> None:
        self.fetches += 1
        partial.write_bytes(self.payloads.pop(0))

    def purge(self) -> None:
        self.purges += 1


def damaged(data: bytes) -> bytes:
    """The same bytes with one bit flipped: same size, other checksum."""
    return data[:5] + bytes([data[5] ^ 1]) + data[6:]


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# -- the checksum rules ------------------------------------------------------------------------

def test_a_cached_file_with_its_recorded_sha256_is_used_as_it_is(cache: Path) -> None:
    (cache / NAME).write_bytes(GOOD)
    fetcher = Fetcher()
    assert cached_artifact(cache / NAME, fetcher.fetch, fetcher.purge) == cache / NAME
    assert fetcher.fetches == 0 and fetcher.purges == 0


def test_a_damaged_cached_file_of_the_same_size_is_fetched_again(cache: Path) -> None:
    (cache / NAME).write_bytes(damaged(GOOD))
    assert (cache / NAME).stat().st_size == len(GOOD)
    fetcher = Fetcher(GOOD)
    assert cached_artifact(cache / NAME, fetcher.fetch, fetcher.purge) == cache / NAME
    assert (cache / NAME).read_bytes() == GOOD
    assert (fetcher.fetches, fetcher.purges) == (1, 1)
    assert leftovers(cache) == [NAME]


def test_a_damaged_cache_fetched_again_with_other_bytes_is_refused(cache: Path) -> None:
    (cache / NAME).write_bytes(damaged(GOOD))
    fetcher = Fetcher(b"what a tampering mirror serves\n", GOOD)
    with pytest.raises(ArtifactError) as caught:
        cached_artifact(cache / NAME, fetcher.fetch, fetcher.purge)
    assert fetcher.fetches == 1  # re-fetched once, then refused
    error = caught.value
    assert sha256(GOOD) in error.message
    assert sha256(damaged(GOOD)) in error.message
    assert sha256(b"what a tampering mirror serves\n") in error.message
    assert error.hint and "sha256sum" in error.hint
    assert leftovers(cache) == []  # nothing unchecked stays in the cache


def test_a_first_fetch_with_other_bytes_is_fetched_once_more(cache: Path) -> None:
    fetcher = Fetcher(b"a download cut short", GOOD)
    assert cached_artifact(cache / NAME, fetcher.fetch, fetcher.purge).read_bytes() == GOOD
    assert (fetcher.fetches, fetcher.purges) == (2, 1)


def test_two_fetches_with_other_bytes_are_refused(cache: Path) -> None:
    fetcher = Fetcher(b"bad 1", b"bad 2", GOOD)
    with pytest.raises(ArtifactError, match="the copy just fetched had sha256"):
        cached_artifact(cache / NAME, fetcher.fetch, fetcher.purge)
    assert fetcher.fetches == 2
    assert leftovers(cache) == []


def test_a_failed_fetch_leaves_no_partial_file(cache: Path) -> None:
    def fetch(partial: Path) -> None:
        partial.write_bytes(GOOD[:7])
        raise ArtifactError("the registry went away")

    with pytest.raises(ArtifactError, match="went away"):
        cached_artifact(cache / NAME, fetch)
    assert leftovers(cache) == []


def test_an_artifact_without_a_recorded_sha256_is_never_fetched(cache: Path) -> None:
    fetcher = Fetcher(GOOD)
    with pytest.raises(ArtifactError, match=r"no sha256 is recorded for other-2\.0\.bin") as caught:
        cached_artifact(cache / "other-2.0.bin", fetcher.fetch)
    assert fetcher.fetches == 0
    assert caught.value.hint


def test_artifact_errors_are_errors_with_a_hint() -> None:
    """So that `coopctl deploy` prints `Error:` and `Hint:` lines, never a traceback."""
    error = ArtifactError("npm could not fetch it")
    assert isinstance(error, CoopError)
    assert error.hint


def test_the_pinned_artifacts_have_recorded_sums() -> None:
    for name in (f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.zip",
                 f"ep_etherpad-lite-{ETHERPAD_VERSION}.tgz",
                 f"etherpad-{ETHERPAD_VERSION}.tar.gz"):
        assert len(RECORDED_SHA256[name]) == 64, name
        int(RECORDED_SHA256[name], 16)


# -- the real fetch functions, with their registry client out of reach --------------------------

def real_artifact(name: str) -> Path:
    path = REAL_CACHE / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: run `bash .ci/setup` (it fetches the artifacts)")
    return path


def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No mvn and no npm on the PATH, and a Maven repository of the test's own to purge."""
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    monkeypatch.setenv("MAVEN_REPO_LOCAL", str(tmp_path / "m2"))


def copy_of(source: Path, cache: Path, change: Callable[[bytes], bytes] | None = None) -> Path:
    target = cache / source.name
    if change is None:
        try:
            os.link(source, target)  # 170 MB for Keycloak: no copy when the file system allows
        except OSError:
            shutil.copyfile(source, target)
    else:
        target.write_bytes(change(source.read_bytes()))
    return target


def test_fetch_keycloak_uses_the_recorded_zip_without_maven(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zip_file = copy_of(real_artifact(f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.zip"), cache)
    offline(monkeypatch, tmp_path)
    assert fetch_keycloak() == zip_file


def test_fetch_keycloak_refuses_a_damaged_zip(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged zip of the right size is removed and fetched again: here Maven is out of
    reach, so the fetch fails with an Error and a Hint, and the damaged zip is not used."""
    name = f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.zip"
    (cache / name).write_bytes(b"PK\x03\x04" + b"\0" * 4096)
    offline(monkeypatch, tmp_path)
    with pytest.raises(ArtifactError, match="mvn is needed") as caught:
        fetch_keycloak()
    assert caught.value.hint and "maven" in caught.value.hint
    assert leftovers(cache) == []


def test_fetch_etherpad_uses_the_recorded_build_without_npm(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = copy_of(real_artifact(f"etherpad-{ETHERPAD_VERSION}.tar.gz"), cache)
    offline(monkeypatch, tmp_path)
    assert fetch_etherpad() == built


def test_fetch_etherpad_refuses_a_damaged_build(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_of(real_artifact(f"etherpad-{ETHERPAD_VERSION}.tar.gz"), cache, damaged)
    offline(monkeypatch, tmp_path)
    with pytest.raises(ArtifactError, match="npm is needed"):
        fetch_etherpad()
    assert leftovers(cache) == []


def test_an_etherpad_release_without_a_lockfile_is_refused_with_the_way_out(cache: Path) -> None:
    with pytest.raises(ArtifactError) as caught:
        fetch_etherpad("2.5.3")
    assert "no lockfile for Etherpad 2.5.3" in caught.value.message
    assert "pads_etherpad_tarball" in (caught.value.hint or "")
    assert leftovers(cache) == []


# -- the reproducible Etherpad tree ------------------------------------------------------------

def make_tree(top: Path, *, umask: int, mtime: int, reverse: bool) -> None:
    """A small npm-like tree; `reverse` creates its entries in the opposite order."""
    old = os.umask(umask)
    try:
        files = {
            "src/package.json": b'{"name": "ep_etherpad-lite"}\n',
            "src/node/server.js": b"// server\n",
            "src/node_modules/.package-lock.json": f'{{"npm": "{mtime}"}}'.encode(),
            "src/node_modules/a/package.json": b'{"name": "a", "version": "1.0.0"}\n',
            "src/node_modules/a/cli.js": b"#!/usr/bin/env node\n",
        }
        for name in sorted(files, reverse=reverse):
            path = top / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(files[name])
            os.utime(path, (mtime, mtime))
        (top / "src/node_modules/a/cli.js").chmod(0o777 & ~umask)
        if reverse:
            (top / "src/node_modules/@babel").mkdir()  # npm 9 leaves empty scope directories
        (top / "src/node_modules/.bin").mkdir()
        (top / "src/node_modules/.bin/a").symlink_to("../a/cli.js")
        (top / "node_modules").mkdir()
        (top / "node_modules/ep_etherpad-lite").symlink_to("../src", target_is_directory=True)
        (top / "var").mkdir()
    finally:
        os.umask(old)


def test_a_tree_packs_to_the_same_bytes_whatever_its_times_modes_and_order(tmp_path: Path) -> None:
    one, two = tmp_path / "a" / "etherpad-9.9.9", tmp_path / "b" / "etherpad-9.9.9"
    make_tree(one, umask=0o022, mtime=1_000_000_000, reverse=False)
    make_tree(two, umask=0o077, mtime=1_700_000_000, reverse=True)
    artifacts._pack_tree(one, tmp_path / "one.tar.gz", keep_empty={"var"})
    artifacts._pack_tree(two, tmp_path / "two.tar.gz", keep_empty={"var"})
    assert (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()

    with tarfile.open(tmp_path / "two.tar.gz") as tar:
        members = {member.name: member for member in tar.getmembers()}
    top = "etherpad-9.9.9"
    assert f"{top}/src/node_modules/.package-lock.json" not in members  # npm's own cache
    assert f"{top}/src/node_modules/@babel" not in members  # empty
    assert members[f"{top}/var"].isdir()  # kept although empty
    assert members[f"{top}/node_modules/ep_etherpad-lite"].linkname == "../src"
    assert members[f"{top}/src/node_modules/.bin/a"].linkname == "../a/cli.js"
    assert members[f"{top}/src/node_modules/a/cli.js"].mode == 0o755
    assert members[f"{top}/src/package.json"].mode == 0o644
    assert members[f"{top}/src"].mode == 0o755
    assert {m.uid for m in members.values()} == {0}
    assert {m.mtime for m in members.values()} == {artifacts.REPRODUCIBLE_MTIME}
    names = [m.name for m in members.values()]
    assert names.index(f"{top}/src") < names.index(f"{top}/src/node/server.js")


def test_the_shipped_lockfile_is_etherpads_own() -> None:
    lock = json.loads(etherpad_lockfile(ETHERPAD_VERSION).read_text())
    assert lock["lockfileVersion"] == 3
    root = lock["packages"][""]
    assert (root["name"], root["version"]) == ("ep_etherpad-lite", ETHERPAD_VERSION)
    for path, entry in lock["packages"].items():
        if path and not entry.get("inBundle"):
            assert entry.get("integrity"), f"{path} has no integrity hash for npm ci to check"


def installed_packages(tar: tarfile.TarFile, prefix: str) -> tuple[dict[str, str], bytes]:
    """{node_modules/... path: version} of every package under `prefix`, and the tree's lock."""
    versions: dict[str, str] = {}
    lock = b""
    for member in tar:
        if not member.name.startswith(prefix) or not member.isfile():
            continue
        path = member.name[len(prefix):]
        if path == "package-lock.json":
            lock = tar.extractfile(member).read()  # type: ignore[union-attr]
            continue
        parts = path.split("/")
        if parts[-1] != "package.json" or len(parts) < 3:
            continue
        # A package root: node_modules/NAME/package.json or node_modules/@SCOPE/NAME/package.json
        package = parts[:-1]
        is_root = (package[-2] == "node_modules" or
                   (package[-2].startswith("@") and len(package) >= 3
                    and package[-3] == "node_modules"))
        if is_root:
            data = json.load(io.BytesIO(tar.extractfile(member).read()))  # type: ignore[union-attr]
            versions["/".join(package)] = data["version"]
    return versions, lock


def test_the_built_etherpad_tree_is_the_one_the_lockfile_describes() -> None:
    """Every package of the lockfile is in the artifact with the lockfile's version; the only
    packages it does not list came inside a package that bundles them (npm 6 ships a few
    extraneous ones), whose own integrity the lockfile pins."""
    artifact = real_artifact(f"etherpad-{ETHERPAD_VERSION}.tar.gz")
    assert artifacts.sha256_of(artifact) == RECORDED_SHA256[artifact.name]
    shipped = etherpad_lockfile(ETHERPAD_VERSION)
    lock = json.loads(shipped.read_text())
    expected = {path: entry["version"] for path, entry in lock["packages"].items()
                if path and not entry.get("dev")}
    with tarfile.open(artifact) as tar:
        installed, lock_in_tree = installed_packages(tar, f"etherpad-{ETHERPAD_VERSION}/src/")
    assert lock_in_tree == shipped.read_bytes()
    assert {path: installed.get(path) for path in expected} == expected
    bundlers = [f"{path}/node_modules/" for path, entry in lock["packages"].items()
                if path and entry.get("bundleDependencies")]
    extra = set(installed) - set(expected)
    assert bundlers and all(path.startswith(tuple(bundlers)) for path in extra), sorted(extra)
    assert installed["node_modules/ueberdb2"] == "1.4.10"  # what Etherpad 1.8.14 shipped with
