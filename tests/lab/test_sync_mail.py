"""The mail connector against the lab's real Postfix + Dovecot (host `mail`).

Members are throwaway directory entries; the connector runs with the lab's inventory
(`InventoryHosts`: one SSH read to observe, one sync.yml run per batch) and an in-memory state
store. Mail goes in over SMTP on mail:25 and is read back over IMAP with the member's password.
The member's language is given to `MemberState` directly (the sync reads it from the directory's
`coopPreferredLanguage`); the status `purged` is written to the directory as a plain value.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import imaplib
import io
import re
import secrets
import smtplib
import ssl
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ldap3
import pytest

from provisioner.services.base import (
    Action,
    ChangeResult,
    Desired,
    MemberState,
)
from provisioner.services.mail import INTERNAL_SMTP_PORT, MailConnector
from tests.lab.helpers import fetch_inbox, lab_runtime
from tests.lab.test_mail import wait_for

DOMAIN = "demo.coop"
LOGIN_URL = "https://sso.demo.coop/realms/demo/account"


@pytest.fixture
def mail_sync(lab) -> MailConnector:
    return MailConnector(lab_runtime(lab, {
        "smtp_host": lab.addresses["mail"], "smtp_port": INTERNAL_SMTP_PORT,
        "imap_host": "mail.demo.coop", "submission_host": "mail.demo.coop",
        "login_url": LOGIN_URL}))


@pytest.fixture
def people(lab, throwaway_directory) -> Iterator[Callable[..., dict[str, Any]]]:
    """Makes members (uid, dn, password, mail, name); removes their entries and mail homes."""
    directory = throwaway_directory(prefix="msync", given_name="Zoë", services=("mail",))
    made: list[str] = []

    def make(status: str = "active") -> dict[str, Any]:
        uid, dn, password = directory.member(status=status)
        made.append(uid)
        return {"uid": uid, "dn": dn, "password": password, "mail": f"{uid}@{DOMAIN}",
                "name": f"Zoë Test {uid}", "conn": directory.conn, "directory": directory}

    yield make
    if made:
        lab.host("mail").run("rm -rf " + " ".join(f"/var/vmail/{u}" for u in made))


def state(person: dict[str, Any], status: str, *, language: str = "en",
          quota: int | None = None, services: frozenset[str] = frozenset({"mail"})
          ) -> MemberState:
    return MemberState(uid=person["uid"], mail=person["mail"], display_name=person["name"],
                       language=language, status=status, services=services,
                       groups=frozenset(), mail_quota=quota, cloud_quota=None)


def desired(*members: MemberState, purge_due: bool = False) -> dict[str, Desired]:
    return {m.uid: Desired(m, m.phase("mail", purge_due)) for m in members}


def run(conn: MailConnector, wanted: dict[str, Desired]) -> tuple[list[ChangeResult], Any]:
    """Observe, plan and apply once, as the sync does; the results and the observation."""
    seen = conn.observe()
    changes = conn.plan(wanted, seen)
    results: list[ChangeResult] = []
    conn.apply(changes, results.append)
    return results, seen


def set_status(person: dict[str, Any], status: str) -> None:
    person["directory"].set_status(person["dn"], status)


def send(lab, to: str, subject: str, body: str = "hello from the lab\n") -> tuple[int, bytes]:
    """Send one message over SMTP on mail:25; returns the RCPT reply."""
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "tester@example.org", to, subject
    msg.set_content(body)
    with smtplib.SMTP(lab.addresses["mail"], 25, timeout=20) as smtp:
        smtp.ehlo("controller.test")
        smtp.mail("tester@example.org")
        code, reply = smtp.rcpt(to)
        if code == 250:
            smtp.data(msg.as_bytes())
        return code, reply


def imap(lab, user: str, password: str) -> imaplib.IMAP4:
    conn = imaplib.IMAP4(lab.addresses["mail"], 143, timeout=20)
    conn.starttls(ssl_context=ssl.create_default_context(cafile=str(lab.ca_file)))
    conn.login(user, password)
    return conn


def messages(lab, person: dict[str, Any]) -> list[email.message.EmailMessage]:
    conn = imap(lab, person["uid"], person["password"])
    return [email.message_from_bytes(raw, policy=email.policy.default)
            for raw in fetch_inbox(conn, "(BODY.PEEK[])")]


def subjects(lab, person: dict[str, Any]) -> list[str]:
    return [str(m["Subject"]) for m in messages(lab, person)]


def home_exists(lab, uid: str) -> bool:
    return lab.host("mail").file(f"/var/vmail/{uid}").exists


def test_suspended_member_receives_mail_cannot_log_in_and_is_kicked(lab, people, mail_sync):
    zoe = people()
    mail_sync.runtime.state.mark("mail", "welcome", zoe["uid"])
    session = imap(lab, zoe["uid"], zoe["password"])   # an open session, as a phone keeps
    session.select("INBOX")
    set_status(zoe, "suspended")

    results, _ = run(mail_sync, desired(state(zoe, "suspended")))
    assert [(r.change.action, r.ok, r.error) for r in results] == [(Action.SUSPEND, True, None)]
    with pytest.raises((imaplib.IMAP4.abort, imaplib.IMAP4.error, OSError)):
        session.noop()
        session.noop()
    with pytest.raises(imaplib.IMAP4.error):
        imap(lab, zoe["uid"], zoe["password"])
    # Kicked once per suspension: the next sync has nothing to do.
    assert run(mail_sync, desired(state(zoe, "suspended")))[0] == []

    subject = f"while suspended {secrets.token_hex(4)}"
    code, reply = send(lab, zoe["mail"], subject)
    assert code == 250, reply

    set_status(zoe, "active")
    results, _ = run(mail_sync, desired(state(zoe, "active")))
    assert [(r.change.action, r.ok) for r in results] == [(Action.RESTORE, True)]
    assert subject in wait_for(lambda: subjects(lab, zoe))


def test_welcome_mail_is_delivered_once_in_the_members_language(lab, people, mail_sync):
    zoe = people()
    with_sso = frozenset({"mail", "sso"})  # the mail starts at the SSO's account page
    results, _ = run(mail_sync, desired(state(zoe, "active", language="nl", services=with_sso)))
    assert [(r.change.action, r.ok, r.error) for r in results] == [(Action.WELCOME, True, None)]
    assert mail_sync.runtime.state.marks("mail", "welcome") == {zoe["uid"]}

    found = wait_for(lambda: messages(lab, zoe))
    assert len(found) == 1
    welcome = found[0]
    body = welcome.get_content()
    assert str(welcome["Subject"]).startswith("Welkom bij Demo Coop")
    assert zoe["name"] in body and zoe["name"] in str(welcome["To"])
    for shown in (zoe["uid"], zoe["mail"], LOGIN_URL, "993", "587", "schrijf dan naar"):
        assert shown in body, shown
    # Sent once: the next sync plans nothing.
    assert run(mail_sync, desired(state(zoe, "active", language="nl", services=with_sso)))[0] == []


def test_quota_below_usage_is_reported(lab, people, mail_sync):
    zoe = people()
    mail_sync.runtime.state.mark("mail", "welcome", zoe["uid"])
    subject = f"big {secrets.token_hex(4)}"
    code, _ = send(lab, zoe["mail"], subject, body=("y" * 76 + "\n") * 20_000)  # ~1.5 MiB
    assert code == 250
    assert subject in wait_for(lambda: subjects(lab, zoe))
    conn: ldap3.Connection = zoe["conn"]
    assert conn.modify(zoe["dn"], {"coopMailQuota": [(ldap3.MODIFY_REPLACE, [1])]}), conn.result

    results, seen = run(mail_sync, desired(state(zoe, "active", quota=1)))
    assert results == []
    (finding,) = [f for f in seen.findings if f.uid == zoe["uid"]]
    assert "quota is 1 MB" in finding.message
    assert re.search(r"holds about 1\.[5-7] MB", finding.message), finding.message
    # Dovecot already reads the lowered quota from the directory.
    quota = lab.host("mail").check_output(f"doveadm -f tab quota get -u {zoe['uid']}")
    assert "\t1024\t" in quota, quota


def test_export_then_purge_then_the_address_is_refused(lab, people, mail_sync, tmp_path: Path):
    zoe = people()
    subject = f"keep me {secrets.token_hex(4)}"
    assert send(lab, zoe["mail"], subject)[0] == 250
    assert subject in wait_for(lambda: subjects(lab, zoe))
    set_status(zoe, "departed")

    files = mail_sync.export(state(zoe, "departed"), tmp_path / "stage" / "mail")
    assert files == [tmp_path / "stage" / "mail" / "mailbox.tar"]
    with tarfile.open(files[0]) as tar:
        names = tar.getnames()
        assert all(n == zoe["uid"] or n.startswith(zoe["uid"] + "/") for n in names)
        mails = [tar.extractfile(m).read() for m in tar.getmembers()
                 if m.isfile() and "/Maildir/" in m.name]
    assert any(subject.encode() in raw for raw in mails), names
    assert lab.host("mail").run("ls /var/tmp").stdout.count("coop-mail-") == 0

    departed = desired(state(zoe, "departed"), purge_due=True)
    results, _ = run(mail_sync, departed)
    assert [(r.change.action, r.ok, r.error) for r in results] == [(Action.PURGE, True, None)]
    assert not home_exists(lab, zoe["uid"])

    # Mail in flight before the directory says `purged` recreates the home...
    assert send(lab, zoe["mail"], "late")[0] == 250
    assert wait_for(lambda: home_exists(lab, zoe["uid"]))
    set_status(zoe, "purged")
    # ... and the next sync of the gone member removes it again.
    results, _ = run(mail_sync, desired(state(zoe, "purged")))
    assert [(r.change.action, r.ok) for r in results] == [(Action.PURGE, True)]
    assert not home_exists(lab, zoe["uid"])
    code, _ = send(lab, zoe["mail"], "after purge")
    assert code == 550
    assert run(mail_sync, desired(state(zoe, "purged")))[0] == []
    assert not home_exists(lab, zoe["uid"])


def test_export_of_a_member_without_mail_is_an_empty_tar(lab, people, mail_sync, tmp_path):
    zoe = people(status="departed")
    (tar_path,) = mail_sync.export(state(zoe, "departed"), tmp_path)
    with tarfile.open(fileobj=io.BytesIO(tar_path.read_bytes())) as tar:
        assert tar.getnames() == []
