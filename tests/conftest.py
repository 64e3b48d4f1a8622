"""Fixtures: a real private slapd (Debian's package) with the project's schema.

One server per test session; each test starts from an initialised, empty
coop tree (people, groups and plans are emptied between tests).
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest
from click.testing import CliRunner, Result
from ldap3.core.exceptions import LDAPException

from provisioner.cli import cli
from provisioner.cli.demo import write_local_config
from provisioner.config import load
from provisioner.localslapd import LocalDirectory

SUFFIX = "dc=demo,dc=coop"


def make_pki(directory: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 (the lab's PKI code, reused)."""
    from provisioner.lab.pki import ensure_ca, ensure_host_cert

    ca, key = ensure_ca(directory, "test")
    ensure_host_cert(directory, ca, key, "server", "localhost", "127.0.0.1")
    return directory


class Restarter(threading.Thread):
    """Starts the session's slapd again when it dies, as the openldap role has systemd do.

    Debian 12's slapd 2.5.13 dies now and then in its transaction code (a NULL pointer in
    do_add, or in back-mdb, seen here after tests that abort or cut transactions; fixed
    upstream in 2.5.14 by ITS#9892). coopctl rides such a restart out as it does in
    production (it waits for slapd and settles a commit cut off by the crash), so a crash
    fails no test that does not itself break a transaction; each restart is reported.
    """

    def __init__(self, server: LocalDirectory) -> None:
        super().__init__(daemon=True, name="slapd-restarter")
        self.server = server
        self.stopping = threading.Event()
        self.restarts = 0

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            if not self.server.running():
                try:
                    self.server.start()
                except Exception:  # tried again at the next tick
                    continue
                self.restarts += 1


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDirectory]:
    if not shutil.which("slapd") and not Path("/usr/sbin/slapd").exists():
        pytest.fail("slapd is not installed: run `bash .ci/setup` first")
    server = LocalDirectory(tmp_path_factory.mktemp("slapd") / "server", suffix=SUFFIX,
                            tls_dir=make_pki(tmp_path_factory.mktemp("pki")))
    server.build()
    server.start()
    restarter = Restarter(server)
    restarter.start()
    yield server
    restarter.stopping.set()
    restarter.join()
    if restarter.restarts:
        warnings.warn(f"the session's slapd died and was started again {restarter.restarts} "
                      "time(s)", stacklevel=1)
    server.destroy()


@pytest.fixture(scope="session")
def config_path(slapd: LocalDirectory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("coopctl")
    path = write_local_config(workdir, slapd)
    result = CliRunner().invoke(cli, ["--config", str(path), "init"])
    assert result.exit_code == 0, result.output
    return path


def admin_connection(slapd: LocalDirectory, *, restartable: bool = False) -> ldap3.Connection:
    """The directory's admin (SASL EXTERNAL on ldapi). `restartable`: ldap3's RESTARTABLE
    strategy, which opens, binds and sends an operation again when slapd was restarted under
    it (see Restarter), so a fixture's setup and teardown survive a crash."""
    strategy = ldap3.RESTARTABLE if restartable else ldap3.SYNC
    return ldap3.Connection(ldap3.Server(slapd.ldapi_uri), authentication=ldap3.SASL,
                            sasl_mechanism=ldap3.EXTERNAL, sasl_credentials="",
                            client_strategy=strategy, auto_bind=True)


@pytest.fixture
def admin(slapd: LocalDirectory) -> Iterator[ldap3.Connection]:
    deadline = time.monotonic() + 15
    while not slapd.running() and time.monotonic() < deadline:  # see Restarter
        time.sleep(0.1)
    conn = admin_connection(slapd, restartable=True)
    yield conn
    with contextlib.suppress(LDAPException):
        conn.unbind()


@pytest.fixture
def coop(config_path: Path, admin: ldap3.Connection) -> Path:
    """An initialised, empty coop; returns the config path."""
    for ou in ("people", "groups", "plans"):
        admin.search(f"ou={ou},{SUFFIX}", "(objectClass=*)", ldap3.LEVEL, attributes=["1.1"])
        for entry in list(admin.response):
            admin.delete(entry["dn"])
    return config_path


class Coopctl:
    """Runs coopctl in-process, as a user would from a shell."""

    def __init__(self, config: Path) -> None:
        self.config = config

    def __call__(self, *args: str, input: str | None = None, ok: bool = True) -> Result:
        result = CliRunner().invoke(cli, ["--config", str(self.config), *args], input=input)
        if ok:
            assert result.exit_code == 0, f"{args}: {result.output}"
        return result


@pytest.fixture
def coopctl(coop: Path) -> Coopctl:
    return Coopctl(coop)


@pytest.fixture
def with_plans(coopctl: Coopctl) -> Coopctl:
    coopctl("plan", "add", "small", "--cloud-quota", "5 GB", "--mail-quota", "1 GB",
            "--price", "2.50", "--service", "mail", "--service", "cloud")
    coopctl("plan", "add", "family", "--cloud-quota", "50 GB", "--mail-quota", "5 GB",
            "--price", "6", "--service", "mail", "--service", "cloud", "--service", "wiki")
    coopctl("group", "add", "board")
    coopctl("group", "add", "wiki-editors")
    return coopctl


@pytest.fixture
def config(coop: Path):  # type: ignore[no-untyped-def]
    return load(coop)
