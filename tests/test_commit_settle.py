"""A connection that breaks during a commit, against the real slapd: coopctl settles it.

A TCP relay between coopctl and the test's slapd cuts the connection once, at the client's
EndTransaction: either after slapd answered it (the transaction was committed, the client
never hears so) or before slapd saw it (nothing was committed). coopctl opens the
connection again, reads the transaction back, and sends it once more only if it was not
applied. A server that is not listening yet (slapd restarting) is waited for.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import ldap3
import pytest
from click.testing import CliRunner

from provisioner.changes import ChangeSet
from provisioner.cli import cli
from provisioner.cli.demo import write_local_config
from provisioner.config import load
from provisioner.errors import DirectoryUnavailable
from provisioner.indoubt import was_applied
from provisioner.ldapconn import END_TXN, Transaction, connect
from provisioner.localslapd import LocalDirectory
from tests.conftest import SUFFIX, admin_connection

PEOPLE = f"ou=people,{SUFFIX}"


class CuttingRelay:
    """Relays TCP to slapd; cuts the first connection that sends EndTransaction.

    cut="after": EndTransaction goes through and the answer is swallowed (committed, in
    doubt); cut="before": EndTransaction never reaches slapd (not committed, in doubt).
    """

    def __init__(self, target_port: int, cut: str, listen_after: float = 0.0) -> None:
        self.target_port = target_port
        self.cut = cut
        self.armed = cut in ("after", "before")
        self.cuts = 0
        self.connections = 0
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.listener: socket.socket | None = None
        self._stop = threading.Event()
        threading.Thread(target=self._serve, args=(listen_after,), daemon=True).start()

    def _serve(self, listen_after: float) -> None:
        time.sleep(listen_after)
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by close()
                return
            self.connections += 1
            server = socket.create_connection(("127.0.0.1", self.target_port))
            swallow = threading.Event()
            threading.Thread(target=self._up, args=(client, server, swallow), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, swallow),
                             daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, swallow: threading.Event) -> None:
        while data := _recv(client):
            if self.armed and END_TXN.encode() in data:
                self.armed = False
                self.cuts += 1
                if self.cut == "before":
                    _close(client, server)
                    return
                swallow.set()
            try:
                server.sendall(data)
            except OSError:
                break
        _close(client, server)

    def _down(self, server: socket.socket, client: socket.socket,
              swallow: threading.Event) -> None:
        while data := _recv(server):
            if swallow.is_set():  # slapd answered EndTransaction: it committed
                _close(client, server)
                return
            try:
                client.sendall(data)
            except OSError:
                break
        _close(client, server)

    def close(self) -> None:
        self._stop.set()
        if self.listener is not None:
            self.listener.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@pytest.fixture(scope="module")
def private_slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDirectory]:
    """A slapd of this module's own: cutting connections in the middle of transactions is
    what Debian 12's slapd 2.5.13 handles worst (its transaction code frees queued operations
    wrongly, fixed upstream in 2.5.14 by ITS#9892), and a crash must not reach other tests."""
    server = LocalDirectory(tmp_path_factory.mktemp("settle") / "slapd", suffix=SUFFIX,
                            durable=True)
    server.build()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def coop(private_slapd: LocalDirectory, tmp_path: Path) -> Path:
    """An initialised coop on the private slapd; returns its config path."""
    if not private_slapd.running():
        private_slapd.start()  # an earlier test of the module made it crash: start it again
    config = write_local_config(tmp_path, private_slapd)
    conn = admin_connection(private_slapd)
    try:
        for ou in ("people", "groups", "plans"):
            conn.search(f"ou={ou},{SUFFIX}", "(objectClass=*)", ldap3.LEVEL, attributes=["1.1"])
            for entry in list(conn.response):
                conn.delete(entry["dn"])
    finally:
        conn.unbind()
    result = CliRunner().invoke(cli, ["--config", str(config), "init"])
    assert result.exit_code == 0, result.output
    return config


@pytest.fixture
def admin(private_slapd: LocalDirectory, coop: Path) -> Iterator[ldap3.Connection]:
    conn = admin_connection(private_slapd)
    yield conn
    conn.unbind()


@pytest.fixture
def relayed(coop: Path, private_slapd: LocalDirectory) -> Iterator:  # type: ignore[no-untyped-def]
    made: list[CuttingRelay] = []

    def make(cut: str, listen_after: float = 0.0, retry_seconds: float = 10.0):  # type: ignore[no-untyped-def]
        relay = CuttingRelay(private_slapd.port, cut, listen_after)
        made.append(relay)
        directory = replace(load(coop).directory, uri=f"ldap://127.0.0.1:{relay.port}",
                            retry_seconds=retry_seconds)
        return relay, directory

    yield make
    for relay in made:
        relay.close()


def person(uid: str) -> dict[str, object]:
    return {"objectClass": ["top", "inetOrgPerson"], "uid": uid, "cn": uid, "sn": uid}


def people(admin: ldap3.Connection) -> set[str]:
    admin.search(PEOPLE, "(objectClass=inetOrgPerson)", ldap3.LEVEL, attributes=["uid"])
    return {e["attributes"]["uid"][0] for e in admin.response}


def additions(directory, uids: list[str]) -> ChangeSet:  # type: ignore[no-untyped-def]
    cs = ChangeSet(directory)
    for uid in uids:
        cs.tx.add(f"uid={uid},{PEOPLE}", person(uid))
    return cs


@pytest.mark.parametrize("cut", ["after", "before"])
def test_a_commit_cut_off_is_read_back_and_finished_once(relayed, admin, cut: str) -> None:
    relay, directory = relayed(cut)
    uids = [f"cut{n}" for n in range(12)]
    conn = connect(directory)
    additions(directory, uids).apply(conn)  # no error: settled
    assert relay.cuts == 1 and relay.connections == 2
    assert people(admin) == set(uids)  # once: a second add of any would have been refused
    # the same connection object goes on working
    assert conn.search(f"uid=cut0,{PEOPLE}", "(objectClass=*)", ldap3.BASE)
    conn.unbind()


def test_without_settling_the_user_is_told_it_is_in_doubt(relayed, admin) -> None:
    _relay, directory = relayed("after")
    conn = connect(directory)
    tx = Transaction()
    tx.add(f"uid=doubt,{PEOPLE}", person("doubt"))
    with pytest.raises(DirectoryUnavailable) as caught:
        tx.commit(conn)
    assert "broke while it committed" in caught.value.message
    assert "run the same command again" in (caught.value.hint or "")
    assert people(admin) == {"doubt"}  # slapd did commit it


def test_a_group_change_cut_off_is_recognised_as_applied(relayed, admin, coop: Path) -> None:
    """A transaction of modifications only (what a group change is) is read back by its
    attributes' values: the relay cuts after the commit, nothing is sent twice."""
    directory = load(coop).directory
    setup = connect(directory)
    additions(directory, ["ann", "bob"]).apply(setup)
    group = f"cn=crew,ou=groups,{SUFFIX}"
    assert setup.add(group, ["groupOfNames"], {"cn": "crew", "member": directory.placeholder_dn})
    change = ChangeSet(directory)
    change.tx.modify(group, {"member": [
        (ldap3.MODIFY_ADD, [f"uid=ann,{PEOPLE}", f"uid=bob,{PEOPLE}"]),
        (ldap3.MODIFY_DELETE, [directory.placeholder_dn])]})
    assert was_applied(setup, change.tx.ops) is False
    relay, relayed_dir = relayed("after")
    conn = connect(relayed_dir)
    change.directory = relayed_dir
    change.apply(conn)  # a second send would be refused: ann is already a member
    assert relay.cuts == 1
    assert was_applied(setup, change.tx.ops) is True
    admin.search(group, "(objectClass=*)", ldap3.BASE, attributes=["member"])
    assert sorted(admin.response[0]["attributes"]["member"]) == [
        f"uid=ann,{PEOPLE}", f"uid=bob,{PEOPLE}"]
    setup.delete(group)
    setup.unbind()


def test_a_server_that_listens_late_is_waited_for(relayed, admin) -> None:
    """As when slapd restarts: refused connections are tried again within retry_seconds."""
    _relay, directory = relayed("none", listen_after=1.5)
    started = time.monotonic()
    conn = connect(directory)
    assert time.monotonic() - started >= 1.0
    conn.unbind()


def test_with_no_retry_a_refused_connection_fails_at_once(relayed) -> None:
    _relay, directory = relayed("none", listen_after=30, retry_seconds=0)
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailable) as caught:
        connect(directory)
    assert time.monotonic() - started < 2
    assert "cannot reach the directory" in caught.value.message
    assert caught.value.hint


def test_a_command_rides_out_a_slapd_restart(private_slapd: LocalDirectory, coop: Path) -> None:
    """slapd killed, then started again by a supervisor (systemd, in production) while a
    command runs: the command waits for it and succeeds, saying it waited."""
    import os
    import signal

    from tests.conftest import Restarter

    restarter = Restarter(private_slapd)
    os.kill(int(private_slapd.pidfile.read_text()), signal.SIGKILL)
    while private_slapd.running():
        time.sleep(0.05)
    timer = threading.Timer(1.0, restarter.start)  # slapd comes back a second later
    timer.start()
    try:
        result = CliRunner().invoke(cli, ["--config", str(coop), "plan", "add", "later",
                                          "--price", "1", "--service", "mail"])
    finally:
        timer.join()
        restarter.stopping.set()
        restarter.join()
    assert result.exit_code == 0, result.output
    assert "does not answer yet" in result.output  # said on stderr, once
    assert restarter.restarts == 1
    assert private_slapd.running()
