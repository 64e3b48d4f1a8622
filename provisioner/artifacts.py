"""Artifacts the controller fetches through the package registries' own clients.

(One artifact is built from this repository instead: the lab's Nextcloud contract double,
packed as a single file so that the cloud role copies it in one step.)

Hosts never download anything themselves: the controller fetches each artifact
once into the artifacts directory (`$COOPCTL_ARTIFACTS_DIR`, default
/var/cache/coopctl/artifacts) and the roles copy it to the hosts. One function
per artifact; each is idempotent (an artifact already present and intact is not
fetched again) and returns the artifact's path.

Intact means: its sha256 is the one this file records (RECORDED_SHA256). Etherpad is
built from npm and a lockfile the pads role ships, reproducibly, so its tarball has a
recorded sum too.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from provisioner.errors import CoopError
from provisioner.resources import nextcloud_double_dir

DEFAULT_ARTIFACTS_DIR = "/var/cache/coopctl/artifacts"

# Keycloak's server distribution on Maven Central. 26.x runs on OpenJDK 17
# (Debian 12's JDK); checked by starting the zip's kc.sh on Java 17.
KEYCLOAK_VERSION = "26.7.3"
KEYCLOAK_GROUP = "org.keycloak"
KEYCLOAK_ARTIFACT = "keycloak-quarkus-dist"
# Pinned so that an old Maven's default plugin (2.8, no -Dartifact on copy)
# is never used.
MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


class ArtifactError(CoopError):
    """An artifact could not be fetched or built, or is not the one recorded here (checksum).

    A CoopError, so that a command that meets it prints `Error:` and `Hint:` lines.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint or (
            "check that the package registry answers (Maven and npm use it) and that the "
            "artifacts directory is writable, then run again: artifacts already fetched and "
            "checked are kept"))


# The sha256 of every artifact coopctl fetches or builds, by file name, recorded in this
# repository: a file in the cache is used only when it has its recorded sum (its size or its
# presence proves nothing), and a download or a build is put in the cache only when it has it.
# - Keycloak's zip: the file Maven Central serves (Maven checks the SHA-1 published next to it).
# - ep_etherpad-lite's npm package: the input of the Etherpad build.
# - etherpad-VERSION.tar.gz: the tree built from that package and the pads role's lockfile
#   (playbooks/roles/pads/files/etherpad-VERSION/package-lock.json). The build is reproducible
#   (see _pack_tree): the same bytes with npm 9.2 (Debian 12 and 13) and 11, Python 3.11 and
#   3.13, zlib 1.2.13 and 1.3.1. A changed lockfile changes this sum: record the new one.
RECORDED_SHA256: dict[str, str] = {
    "keycloak-quarkus-dist-26.7.3.zip":
        "27a6535553c3cdcd083872ba40629efafb3475e3b758e0c6f691395561dd0f1f",
    "ep_etherpad-lite-1.8.14.tgz":
        "b380d8e25a5ef844522e6d62adbd433bcabcc9d12b88ca3c10d312e86c39aea9",
    "etherpad-1.8.14.tar.gz":
        "79689f8b32cacda981e94a68a5f424009fba8fe200d2777e2be4b735d8614af7",
}


def artifacts_dir() -> Path:
    """The controller's artifact cache, created when missing."""
    path = Path(os.environ.get("COOPCTL_ARTIFACTS_DIR") or DEFAULT_ARTIFACTS_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of(path: Path) -> str:
    """The file's SHA-256, hex (read in chunks: Keycloak's zip is 170 MB)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def recorded_sha256(name: str) -> str:
    """The sha256 this repository records for the artifact file `name`."""
    try:
        return RECORDED_SHA256[name]
    except KeyError:
        raise ArtifactError(
            f"no sha256 is recorded for {name}: coopctl fetches only artifacts whose checksum "
            "its source records",
            "use the versions this coopctl pins (Keycloak "
            f"{KEYCLOAK_VERSION}, Etherpad {ETHERPAD_VERSION}), or give the pads role a release "
            "of your own (pads_etherpad_tarball and pads_etherpad_tarball_sha256)") from None


def cached_artifact(
    target: Path, fetch: Callable[[Path], None], purge: Callable[[], None] | None = None
) -> Path:
    """`target` once it has its recorded sha256: from the cache, else fetched (at most twice).

    `fetch(partial)` writes the artifact to `partial`, a file of this call's own next to
    `target` (two deploys may fetch at once) that becomes `target` only after its checksum
    matched, so the cache never holds an unchecked file. A mismatch (a damaged cached copy,
    or a fetch that brought other bytes) removes the file, calls `purge()` (forget what the
    fetching tool itself cached, e.g. Maven's local repository) and fetches once more; a
    second mismatch is an ArtifactError, and nothing is left in the cache.
    """
    expected = recorded_sha256(target.name)
    mismatches: list[str] = []
    while True:
        if target.is_file():
            source, candidate = "the cached copy", target
        else:
            handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                            suffix=".part")
            os.close(handle)
            partial = Path(name)
            partial.unlink()  # the fetch creates it
            try:
                fetch(partial)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            if not partial.is_file():
                raise ArtifactError(f"fetching {target.name} produced no file")
            source, candidate = "the copy just fetched", partial
        actual = sha256_of(candidate)
        if actual == expected:
            if candidate != target:
                os.replace(candidate, target)
            return target
        candidate.unlink(missing_ok=True)
        mismatches.append(f"{source} had sha256 {actual}")
        if len(mismatches) == 2:
            raise ArtifactError(
                f"{target.name} is not the artifact this coopctl records (sha256 {expected}): "
                f"{'; '.join(mismatches)}; nothing was kept in {target.parent}",
                "a mirror or proxy between this machine and the registry may alter downloads, "
                "or this machine builds another tree (another npm, Python or zlib): compare "
                "with `sha256sum` on another machine, and never deploy an artifact that fails "
                "this check (for the pads, a release tarball of your own can be given to the "
                "pads role: pads_etherpad_tarball and pads_etherpad_tarball_sha256)")
        if purge is not None:
            purge()


# -- Keycloak ----------------------------------------------------------------------------------

def _maven_local_repo() -> Path:
    return Path(os.environ.get("MAVEN_REPO_LOCAL") or Path.home() / ".m2" / "repository")


def _maven_forget(group: str, artifact: str, version: str) -> None:
    """Remove G:A:V from Maven's local repository, so that the next copy downloads it anew."""
    shutil.rmtree(_maven_local_repo().joinpath(*group.split("."), artifact, version),
                  ignore_errors=True)


def _maven_copy(group: str, artifact: str, version: str, packaging: str, dest: Path) -> None:
    """Fetch G:A:V:packaging with Maven and write it to the file `dest`.

    `--strict-checksums` makes Maven refuse a download whose SHA-1 does not match the one
    the repository publishes; the caller then checks the file against its recorded sha256.
    """
    if shutil.which("mvn") is None:
        raise ArtifactError(f"mvn is needed to fetch {artifact} {version} from Maven Central",
                            "install Debian's package maven (bash .ci/setup does)")
    name = f"{artifact}-{version}.{packaging}"
    coords = f"{group}:{artifact}:{version}:{packaging}"
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        cmd = [
            "mvn", "-q", "-B", "--strict-checksums",
            f"{MAVEN_DEPENDENCY_PLUGIN}:copy",
            f"-Dartifact={coords}",
            f"-DoutputDirectory={tmp}",
        ]  # fmt: skip
        result = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
        fetched = Path(tmp) / name
        if result.returncode != 0 or not fetched.is_file():
            raise ArtifactError(f"mvn could not fetch {coords}:\n{result.stdout}{result.stderr}")
        os.replace(fetched, dest)


def fetch_keycloak(version: str = KEYCLOAK_VERSION) -> Path:
    """Keycloak's server zip (keycloak-quarkus-dist) from Maven Central, checked by sha256."""
    if not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", version):
        raise ValueError(f"bad Keycloak version: {version!r}")
    target = artifacts_dir() / f"{KEYCLOAK_ARTIFACT}-{version}.zip"
    return cached_artifact(
        target,
        functools.partial(_maven_copy, KEYCLOAK_GROUP, KEYCLOAK_ARTIFACT, version, "zip"),
        purge=functools.partial(_maven_forget, KEYCLOAK_GROUP, KEYCLOAK_ARTIFACT, version),
    )


# -- Etherpad ----------------------------------------------------------------------------------

# Etherpad from npm (ep_etherpad-lite); 1.8.14 is the newest release published there and runs
# on Debian 12's nodejs 18 (it needs node >= 12.13 and has no native modules). A coop that
# wants a current release gives the pads role its own tarball (pads_etherpad_tarball).
ETHERPAD_VERSION = "1.8.14"
# Every entry of a built tree gets this time (2000-01-01), owner root and a mode of 0644, 0755
# (executables, directories) or 0777 (symlinks): what npm, the umask or the clock left there
# does not reach the tarball.
REPRODUCIBLE_MTIME = 946684800
# Written by npm inside node_modules: a cache of the lockfile in npm's own version's format.
_NPM_HIDDEN_LOCKFILE = ".package-lock.json"


def etherpad_lockfile(version: str) -> Path:
    """The lockfile the pads role ships for Etherpad `version` (npm's package-lock.json).

    It is Etherpad's own `src/package-lock.json` of that release tag, the versions the
    release was tested with, converted to lockfileVersion 3 (`npm install
    --package-lock-only`, which keeps every version) so that npm 9 and later read it
    without asking the registry for metadata. Every package in it carries its integrity
    hash, which `npm ci` checks.
    """
    from provisioner.resources import playbooks_dir

    path = playbooks_dir() / "roles" / "pads" / "files" / f"etherpad-{version}"
    path = path / "package-lock.json"
    if not path.is_file():
        raise ArtifactError(
            f"coopctl ships no lockfile for Etherpad {version} ({path} is missing), so it "
            "cannot build that release reproducibly",
            f"use Etherpad {ETHERPAD_VERSION} (pads_version), or give the pads role a release "
            "tarball of your own with its checksum (pads_etherpad_tarball, "
            "pads_etherpad_tarball_sha256)")
    return path


def _npm(npm: str, args: list[str], cwd: Path, what: str) -> None:
    env = dict(os.environ, npm_config_update_notifier="false", npm_config_fund="false",
               npm_config_audit="false", npm_config_progress="false")
    result = subprocess.run([npm, *args], cwd=cwd, env=env, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise ArtifactError(f"npm could not {what}:\n{result.stdout}{result.stderr}")


def _build_etherpad(version: str, lockfile: Path, dest: Path) -> None:
    """Build a runnable Etherpad tree from npm and the lockfile; write it to `dest` (.tar.gz).

    The layout is the one Etherpad's own installer makes: the package is `src/` with its
    dependencies in `src/node_modules` (installed by `npm ci` from the lockfile, dev
    dependencies left out, no install script run: Etherpad has no native module; the optional
    sqlite3 and keytar are installed without their binaries, used by no setting coopctl
    writes), `node_modules/ep_etherpad-lite` a link back to `src` (how Etherpad finds itself
    as a plugin), and an empty `var/`. Start it with `node src/node/server.js`. About 3
    minutes, most of it npm downloading about 550 packages.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise ArtifactError("npm is needed on the controller to build Etherpad",
                            "install Debian's packages nodejs and npm (bash .ci/setup does)")
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".build-etherpad-") as tmp_name:
        tmp = Path(tmp_name)
        _npm(npm, ["pack", f"ep_etherpad-lite@{version}", "--pack-destination", str(tmp)],
             tmp, f"fetch ep_etherpad-lite@{version}")
        package = tmp / f"ep_etherpad-lite-{version}.tgz"
        expected = recorded_sha256(package.name)
        actual = sha256_of(package) if package.is_file() else "(no file)"
        if actual != expected:
            raise ArtifactError(
                f"npm brought ep_etherpad-lite@{version} with sha256 {actual}, not the "
                f"recorded {expected}")
        with tarfile.open(package) as tar:
            tar.extractall(tmp / "package", filter="data")
        top = tmp / f"etherpad-{version}"
        top.mkdir()
        src = top / "src"
        (tmp / "package" / "package").rename(src)
        shutil.copyfile(lockfile, src / "package-lock.json")
        # Flags that npm's own configuration (npmrc) could otherwise change, so that every
        # machine installs the same tree.
        _npm(npm, ["ci", "--omit=dev", "--include=optional", "--ignore-scripts",
                   "--install-strategy=hoisted", "--no-audit", "--no-fund"],
             src, f"install Etherpad {version}'s dependencies from {lockfile}")
        if not (src / "node" / "server.js").is_file():
            raise ArtifactError(f"ep_etherpad-lite@{version} has no node/server.js")
        (top / "node_modules").mkdir()
        (top / "node_modules" / "ep_etherpad-lite").symlink_to(
            Path("..") / "src", target_is_directory=True)
        (top / "var").mkdir()
        _pack_tree(top, dest, keep_empty={"var"})


def _tree_entries(top: Path, keep_empty: Iterable[str]) -> list[tuple[str, Path]]:
    """(relative path, path) of what `_pack_tree` packs, parents before children.

    Files and symlinks, npm's hidden lockfiles left out; a directory only when something is
    packed under it or it is in `keep_empty` (npm 9 leaves empty scope directories behind
    where npm 11 does not).
    """
    leaves: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        for name in [*dirnames, *filenames]:
            path = here / name
            if not path.is_symlink() and path.is_dir():
                continue  # os.walk enters it
            if name == _NPM_HIDDEN_LOCKFILE and here.name == "node_modules":
                continue
            leaves.append(path.relative_to(top).as_posix())
    names = set(leaves) | set(keep_empty)
    for leaf in list(names):
        parts = leaf.split("/")
        names.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return [(name, top / name) for name in sorted(names, key=lambda n: n.split("/"))]


def _pack_tree(top: Path, dest: Path, keep_empty: Iterable[str] = ()) -> None:
    """Pack `top` into `dest` (.tar.gz, entries under top's name) reproducibly.

    The same tree gives the same bytes: entries sorted, fixed time, owner and modes (see
    REPRODUCIBLE_MTIME), and a gzip header without name or time.
    """
    with (
        dest.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as zipped,
        tarfile.open(fileobj=zipped, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, path in _tree_entries(top, keep_empty):
            info = tarfile.TarInfo(f"{top.name}/{name}")
            info.mtime = REPRODUCIBLE_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(path), 0o777
                tar.addfile(info)
            elif stat.S_ISDIR(mode):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif stat.S_ISREG(mode):
                info.mode = 0o755 if mode & 0o111 else 0o644
                info.size = path.stat().st_size
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                raise ArtifactError(f"cannot pack {path}: not a file, directory or symlink")


def fetch_etherpad(version: str = ETHERPAD_VERSION) -> Path:
    """etherpad-VERSION.tar.gz: a runnable Etherpad tree, built once, checked by sha256.

    Built from npm's ep_etherpad-lite package and the lockfile the pads role ships (see
    _build_etherpad), then kept in the artifacts directory for as long as its sha256 is the
    recorded one.
    """
    if not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", version):
        raise ValueError(f"bad Etherpad version: {version!r}")
    lockfile = etherpad_lockfile(version)
    target = artifacts_dir() / f"etherpad-{version}.tar.gz"
    return cached_artifact(target, functools.partial(_build_etherpad, version, lockfile))


# The lab's Nextcloud CONTRACT DOUBLE (tests/nextcloud_double), packed as a Python zip
# application: one file to copy (a no-op deploy checks one checksum instead of five files).
NEXTCLOUD_DOUBLE_SOURCE = nextcloud_double_dir()
NEXTCLOUD_DOUBLE_MAIN = b"""# Nextcloud CONTRACT DOUBLE (not Nextcloud)
import sys

from nextcloud_double.__main__ import main

sys.exit(main())
"""


def build_nextcloud_double(source: Path = NEXTCLOUD_DOUBLE_SOURCE) -> Path:
    """nextcloud-double.pyz, byte-for-byte the same for the same sources.

    Fixed timestamps and order make the archive reproducible, so Ansible's copy sees a change
    (and restarts the double) only when the double's code changed.
    """
    import io
    import zipfile

    sources = sorted(source.glob("*.py"))
    if not sources:
        raise ArtifactError(f"no Python sources in {source}: is this a full checkout of coopctl?")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        members = [("__main__.py", NEXTCLOUD_DOUBLE_MAIN)]
        members += [(f"nextcloud_double/{path.name}", path.read_bytes()) for path in sources]
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    packed = buffer.getvalue()
    target = artifacts_dir() / "nextcloud-double.pyz"
    if not (target.is_file() and target.read_bytes() == packed):
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(packed)
        partial.replace(target)
    return target


def main(argv: list[str]) -> int:
    """`python -m provisioner.artifacts [keycloak] [etherpad]`: fetch (or check) those.

    What .ci/setup uses to warm the cache; prints each artifact's path, or an Error and a
    Hint line (no traceback) and returns 1.
    """
    import sys

    fetchers = {"keycloak": fetch_keycloak, "etherpad": fetch_etherpad}
    for name in argv or list(fetchers):
        if name not in fetchers:
            print(f"Error: no artifact {name!r}\nHint: choose among {', '.join(fetchers)}",
                  file=sys.stderr)
            return 2
        try:
            print(fetchers[name]())
        except ArtifactError as exc:
            print(f"Error: {exc.message}\nHint: {exc.hint}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":  # pragma: no cover - run by .ci/setup
    import sys

    sys.exit(main(sys.argv[1:]))
