"""Running the system tools the lab is made of (ip, mount, debootstrap, ssh-keygen).

One helper so every call logs the same way, never goes through a shell, and fails with the
command and its stderr in the message instead of a bare ``CalledProcessError``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from provisioner.lab.config import LabError

SETUP_HINT = "run `bash .ci/setup` (it installs debootstrap, systemd-container, iproute2)"
REQUIRED_TOOLS = ("debootstrap", "systemd-nspawn", "ip", "nsenter", "ssh", "ssh-keygen", "mount")


def run(
    argv: Sequence[str], *, check: bool = True, input_text: str | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` and return its result; raise LabError with stderr if it fails."""
    proc = subprocess.run(
        list(argv),
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise LabError(
            f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}"
        )
    return proc


def require_root() -> None:
    """The lab creates bridges, namespaces and mounts: only root can."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (bridges, namespaces, mounts): run it with sudo")


def require_tools() -> None:
    """Fail early, naming the missing tools and how to get them."""
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        raise LabError(f"missing {', '.join(missing)}: {SETUP_HINT}")
