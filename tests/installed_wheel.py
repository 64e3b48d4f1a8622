"""coopctl as a coop gets it: the wheel built from this checkout, installed with pip into a fresh
virtualenv outside the repository, run from a directory that is not the checkout.

One build and one install per test session, whichever test asks first (tests/test_packaging.py
and the lab's example-inventory test share it). pip resolves the dependencies from the package
registry as it would for a coop (its own cache makes a second session quick); the wheel itself
comes from this checkout, built by pip in an isolated build environment (hatchling).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Variables that would make the installed coopctl read this checkout or a developer's files.
SCRUBBED = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")


@dataclass(frozen=True)
class Installed:
    """The fresh virtualenv and an empty working directory, both outside the repository."""

    venv: Path
    wheel: Path
    workdir: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def coopctl(self) -> str:
        return str(self.bin / "coopctl")

    @property
    def python(self) -> str:
        return str(self.bin / "python")

    def env(self, **extra: str) -> dict[str, str]:
        """The caller's environment minus anything pointing at this checkout or at another
        coopctl setting (COOPCTL_*; the shared artifact cache is kept: it is only a cache)."""
        env = {
            k: v for k, v in os.environ.items()
            if k not in SCRUBBED and (not k.startswith("COOPCTL_") or k == "COOPCTL_ARTIFACTS_DIR")
        }  # fmt: skip
        env["PATH"] = f"{self.bin}:{env.get('PATH', '/usr/bin:/bin')}"
        env.update(extra)
        return env

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`coopctl ARGS` (or any program of the venv, when args[0] is a path) from workdir."""
        argv = list(args) if args and os.sep in args[0] else [self.coopctl, *args]
        return subprocess.run(argv, cwd=cwd or self.workdir, env=env or self.env(),
                              capture_output=True, text=True, timeout=timeout, check=False)


_INSTALLED: dict[str, Installed] = {}


def _run(argv: list[str], what: str, **kwargs) -> None:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env=env, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (rc {result.returncode}):\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def installed_coopctl(base: Path) -> Installed:
    """Build the wheel and install it into base/venv (once per session); see the module doc."""
    if "it" in _INSTALLED:
        return _INSTALLED["it"]
    if REPO in base.resolve().parents:
        raise RuntimeError(f"{base} is inside the repository: the test must install outside it")
    dist, venv, workdir = base / "dist", base / "venv", base / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
          "-q", "-w", str(dist), str(REPO)], "building the wheel", cwd=workdir)
    wheels = sorted(dist.glob("coopctl-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one coopctl wheel in {dist}, found {wheels}")
    # The venv gets no pip of its own (ensurepip takes longer than the rest): this pip installs
    # into it (--python), resolving the wheel's dependencies from the registry.
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], "creating the virtualenv",
         cwd=workdir)
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
          "--disable-pip-version-check", str(wheels[0])], "pip install of the wheel", cwd=workdir)
    _INSTALLED["it"] = Installed(venv=venv, wheel=wheels[0], workdir=workdir)
    return _INSTALLED["it"]
