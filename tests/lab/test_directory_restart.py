"""The directory survives its clients: a slapd that dies comes back by itself, logins with it.

Debian 12's slapd 2.5.13 crashes (SIGSEGV in txn_end_extop) when a client goes away while
slapd commits its large RFC 5805 transaction: connection_abandon() frees the transaction's
queued operations under the commit loop's feet. It does with no overlay at all, with syncprov
alone, and with the role's whole set (measured on private servers on the lab's `dir`): the
overlays only change where the freed memory is touched (one core seen was in syncprov). The
openldap role cannot fix slapd; it makes systemd start it again (a drop-in with PIDFile and
Restart=on-failure on Debian's generated unit), so that every member's login comes back within
seconds instead of staying down until someone notices.

The test makes a client die at EndTransaction (tests/lab/slapd_crash.py) a few times; if slapd
survives every try, it kills slapd with SIGSEGV itself, so that the restart is checked either
way, and it says which of the two happened.
"""

from __future__ import annotations

import contextlib
import imaplib
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import ldap3
import pytest

from provisioner.lab.inventory import write_coopctl_config
from tests.lab.helpers import coopctl_connection

pytestmark = pytest.mark.lab

BASE = "dc=demo,dc=coop"
ROOT = Path(__file__).resolve().parents[2]
ATTEMPTS = 3
# Enough queued adds that slapd's commit loop runs for a second or more on the lab.
ADDS = 5000
# How long after EndTransaction the client is killed: inside the commit.
KILL_AFTER = 0.3
# Generous: the role restarts slapd after openldap_restart_sec (1 s); the rest is Dovecot
# reconnecting. The figure itself is printed.
RECOVERY_TIMEOUT = 30.0


def slapd_state(lab) -> dict[str, str]:
    out = lab.host("dir").check_output(
        "systemctl show slapd -p MainPID -p NRestarts -p ActiveState -p Restart -p PIDFile")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_for(check: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until check() was true, or None after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except Exception:  # anything failing here means "not yet"
            pass
        time.sleep(0.2)
    return None


def ldap_bind(lab, dn: str, password: str) -> bool:
    tls = ldap3.Tls(ca_certs_file=str(lab.ca_file), validate=ssl.CERT_REQUIRED)
    conn = ldap3.Connection(
        ldap3.Server(lab.addresses["dir"], port=389, tls=tls, connect_timeout=3),
        user=dn, password=password, receive_timeout=5, raise_exceptions=False)
    try:
        conn.open()
        return bool(conn.start_tls() and conn.bind())
    finally:
        conn.unbind()


def imap_login(lab, uid: str, password: str) -> bool:
    conn = imaplib.IMAP4(lab.addresses["mail"], 143, timeout=10)
    try:
        ctx = ssl.create_default_context(cafile=str(lab.ca_file))
        ctx.check_hostname = False  # the lab certificate names the host, we dial its address
        conn.starttls(ssl_context=ctx)
        conn.login(uid, password)
        return True
    except imaplib.IMAP4.error:
        return False
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            conn.logout()


def kill_client_at_commit(config: Path, prefix: str) -> float:
    """Run the dying client and SIGKILL it just after its EndTransaction went out; returns
    the time.monotonic() of the kill."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.lab.slapd_crash", str(config), str(ADDS), prefix],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "ENDTXN", (line, child.stderr.read())
        time.sleep(KILL_AFTER)
    finally:
        child.kill()
        killed = time.monotonic()
        child.wait(timeout=10)
    return killed


def test_slapd_restarts_by_itself_with_logins_working(lab, throwaway_directory, tmp_path,
                                                       record_property):
    state = slapd_state(lab)
    assert state["Restart"] == "on-failure"
    assert state["PIDFile"], "systemd must know slapd's PID to see it die"
    assert state["MainPID"] != "0", "systemd must be watching the running slapd"

    members = throwaway_directory(prefix="restart", given_name="Restart", services=("mail",))
    uid, dn, password = members.member()
    assert ldap_bind(lab, dn, password)
    assert wait_for(lambda: imap_login(lab, uid, password), 20) is not None
    config = write_coopctl_config(lab.cfg, tmp_path / "coopctl.yaml")

    crashed_by_client = False
    first = slapd_state(lab)
    for attempt in range(ATTEMPTS):
        restarts = slapd_state(lab)["NRestarts"]
        down_since = kill_client_at_commit(config, f"crash{attempt}x")
        # Either slapd died (and systemd counts a restart), or it refused the transaction.
        if wait_for(lambda n=restarts: slapd_state(lab)["NRestarts"] != n, 5) is not None:
            crashed_by_client = True
            break
    if not crashed_by_client:
        # It survived every client: die the same way, so that the restart is tested anyway.
        before = slapd_state(lab)
        lab.host("dir").check_output(f"kill -{signal.SIGSEGV.name} {before['MainPID']}")
        down_since = time.monotonic()
    record_property("slapd_crashed_by_a_client", crashed_by_client)
    print(f"slapd {'crashed when its client died' if crashed_by_client else 'survived'} "
          f"({attempt + 1} attempt(s) of {ADDS} adds killed {KILL_AFTER} s after EndTxn)")

    back = wait_for(lambda: ldap_bind(lab, dn, password), RECOVERY_TIMEOUT)
    assert back is not None, f"no LDAP bind within {RECOVERY_TIMEOUT} s: {slapd_state(lab)}"
    bind_after = time.monotonic() - down_since
    assert wait_for(lambda: imap_login(lab, uid, password), RECOVERY_TIMEOUT) is not None, (
        f"no IMAP login within {RECOVERY_TIMEOUT} s")
    imap_after = time.monotonic() - down_since
    record_property("seconds_to_ldap_bind", round(bind_after, 1))
    record_property("seconds_to_imap_login", round(imap_after, 1))
    print(f"after the crash: LDAP bind after {bind_after:.1f} s, IMAP login after "
          f"{imap_after:.1f} s")
    # The fixture's connection died with slapd: give it a new one to clean up with.
    members.conn.unbind()
    members.conn = coopctl_connection(lab)

    after = slapd_state(lab)
    assert after["ActiveState"] == "active"
    assert after["MainPID"] not in ("0", first["MainPID"])
    assert int(after["NRestarts"]) > int(first["NRestarts"])
    # Nothing of the killed transactions was written: each was rolled back (a crash) or
    # refused (its last add repeats its first DN).
    conn = ldap3.Connection(ldap3.Server(lab.addresses["dir"], port=389, tls=ldap3.Tls(
        ca_certs_file=str(lab.ca_file), validate=ssl.CERT_REQUIRED)),
        user=f"cn=coopctl,ou=services,{BASE}", password=lab.secret("ldap_coopctl"))
    conn.open()
    assert conn.start_tls() and conn.bind()
    conn.search(f"ou=people,{BASE}", "(uid=crash*)", attributes=["1.1"])
    assert conn.entries == []
    conn.unbind()
