"""A member's whole life through `coopctl sync`, on the lab's real services.

Everything goes through coopctl's own commands as a sysadmin would type them (`member add`,
`member suspend`, `sync`...), and each effect is checked in the service itself: the welcome
mail read over IMAP, the cloud account through the Nextcloud double's OCS API, the pad author
through Etherpad's API, the mail home on the mail host, the archive opened and compared.
Guards and failures too: a service down during a sync, kill -9 during apply, a wrong base DN,
the directory stopped, a mass departure.
"""

from __future__ import annotations

import email
import email.header
import imaplib
import json
import secrets
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import yaml

from tests.lab.helpers import coopctl_connection, fetch_inbox, first_login_change
from tests.lab.test_mail import imap, send, wait_for

pytestmark = pytest.mark.lab

COOPCTL = str(Path(sys.executable).with_name("coopctl"))
PLAN = "lifeplan"
GROUP = "life-team"


class Coop:
    """coopctl on the lab, as a new process each time (as from a shell)."""

    def __init__(self, config: Path, lab) -> None:
        self.config = config
        self.lab = lab
        self.created: list[str] = []

    def run(self, *args: str, ok: bool = True, input: str | None = None,
            config: Path | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([COOPCTL, "--config", str(config or self.config), *args],
                                capture_output=True, text=True, timeout=600, input=input,
                                check=False)
        if ok:
            assert result.returncode == 0, f"coopctl {args}:\n{result.stdout}\n{result.stderr}"
        return result

    def sync(self, *uids: str, dry_run: bool = False, ok: bool = True) -> dict:
        args = ["sync", "--json", "--yes"] + (["--dry-run"] if dry_run else [])
        for uid in uids:
            args += ["--member", uid]
        result = self.run(*args, ok=ok)
        return json.loads(result.stdout) if result.stdout.strip() else {}

    def member(self, given: str, *extra: str) -> tuple[str, str]:
        uid = f"life{secrets.token_hex(3)}"
        password = secrets.token_urlsafe(16)
        self.run("member", "add", "--given-name", given, "--family-name", "Tester",
                 "--uid", uid, "--plan", PLAN, "--group", GROUP, "--password-stdin", *extra,
                 input=password + "\n")
        self.created.append(uid)
        # The member chooses their own password at the first (SSO) login: the one coopctl set
        # (pwdReset) opens no mailbox.
        return uid, first_login_change(self.lab, uid, password)


@pytest.fixture(scope="module")
def coop(lab, coopctl_config: Path) -> Iterator[Coop]:
    """The test members are purged at the end (through the sync), so no later full sync
    (the demo's) finds departed members past their grace period."""
    c = Coop(coopctl_config, lab)
    plans = {p["name"] for p in json.loads(c.run("plan", "list", "--json").stdout)}
    if PLAN not in plans:
        c.run("plan", "add", PLAN, "--mail-quota", "1 GB", "--cloud-quota", "5 GB",
              "--price", "3", *[x for s in ("mail", "cloud", "pads", "wiki", "sso")
                                for x in ("--service", s)])
    groups = {g["name"] for g in json.loads(c.run("group", "list", "--json").stdout)}
    if GROUP not in groups:
        c.run("group", "add", GROUP)
    yield c
    left = (datetime.now(UTC) - timedelta(days=40)).strftime("%Y-%m-%d")
    members = {m["uid"]: m["status"] for m in json.loads(c.run("member", "list", "--json").stdout)}
    remaining = [uid for uid in c.created if members.get(uid) not in (None, "purged")]
    for uid in remaining:
        c.run("member", "depart", uid, "--on", left)
    if remaining:
        c.run("sync", "--yes", "--force", *[x for uid in remaining for x in ("--member", uid)])
    # Purged entries stay in a real directory (uid and number never reused); a test's own
    # would only crowd the demo's listing, which runs last on the same lab.
    conn = coopctl_connection(lab)
    try:
        for uid in c.created:
            conn.delete(f"uid={uid},ou=people,dc=demo,dc=coop")
    finally:
        conn.unbind()


def actions(data: dict) -> set[tuple[str, str]]:
    return {(c["service"], c["action"]) for c in data["plan"]["changes"]}


def cloud_user(lab, uid: str) -> dict | None:
    s = requests.Session()
    s.trust_env = False
    r = s.get(f"https://{lab.addresses['apps']}/ocs/v2.php/cloud/users/{uid}",
              params={"format": "json"}, headers={"Host": "cloud.demo.coop",
                                                  "OCS-APIRequest": "true"},
              auth=("admin", lab.secret("cloud_admin")), verify=str(lab.ca_file), timeout=30)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.json()["ocs"]["data"]


def pads_api(lab, method: str, **params: str) -> dict:
    s = requests.Session()
    s.trust_env = False
    r = s.post(f"https://{lab.addresses['apps']}/api/1.2.15/{method}",
               data={"apikey": lab.secret("etherpad_apikey"), **params},
               headers={"Host": "pads.demo.coop"}, verify=str(lab.ca_file), timeout=30)
    try:
        return r.json()
    except ValueError:  # nginx's 502 while Etherpad starts
        return {"code": None, "http": r.status_code}


def inbox(lab, uid: str, password: str) -> list[email.message.Message]:
    return [email.message_from_bytes(raw)
            for raw in fetch_inbox(imap(lab, uid, password), "(RFC822)")]


def subject(message: email.message.Message) -> str:
    return str(email.header.make_header(email.header.decode_header(message["Subject"])))


def test_a_member_s_whole_life(lab, coop):
    uid, password = coop.member("Léa", "--language", "fr")
    home_check = f"test -d /var/vmail/{uid} && echo yes || echo no"

    # New member: the plan shows what every service will get; --dry-run changes nothing.
    planned = coop.sync(uid, dry_run=True)
    assert {("mail", "welcome"), ("cloud", "create"), ("pads", "create"),
            ("wiki", "create")} <= actions(planned)
    assert cloud_user(lab, uid) is None
    done = coop.sync(uid)
    assert not done["summary"]["failed"], done["summary"]
    assert coop.sync(uid, dry_run=True)["plan"]["changes"] == []  # idempotent

    # The welcome mail, in French, tells a non-technical member their login and where to go.
    messages = wait_for(lambda: inbox(lab, uid, password))
    assert len(messages) == 1
    body = messages[0].get_payload(decode=True).decode(messages[0].get_content_charset("utf-8"))
    assert uid in body and "mot de passe" in body.lower(), body
    account = cloud_user(lab, uid)
    assert account["enabled"] and GROUP in account["groups"]
    assert account["quota"]["quota"] == 5 * 1024**3
    author = pads_api(lab, "createAuthorIfNotExistsFor", authorMapper=uid)
    assert author["code"] == 0

    # Plan change: both quotas follow; Dovecot reads its own from LDAP at once.
    coop.run("member", "modify", uid, "--mail-quota", "2 GB", "--cloud-quota", "10 GB")
    changed = coop.sync(uid)
    assert ("cloud", "quota") in actions(changed)
    assert cloud_user(lab, uid)["quota"]["quota"] == 10 * 1024**3
    quota = lab.host("mail").check_output(f"doveadm -f tab quota get -u {uid}")
    assert str(2 * 1024 * 1024) in quota, quota

    # Suspension: an open IMAP session is cut, the cloud account disabled, mail still accepted.
    session = imap(lab, uid, password)
    session.select("INBOX")
    coop.run("member", "suspend", uid)
    suspended = coop.sync(uid)
    assert {("mail", "suspend"), ("cloud", "suspend")} <= actions(suspended)
    with pytest.raises((imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError)):
        session.noop()
        session.select("INBOX")
    with pytest.raises(imaplib.IMAP4.error):
        imap(lab, uid, password)
    assert cloud_user(lab, uid)["enabled"] is False
    send(lab, f"{uid}@demo.coop", "while you were away")  # accepted: 250, not 550
    assert coop.sync(uid, dry_run=True)["plan"]["changes"] == []

    # Restored: everything back as it was, the mail sent meanwhile included.
    coop.run("member", "restore", uid)
    coop.sync(uid)
    assert cloud_user(lab, uid)["enabled"] is True
    assert wait_for(lambda: any("away" in subject(m) for m in inbox(lab, uid, password)))

    # Departure: disabled at once; past the grace period archived, verified, then removed.
    coop.run("member", "depart", uid)
    assert ("cloud", "suspend") in actions(coop.sync(uid))
    assert cloud_user(lab, uid) is not None  # nothing removed within the grace period
    left = (datetime.now(UTC) - timedelta(days=31)).strftime("%Y-%m-%d")
    coop.run("member", "depart", uid, "--on", left)  # the ERP knew better: they left in time
    purged = coop.sync(uid)
    assert not purged["summary"]["failed"], purged["summary"]
    assert purged["summary"]["purged"] == [uid]
    archive = Path(purged["summary"]["archives"][0])
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("MANIFEST.json"))
        names = tar.getnames()
        assert {"mail/mailbox.tar", "cloud/files.tar", "wiki/wiki.tar"} <= set(names), names
        with tarfile.open(fileobj=tar.extractfile("mail/mailbox.tar")) as mailbox:
            mails = [mailbox.extractfile(m).read() for m in mailbox.getmembers() if m.isfile()]
        assert any(b"while you were away" in m for m in mails)
    assert manifest["uid"] == uid and all(len(f["sha256"]) == 64 for f in manifest["files"])
    assert cloud_user(lab, uid) is None
    assert lab.host("mail").check_output(home_check) == "no"
    shown = json.loads(coop.run("member", "show", uid, "--json").stdout)
    assert shown["status"] == "purged"
    assert coop.sync(uid, dry_run=True)["plan"]["changes"] == []
    journal = json.loads(coop.run("journal", "--member", uid, "--json").stdout)
    assert {e["action"] for e in journal} >= {"welcome", "create", "suspend", "archive", "purge"}
    assert all("password" not in json.dumps(e).lower() for e in journal)


def test_a_service_down_is_retried_by_the_next_run(lab, coop):
    uid, _password = coop.member("Pim")
    apps = lab.host("apps")
    apps.run("systemctl stop etherpad")
    try:
        result = coop.run("sync", "--yes", "--member", uid, ok=False)
        assert result.returncode == 8, result.stdout + result.stderr
        assert "not reachable: pads" in result.stderr
        assert cloud_user(lab, uid) is not None  # the other services went on
    finally:
        apps.run("systemctl start etherpad")
    assert wait_for(lambda: pads_api(lab, "checkToken").get("code") == 0, timeout=120)
    done = coop.sync(uid)
    assert ("pads", "create") in actions(done) and not done["summary"]["failed"]


def test_kill_9_during_apply_then_the_next_run_finishes(lab, coop):
    uids = [coop.member(f"Kill{i}")[0] for i in range(4)]
    args = [COOPCTL, "--config", str(coop.config), "sync", "--yes"]
    for uid in uids:
        args += ["--member", uid]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    deadline = time.monotonic() + 120
    while "[1/" not in seen and time.monotonic() < deadline:  # the first change applied
        seen += proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = coop.sync(*uids)
    assert not finished["summary"]["failed"], finished["summary"]
    assert coop.sync(*uids, dry_run=True)["plan"]["changes"] == []
    for uid in uids:
        assert cloud_user(lab, uid)["enabled"]


def test_guards_stop_before_touching_anything(lab, coop, tmp_path):
    config = yaml.safe_load(coop.config.read_text())
    config["directory"]["base_dn"] = "dc=wrong,dc=coop"
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(config))
    result = coop.run("sync", "--yes", ok=False, config=wrong)
    assert result.returncode != 0
    assert "Error: the base DN dc=wrong,dc=coop does not exist" in result.stderr
    assert "Hint:" in result.stderr and "Traceback" not in result.stderr

    uids = [coop.member(f"Mass{i}")[0] for i in range(7)]
    coop.sync(*uids)
    left = (datetime.now(UTC) - timedelta(days=40)).strftime("%Y-%m-%d")
    for uid in uids:
        coop.run("member", "depart", uid, "--on", left)
    stopped = coop.run("sync", "--yes", ok=False)
    assert stopped.returncode == 7, stopped.stdout + stopped.stderr
    assert "nothing was touched" in stopped.stderr
    assert all(cloud_user(lab, uid)["enabled"] for uid in uids)

    dir_host = lab.host("dir")
    dir_host.run("systemctl stop slapd")
    try:
        down = coop.run("sync", "--yes", ok=False)
        assert down.returncode == 6, down.stdout + down.stderr
        assert "Error:" in down.stderr and "Traceback" not in down.stderr
    finally:
        dir_host.run("systemctl start slapd")
    assert all(cloud_user(lab, uid)["enabled"] for uid in uids)
