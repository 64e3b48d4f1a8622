"""Test scaffolding shared by the connector tests (unit and lab): an in-memory state store,
the `Runtime` a connector is given for the demo coop, and the Nextcloud double on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from provisioner.services.base import HostAccess, Runtime, StateStore

TESTS_DIR = Path(__file__).resolve().parent


class MemoryState:
    """StateStore in a dict: (service, kind) -> set of strings (the sync keeps it with the
    journal, see provisioner.journal)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], set[str]] = {}

    def marks(self, service: str, kind: str) -> set[str]:
        return set(self.data.get((service, kind), set()))

    def mark(self, service: str, kind: str, uid: str) -> None:
        self.data.setdefault((service, kind), set()).add(uid)

    def unmark(self, service: str, kind: str, uid: str) -> None:
        self.data.get((service, kind), set()).discard(uid)


def runtime(hosts: HostAccess, state: StateStore | None = None, *,
            settings: Mapping[str, Any] | None = None, coop: str = "demo",
            **more: Any) -> Runtime:
    """A Runtime for the coop `coop` (mail domain demo.coop); a fresh MemoryState unless given.

    `more` goes to Runtime as is (ca_file, secret).
    """
    return Runtime(settings={} if settings is None else settings, hosts=hosts,
                   state=MemoryState() if state is None else state,
                   mail_domain="demo.coop", coop=coop, **more)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_nextcloud_double(store: Path, password_file: Path
                     ) -> Iterator[tuple[str, dict[str, str], subprocess.Popen[str]]]:
    """The Nextcloud contract double (tests/nextcloud_double) serving `store` on a free port of
    127.0.0.1, as the cloud role runs it: (base URL, its environment, its process)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(TESTS_DIR))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nextcloud_double", "serve", "--port", str(port),
         "--store", str(store), "--admin-password-file", str(password_file)],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(base + "/status.php", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    "the double did not start: " + (proc.stderr.read() or "")
                ) from None
            time.sleep(0.05)
    try:
        yield base, env, proc
    finally:
        proc.terminate()
        proc.wait(timeout=5)
