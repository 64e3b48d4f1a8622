"""Artifacts the controller fetches through the package registries' own clients.

(One artifact is built from this repository instead: the lab's Nextcloud contract double,
packed as a single file so that the cloud role copies it in one step.)

Hosts never download anything themselves: the controller fetches each artifact
once into the artifacts directory (`$COOPCTL_ARTIFACTS_DIR`, default
/var/cache/coopctl/artifacts) and the roles copy it to the hosts. One function
per artifact; each is idempotent (an artifact already present and intact is not
fetched again) and returns the artifact's path.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

DEFAULT_ARTIFACTS_DIR = "/var/cache/coopctl/artifacts"

# Keycloak's server distribution on Maven Central. 26.x runs on OpenJDK 17
# (Debian 12's JDK); checked by starting the zip's kc.sh on Java 17.
KEYCLOAK_VERSION = "26.7.3"
KEYCLOAK_GROUP = "org.keycloak"
KEYCLOAK_ARTIFACT = "keycloak-quarkus-dist"
# Pinned so that an old Maven's default plugin (2.8, no -Dartifact on copy)
# is never used.
MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


class ArtifactError(RuntimeError):
    """An artifact could not be fetched or failed its checksum."""


def artifacts_dir() -> Path:
    """The controller's artifact cache, created when missing."""
    path = Path(os.environ.get("COOPCTL_ARTIFACTS_DIR") or DEFAULT_ARTIFACTS_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha1(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha1").hexdigest()


def _maven_local_repo() -> Path:
    return Path(os.environ.get("MAVEN_REPO_LOCAL") or Path.home() / ".m2" / "repository")


def _maven_copy(group: str, artifact: str, version: str, packaging: str, dest: Path) -> Path:
    """Fetch G:A:V:packaging with Maven into dest and return the file's path.

    `--strict-checksums` makes Maven refuse a download whose SHA-1 does not
    match the one the repository publishes; the published sum is kept next to
    the artifact as `<file>.sha1` so later runs can check the cached file.
    """
    name = f"{artifact}-{version}.{packaging}"
    coords = f"{group}:{artifact}:{version}:{packaging}"
    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as tmp:
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
        # The SHA-1 Maven checked the download against, as the repository published it.
        published = _maven_local_repo().joinpath(
            *group.split("."), artifact, version, name + ".sha1"
        )
        actual = _sha1(fetched)
        if published.is_file():
            expected = published.read_text().split()[0].strip().lower()
            if expected != actual:
                raise ArtifactError(f"{coords}: sha1 {actual} != published {expected}")
        (Path(tmp) / (name + ".sha1")).write_text(actual + "\n")
        target = dest / name
        os.replace(fetched, target)
        os.replace(Path(tmp) / (name + ".sha1"), dest / (name + ".sha1"))
    return target


def _present(path: Path) -> bool:
    """True when path and its .sha1 exist and agree."""
    sums = path.with_name(path.name + ".sha1")
    if not (path.is_file() and sums.is_file()):
        return False
    return sums.read_text().split()[0].strip().lower() == _sha1(path)


def fetch_keycloak(version: str = KEYCLOAK_VERSION) -> Path:
    """Keycloak's server zip (keycloak-quarkus-dist) from Maven Central."""
    if not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", version):
        raise ValueError(f"bad Keycloak version: {version!r}")
    if shutil.which("mvn") is None:
        raise ArtifactError("mvn (Debian package maven) is needed to fetch Keycloak")
    dest = artifacts_dir()
    target = dest / f"{KEYCLOAK_ARTIFACT}-{version}.zip"
    if _present(target):
        return target
    return _maven_copy(KEYCLOAK_GROUP, KEYCLOAK_ARTIFACT, version, "zip", dest)


# Etherpad from npm (ep_etherpad-lite); 1.8.14 is the newest release published there and runs
# on Debian 12's nodejs 18 (it needs node >= 12.13 and has no native modules).
ETHERPAD_VERSION = "1.8.14"


def fetch_etherpad(version: str = ETHERPAD_VERSION) -> Path:
    """A tar.gz of a runnable Etherpad tree, built once with npm (about 3 minutes).

    `npm install ep_etherpad-lite@VERSION` runs in a temporary directory; then
    the layout Etherpad insists on: the package directory becomes `src` (its
    base-path detection wants that name on Linux) and
    `node_modules/ep_etherpad-lite` a symlink back to it. The tarball holds
    the tree under `etherpad-VERSION/` (start it with
    `node src/node/server.js`) and is reused when present.
    """
    if not version or "/" in version or version.startswith("."):
        raise ValueError(f"bad Etherpad version: {version!r}")
    dest = artifacts_dir()
    target = dest / f"etherpad-{version}.tar.gz"
    if target.is_file() and target.stat().st_size > 0:
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise ArtifactError("npm is needed on the controller to fetch Etherpad")
    import tarfile

    with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-etherpad-") as tmp:
        top = Path(tmp) / f"etherpad-{version}"
        top.mkdir()
        env = dict(
            os.environ,
            npm_config_update_notifier="false",
            npm_config_fund="false",
            npm_config_audit="false",
        )
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--omit=dev", "--no-package-lock",
             f"ep_etherpad-lite@{version}"],
            cwd=top, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        pkg = top / "node_modules" / "ep_etherpad-lite"
        if result.returncode != 0 or not (pkg / "node" / "server.js").is_file():
            raise ArtifactError(
                f"npm could not install ep_etherpad-lite@{version}:\n{result.stdout}{result.stderr}"
            )
        pkg.rename(top / "src")
        pkg.symlink_to(Path("..") / "src", target_is_directory=True)
        (top / "var").mkdir(exist_ok=True)
        partial = Path(tmp) / (target.name + ".part")
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(top, arcname=top.name)
        os.replace(partial, target)
    return target


# The lab's Nextcloud CONTRACT DOUBLE (tests/nextcloud_double), packed as a Python zip
# application: one file to copy (a no-op deploy checks one checksum instead of five files).
NEXTCLOUD_DOUBLE_SOURCE = Path(__file__).resolve().parent.parent / "tests" / "nextcloud_double"
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


if __name__ == "__main__":  # pragma: no cover - manual use: python -m provisioner.artifacts
    print(fetch_keycloak())
