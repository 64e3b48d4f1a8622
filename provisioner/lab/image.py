"""The Debian base images lab hosts are overlays of, built once per release with debootstrap.

One image per suite (bookworm = Debian 12, trixie = Debian 13; the controller's own debootstrap
builds both). Building takes one to two minutes and about 270 MB, so each image is cached under
``/var/cache/coopctl/images`` and shared by every lab of that release; hosts never write to it
(each gets its own overlay upper directory).
The build runs under a file lock in a temporary directory renamed into place at the end, so two
labs starting at once build it once and nobody ever sees a half-built image. Anything that must
differ between hosts (machine-id, SSH host keys) is removed from the base; anything that differs
between labs (proxy address, authorised key) is written per host, see ``hosts.py``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from provisioner.lab.aptsources import DebianSources, debian_sources, host_sources
from provisioner.lab.commands import run
from provisioner.lab.config import DEFAULT_SUITE, IMAGE_CACHE_DIR, SUITES, LabError

# Bump when the recipe below changes: a new directory is built, old ones can be deleted.
IMAGE_VERSION = 2
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",  # Ansible's apt module needs it; installing it per host would cost a minute
    "sudo",
    "ca-certificates",
    "iproute2",
    "procps",
)
# Timers that would run apt (and take its lock) in the middle of a deploy.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "apt-daily.service",
    "apt-daily-upgrade.service",
)


def image_dir(cache_dir: Path | None = None, suite: str = DEFAULT_SUITE) -> Path:
    return (cache_dir or IMAGE_CACHE_DIR) / f"debian-{suite}-v{IMAGE_VERSION}"


def ensure_base_image(
    log: Callable[[str], None] = print,
    cache_dir: Path | None = None,
    suite: str = DEFAULT_SUITE,
) -> tuple[Path, float | None]:
    """Return the base image directory of ``suite``, building it first if needed.

    Returns (path, seconds spent building or None when it was cached). ``cache_dir`` defaults
    to the module's ``IMAGE_CACHE_DIR`` at call time (``$COOPCTL_IMAGE_DIR`` or
    /var/cache/coopctl/images), so the bench can point it elsewhere to time a cold build.
    Each suite has its own lock: building one release never holds up labs of the other.
    """
    if suite not in SUITES:
        raise LabError(f"unknown Debian suite {suite!r}: use one of {', '.join(SUITES)}")
    cache_dir = cache_dir or IMAGE_CACHE_DIR
    target = image_dir(cache_dir, suite)
    if (target / ".coopctl-image").exists():
        return target, None
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".build-{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another lab may be building it right now
        if (target / ".coopctl-image").exists():
            return target, None
        started = time.monotonic()
        log(
            f"building the base image {target.name} (Debian {SUITES[suite]}) with debootstrap "
            "(once, one to two minutes)"
        )
        _build(target, debian_sources(), suite)
        return target, time.monotonic() - started


def _build(target: Path, src: DebianSources, suite: str) -> None:
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            suite,
            str(tmp),
            src.mirror,
        ],
        timeout=1800,
    )
    _prepare(tmp, src, suite)
    if target.exists():  # an interrupted rename from an older build
        shutil.rmtree(target)
    tmp.rename(target)


def _prepare(root: Path, src: DebianSources, suite: str) -> None:
    """Turn a fresh debootstrap tree into a base that clones cleanly."""
    # Every clone must get its own identity.
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # apt: the controller's mirror, no cached .debs.
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d").mkdir(exist_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(host_sources(src, suite))
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True)
    lists_dir = root / "var/lib/apt/lists"
    for lists in lists_dir.glob("*_*"):
        lists.unlink()
    # apt's freshness check (Ansible's cache_valid_time) trusts the mtime of the lists
    # directory, which debootstrap just touched: date it to 1970 so that the first apt task
    # on a new host downloads the lists it lacks.
    os.utime(lists_dir, (0, 0))
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (root / ".coopctl-image").write_text(
        f"debian {suite} v{IMAGE_VERSION} from {src.mirror}, built "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
    )
