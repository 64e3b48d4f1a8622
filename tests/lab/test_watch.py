"""`coopctl watch` on the lab: a directory change reaches the real services by itself.

One watcher process (`coopctl watch`, the real sync and connectors, run from the controller
like `coopctl sync`) follows the lab's directory for the module; members are changed with
coopctl's own commands and each effect is checked in the service: the welcome mail read over
IMAP, the cloud account and quota through the OCS API, Dovecot's quota with doveadm, and on
suspension every live session ended: an open IMAP session, a Keycloak refresh token, the cloud
account, an Etherpad session. Latencies (LDAP write -> effect) are measured and printed, not
asserted as times: their targets are compared in bench/bench_watch.py and docs/watch.md.
"""

from __future__ import annotations

import imaplib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from tests.lab.helpers import coopctl_connection, first_login_change
from tests.lab.test_mail import imap
from tests.lab.test_sso import password_grant
from tests.lab.test_sync_lifecycle import cloud_user, inbox, pads_api
from tests.lab.test_sync_sso import refresh

pytestmark = pytest.mark.lab

COOPCTL = str(Path(sys.executable).with_name("coopctl"))
PLAN = "watchplan"


def coopctl(config: Path, *args: str, input: str | None = None) -> str:
    result = subprocess.run([COOPCTL, "--config", str(config), *args], capture_output=True,
                            text=True, timeout=600, input=input, check=False)
    assert result.returncode == 0, f"coopctl {args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def until(check: Callable[[], object], what: str, timeout: float = 120) -> float:
    """Seconds until `check` holds (polled every 0.1 s); fails after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except (imaplib.IMAP4.error, OSError):
            pass
        time.sleep(0.1)
    pytest.fail(f"gave up waiting for: {what}")


@pytest.fixture
def watching(lab, coopctl_config: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict]:
    plans = {p["name"] for p in json.loads(coopctl(coopctl_config, "plan", "list", "--json"))}
    if PLAN not in plans:
        coopctl(coopctl_config, "plan", "add", PLAN, "--mail-quota", "1 GB", "--cloud-quota",
                "5 GB", "--price", "3", *[x for s in ("mail", "cloud", "pads", "sso")
                                          for x in ("--service", s)])
    # The watcher's first start is a full sync, which the sync's member-count guard refuses
    # when earlier tests deleted most of the lab's members since the last full sync (CI saw
    # "1 member, the last successful sync saw 3"): one forced full sync first records today's
    # count. Its exit status is not this test's business.
    subprocess.run([COOPCTL, "--config", str(coopctl_config), "sync", "--yes", "--force"],
                   capture_output=True, text=True, timeout=900, check=False)
    log = tmp_path_factory.mktemp("watch") / "watch.log"
    with log.open("w") as out:  # a file, not a pipe nobody reads while it runs
        process = subprocess.Popen([COOPCTL, "--config", str(coopctl_config), "watch",
                                    "--full-sync-every", "0", "--heartbeat", "2s"],
                                   stdout=out, stderr=subprocess.STDOUT, text=True)
    status = {"config": coopctl_config, "created": []}

    def streaming() -> bool:
        shown = subprocess.run([COOPCTL, "--config", str(coopctl_config), "watch",
                                "--status", "--json"], capture_output=True, text=True,
                               check=False)
        # 9 with a status: an alert stands (an earlier run's guard), the watcher streams all
        # the same; 9 without one: no status written yet
        if shown.returncode not in (0, 9) or not shown.stdout.strip():
            return False
        return json.loads(shown.stdout)["state"] == "streaming"

    try:
        # the first start is a full sync of the lab's directory (no cookie yet)
        until(lambda: process.poll() is None and streaming(), "the watcher streaming", 600)
        yield status
    finally:
        process.terminate()
        process.wait(timeout=150)
        print(log.read_text()[-4000:])
        left = (datetime.now(UTC) - timedelta(days=40)).strftime("%Y-%m-%d")
        for uid in status["created"]:
            coopctl(coopctl_config, "member", "depart", uid, "--on", left)
        if status["created"]:
            coopctl(coopctl_config, "sync", "--yes", "--force",
                    *[x for uid in status["created"] for x in ("--member", uid)])
        conn = coopctl_connection(lab)
        try:
            for uid in status["created"]:
                conn.delete(f"uid={uid},ou=people,dc=demo,dc=coop")
        finally:
            conn.unbind()


class Clock:
    """Latencies from the LDAP write: `write` runs a coopctl command, whose write is done when
    it returns; the command's own start-up (over a second here) is printed beside, not in."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.figures: dict[str, tuple[float, float]] = {}
        self.started = self.written = 0.0

    def write(self, *args: str, input: str | None = None) -> None:
        self.started = time.monotonic()
        coopctl(self.config, *args, input=input)
        self.written = time.monotonic()

    def seen(self, what: str, check: Callable[[], object], timeout: float = 120) -> None:
        until(check, what, timeout)
        now = time.monotonic()
        self.figures[what] = (now - self.written, now - self.started)


def cloud_app_password(lab, uid: str) -> str:
    """A new app password of `uid` (as a desktop client gets one), through the cloud's occ."""
    return lab.host("apps").check_output(f"occ-double user:auth-tokens:add {uid}").splitlines()[1]


def cloud_tokens(lab, uid: str) -> list[dict]:
    return json.loads(lab.host("apps").check_output(
        f"occ-double user:auth-tokens:list {uid} --output=json"))


def cloud_login(lab, uid: str, secret: str) -> int:
    """The HTTP status of an OCS call authenticated as `uid` with `secret`."""
    s = requests.Session()
    s.trust_env = False
    return s.get(f"https://{lab.addresses['apps']}/ocs/v2.php/cloud/user",
                 params={"format": "json"}, headers={"Host": "cloud.demo.coop",
                                                     "OCS-APIRequest": "true"},
                 auth=(uid, secret), verify=str(lab.ca_file), timeout=30).status_code


def test_changes_reach_the_services_without_a_sync(lab, watching) -> None:
    config = watching["config"]
    uid, password = f"watch{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    clock = Clock(config)

    # New member -> welcome mail in their mailbox, cloud account, pad author; no `coopctl sync`.
    clock.write("member", "add", "--given-name", "Wanda", "--family-name", "Watcher",
                "--uid", uid, "--plan", PLAN, "--password-stdin", input=password + "\n")
    watching["created"].append(uid)
    # The member chooses their own password at once (the SSO's first login): the one coopctl
    # set (pwdReset) opens no mailbox.
    password = first_login_change(lab, uid, password)
    clock.seen("new member -> welcome mail + cloud account",
               lambda: inbox(lab, uid, password) and cloud_user(lab, uid))
    assert cloud_user(lab, uid)["quota"]["quota"] == 5 * 1024**3

    # Quota change -> visible in the cloud (and in Dovecot, which reads it from LDAP).
    clock.write("member", "modify", uid, "--mail-quota", "2 GB", "--cloud-quota", "10 GB")
    clock.seen("quota change -> cloud quota",
               lambda: cloud_user(lab, uid)["quota"]["quota"] == 10 * 1024**3)
    quota = lab.host("mail").check_output(f"doveadm -f tab quota get -u {uid}")
    assert str(2 * 1024 * 1024) in quota, quota

    # Suspension -> every live session ended: IMAP, Keycloak, cloud, pads.
    session = imap(lab, uid, password)
    session.select("INBOX")
    tokens = password_grant(lab, uid, password).json()
    assert "refresh_token" in tokens, tokens
    author = pads_api(lab, "createAuthorIfNotExistsFor", authorMapper=uid)["data"]["authorID"]
    group = pads_api(lab, "createGroupIfNotExistsFor", groupMapper=f"watch-{uid}")
    pad_session = pads_api(lab, "createSession", groupID=group["data"]["groupID"],
                           authorID=author, validUntil=str(int(time.time()) + 3600))
    session_id = pad_session["data"]["sessionID"]
    # Two app passwords of a cloud client: one to use (the cloud refuses it once the account
    # is disabled), one left alone until the connector's follow-up deletes it.
    app_password, spare = cloud_app_password(lab, uid), cloud_app_password(lab, uid)
    assert cloud_login(lab, uid, app_password) == 200
    clock.write("member", "suspend", uid)

    def cut() -> bool:
        try:
            session.noop()
        except (imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError):
            return True
        return False

    clock.seen("suspension -> Keycloak refresh token refused",
               lambda: refresh(lab, tokens["refresh_token"]).status_code == 400)
    clock.seen("suspension -> IMAP session cut", cut)
    clock.seen("suspension -> cloud account disabled",
               lambda: cloud_user(lab, uid)["enabled"] is False)
    clock.seen("suspension -> cloud app password refused",
               lambda: cloud_login(lab, uid, app_password) == 401)
    clock.seen("suspension -> pad session deleted",
               lambda: pads_api(lab, "getSessionInfo", sessionID=session_id)["code"] != 0)

    # Everything was done by the watcher, journalled like a sync's changes.
    # (a batch journals each change when its service's part of the batch ends)
    wanted = {("mail", "welcome"), ("cloud", "create"), ("cloud", "quota"), ("mail", "suspend"),
              ("cloud", "suspend"), ("pads", "suspend")}

    def journalled() -> set[tuple[str, str]]:
        records = json.loads(coopctl(config, "journal", "--member", uid, "--json"))
        return {(r["service"], r["action"]) for r in records if r["result"] == "ok"}

    until(lambda: wanted <= journalled(), "every change in the journal")
    # the follow-up: every auth token deleted, the spare one too, and journalled
    until(lambda: any(r["service"] == "cloud" and r["result"] == "ok"
                      and r["detail"] == {"sessions": "auth tokens deleted"}
                      for r in json.loads(coopctl(config, "journal", "--member", uid, "--json"))),
          "the cloud's follow-up in the journal")
    assert cloud_tokens(lab, uid) == []
    assert cloud_login(lab, uid, spare) == 401
    status = json.loads(coopctl(config, "watch", "--status", "--json"))
    assert status["alert"] is None and status["connected"]
    for what, (after_write, after_start) in clock.figures.items():
        print(f"latency {what}: {after_write:.2f} s after the write "
              f"({after_start:.2f} s after the coopctl command started)")


def test_a_deleted_group_past_the_guard_is_held_in_the_services(lab, watching) -> None:
    """A group entry deleted from the directory (a provider bug, a wrong filter) takes it from
    each of its members at once: past the guard's limit (max(5, 10 % of the members)) the
    watcher holds those changes and raises an alert, so the real cloud keeps every membership,
    while other changes still flow; a full `coopctl sync` applies them and clears the alert."""
    config = watching["config"]
    group = f"watchgrp{secrets.token_hex(2)}"
    coopctl(config, "group", "add", group)
    members = len(json.loads(coopctl(config, "member", "list", "--json")))
    limit = max(5, int((members + 8) * 0.1))  # the sync section's defaults
    uids = [f"wg{secrets.token_hex(3)}" for _ in range(limit + 3)]
    for uid in uids:
        coopctl(config, "member", "add", "--given-name", "Gert", "--family-name", "Guard",
                "--uid", uid, "--plan", PLAN, "--group", group, "--generate-password")
        watching["created"].append(uid)
    until(lambda: all(group in ((cloud_user(lab, uid) or {}).get("groups") or [])
                      for uid in uids), "every member in the cloud group", 300)
    conn = coopctl_connection(lab)
    try:
        assert conn.delete(f"cn={group},ou=groups,dc=demo,dc=coop"), conn.result
    finally:
        conn.unbind()

    def status() -> dict:
        shown = subprocess.run([COOPCTL, "--config", str(config), "watch", "--status", "--json"],
                               capture_output=True, text=True, timeout=60, check=False)
        assert shown.returncode in (0, 9) and shown.stdout.strip(), shown.stderr  # 9: alert
        return json.loads(shown.stdout)

    until(lambda: status().get("alert") is not None, "the guard's alert", 120)
    # a later, harmless change still reaches the cloud while the alert stands
    coopctl(config, "member", "modify", uids[0], "--cloud-quota", "7 GB")
    until(lambda: cloud_user(lab, uids[0])["quota"]["quota"] == 7 * 1024**3,
          "a quota change during the alert", 120)
    assert status()["held"] >= len(uids) - limit
    kept = [uid for uid in uids if group in (cloud_user(lab, uid)["groups"] or [])]
    assert len(kept) >= len(uids) - limit, kept  # the held ones are still in the cloud group
    alert = status()["alert"]
    assert "the limit is" in alert["message"], alert
    # the operator's full sync applies what was held, and the watcher clears the alert
    subprocess.run([COOPCTL, "--config", str(config), "sync", "--yes", "--force"],
                   capture_output=True, text=True, timeout=900, check=True)
    until(lambda: status().get("alert") is None, "the alert cleared by the full sync", 120)
    assert all(group not in (cloud_user(lab, uid)["groups"] or []) for uid in uids)


# -- the role: coopctl installed from wheels on the host `dir`, `coopctl watch` under systemd --

ROLE_PLAY = """
- name: coopctl watch on the directory's host (role watcher)
  hosts: dir
  become: true
  gather_facts: false
  roles:
    - role: watcher
"""


def wheelhouse(directory: Path, python: str) -> Path:
    """coopctl's wheel and its dependencies' for the host's Python (what a coop prepares)."""
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--no-deps", "-q", "-w", str(directory),
                    str(Path(__file__).resolve().parents[2])], check=True, timeout=600)
    wheel = next(directory.glob("coopctl-*.whl"))
    subprocess.run([*pip, "download", "-q", "-d", str(directory), "--only-binary=:all:",
                    "--python-version", python, "--platform", "manylinux2014_x86_64",
                    str(wheel)], check=True, timeout=600)
    return directory


def test_the_watcher_role_runs_it_as_a_hardened_service(lab, tmp_path: Path) -> None:
    """The role on the lab's `dir` with a configuration without services (the connectors are
    the first test's business): the stream as a service, its status, a slapd restart under it,
    idempotence, and the unit's hardening."""
    import yaml

    from provisioner.ansible import deploy_playbook

    host = lab.host("dir")
    python = host.check_output("python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")
    wheels = wheelhouse(tmp_path / "wheels", python)
    config = tmp_path / "watcher.yaml"
    config.write_text(yaml.safe_dump({
        "coop": "demo",
        # the name in the certificate: ldap3 on Python 3.12+ (Debian 13) cannot match an IP
        "directory": {"uri": f"ldap://{lab.cfg.fqdn('dir')}", "tls": "starttls",
                      "ca_file": "/etc/coopctl/ca.crt", "base_dn": "dc=demo,dc=coop",
                      "bind_dn": "cn=coopctl,ou=services,dc=demo,dc=coop",
                      "bind_secret_file": "/etc/coopctl/secrets/ldap_coopctl"},
        "mail": {"domain": "demo.coop"},
        "sync": {"state_dir": "/var/lib/coopctl/demo"},
    }))
    play = tmp_path / "watcher.yml"
    play.write_text(ROLE_PLAY)
    extravars = {
        "watcher_wheel_dir": str(wheels), "watcher_config_src": str(config),
        "watcher_heartbeat": "2s", "watcher_full_sync_every": "0",
        "watcher_files": [
            {"src": str(lab.ca_file), "dest": "/etc/coopctl/ca.crt", "mode": "0644"},
            {"src": str(lab.cfg.secrets_dir / "ldap_coopctl"),
             "dest": "/etc/coopctl/secrets/ldap_coopctl"}],
    }

    def deploy() -> dict:
        recap = deploy_playbook(lab.inventory, lab_dir=lab.state_dir, playbook=str(play),
                                extravars=extravars).as_dict()
        assert not recap["failed"] and not recap["rc"], recap
        return recap

    def status() -> dict:
        out = host.run("sudo -u coopctl COOPCTL_CONFIG=/etc/coopctl/coopctl.yaml "
                       "/opt/coopctl/venv/bin/coopctl watch --status --json")
        return json.loads(out.stdout) if out.stdout.strip() else {}

    try:
        deploy()
        service = host.service("coopctl-watch")
        assert service.is_running and service.is_enabled
        until(lambda: status().get("state") == "streaming", "the service streaming", 120)
        assert deploy()["changed"] == 0  # idempotent
        shown = host.check_output("systemctl show coopctl-watch -p NoNewPrivileges "
                                  "-p ProtectSystem -p Restart -p User -p ReadWritePaths")
        for line in ("NoNewPrivileges=yes", "ProtectSystem=strict", "Restart=on-failure",
                     "User=coopctl", "ReadWritePaths=/var/lib/coopctl"):
            assert line in shown, shown
        # a change reaches it; slapd restarted under it: it reconnects and goes on
        conn = coopctl_connection(lab)
        before = status()["counters"]["batches"]
        uid = f"watchrole{secrets.token_hex(3)}"
        try:
            assert conn.add(f"uid={uid},ou=people,dc=demo,dc=coop",
                            ["inetOrgPerson", "coopMember"],
                            {"cn": uid, "sn": uid, "mail": f"{uid}@demo.coop",
                             "coopMemberStatus": "active"}), conn.result
            until(lambda: status()["counters"]["batches"] > before, "the batch", 60)
            host.run("systemctl restart slapd")
            until(lambda: status()["counters"]["reconnects"] >= 1
                  and status().get("connected"), "the reconnection", 120)
            conn = coopctl_connection(lab)
            assert conn.modify(f"uid={uid},ou=people,dc=demo,dc=coop",
                               {"displayName": [("MODIFY_REPLACE", ["after restart"])]})
            until(lambda: status()["counters"]["batches"] > before + 1, "the next batch", 60)
        finally:
            conn.delete(f"uid={uid},ou=people,dc=demo,dc=coop")
            conn.unbind()
        journal = host.check_output("journalctl -u coopctl-watch --no-pager -n 50")
        assert "stream open" in journal and "batch:" in journal, journal
    finally:
        host.run("systemctl disable --now coopctl-watch")
