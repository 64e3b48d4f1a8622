"""The mail role on the lab host `mail`: Postfix + Dovecot driven by the directory on `dir`.

Members are created in LDAP directly (ldap3 as cn=coopctl over StartTLS); mail goes in through
SMTP on mail:25 and is read back over IMAP (STARTTLS, verified with the lab CA) with the member's
LDAP password.
"""

from __future__ import annotations

import email.message
import imaplib
import secrets
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator

import ldap3
import pytest

from provisioner.services.mail import INTERNAL_SMTP_PORT
from tests.lab.helpers import fetch_inbox

pytestmark = pytest.mark.lab

BASE = "dc=demo,dc=coop"
DOMAIN = "demo.coop"


def directory(lab) -> ldap3.Connection:
    tls = ldap3.Tls(ca_certs_file=str(lab.ca_file), validate=ssl.CERT_REQUIRED)
    conn = ldap3.Connection(
        ldap3.Server(lab.addresses["dir"], port=389, tls=tls, connect_timeout=5),
        user=f"cn=coopctl,ou=services,{BASE}",
        password=lab.secret("ldap_coopctl"),
    )
    conn.open()
    assert conn.start_tls()
    assert conn.bind(), conn.result
    return conn


class Coop:
    """Plans and members made for one test module, removed at the end."""

    def __init__(self, lab) -> None:
        self.lab = lab
        self.conn = directory(lab)
        self.tag = secrets.token_hex(3)
        self.dns: list[str] = []
        self.plan = f"cn=mailtest{self.tag},ou=plans,{BASE}"
        assert self.conn.add(
            self.plan, ["coopPlan"], {"coopMailQuota": 100, "coopService": ["mail"]}
        ), self.conn.result
        self.dns.append(self.plan)

    def member(
        self,
        name: str,
        *,
        quota: int = 100,
        status: str = "active",
        aliases: tuple[str, ...] = (),
        forwards: tuple[str, ...] = (),
    ) -> dict:
        uid = f"{name}{self.tag}"
        dn = f"uid={uid},ou=people,{BASE}"
        attrs = {
            "uid": uid,
            "cn": name,
            "sn": name,
            "mail": f"{uid}@{DOMAIN}",
            "coopMemberStatus": status,
            "coopService": ["mail"],
            "coopPlan": self.plan,
            "coopMailQuota": quota,
        }
        if aliases:
            attrs["coopMailAlias"] = [f"{a}{self.tag}@{DOMAIN}" for a in aliases]
        if forwards:
            attrs["coopMailForward"] = list(forwards)
        assert self.conn.add(dn, ["inetOrgPerson", "coopMember"], attrs), self.conn.result
        self.dns.insert(0, dn)
        password = secrets.token_urlsafe(18)
        assert self.conn.extend.standard.modify_password(user=dn, new_password=password), (
            self.conn.result
        )
        return {
            "uid": uid,
            "dn": dn,
            "mail": attrs["mail"],
            "password": password,
            "aliases": attrs.get("coopMailAlias", []),
        }

    def set_status(self, member: dict, status: str) -> None:
        assert self.conn.modify(
            member["dn"], {"coopMemberStatus": [(ldap3.MODIFY_REPLACE, [status])]}
        ), self.conn.result

    def close(self) -> None:
        for dn in self.dns:
            self.conn.delete(dn)
        self.conn.unbind()
        uids = [dn.split(",")[0][4:] for dn in self.dns if dn.startswith("uid=")]
        if uids:
            self.lab.host("mail").run("rm -rf " + " ".join(f"/var/vmail/{u}" for u in uids))


@pytest.fixture(scope="module")
def coop(lab) -> Iterator[Coop]:
    c = Coop(lab)
    yield c
    c.close()


def send(
    lab,
    to: str,
    subject: str,
    *,
    sender: str = "tester@example.org",
    body: str = "hello from the lab\n",
    port: int = 25,
) -> None:
    """One message from the controller; a coop sender needs the coop hosts' port (2525),
    where a From: header in the coop's domain is not refused as forged."""
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg.set_content(body)
    with smtplib.SMTP(lab.addresses["mail"], port, timeout=20) as smtp:
        smtp.ehlo("controller.test")
        smtp.send_message(msg)


def imap(lab, user: str, password: str) -> imaplib.IMAP4:
    conn = imaplib.IMAP4(lab.addresses["mail"], 143, timeout=20)
    ctx = ssl.create_default_context(cafile=str(lab.ca_file))
    ctx.check_hostname = False  # the lab certificate names the host, we dial its address
    conn.starttls(ssl_context=ctx)
    conn.login(user, password)
    return conn


def wait_for(check: Callable[[], object], timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def subjects(lab, member: dict) -> list[str]:
    conn = imap(lab, member["uid"], member["password"])
    headers = fetch_inbox(conn, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    return [raw.decode().split(":", 1)[1].strip() for raw in headers]


def test_services_run(lab):
    host = lab.host("mail")
    for service in ("postfix", "dovecot"):
        assert host.service(service).is_running, service
        assert host.service(service).is_enabled, service
    for port in (25, 587, 143, 993):
        assert host.socket(f"tcp://0.0.0.0:{port}").is_listening, port


def test_nothing_leaves_the_lab(lab):
    host = lab.host("mail")
    assert host.check_output("postconf -h default_transport").startswith("error:")
    assert host.check_output("postconf -h relay_transport").startswith("error:")
    with smtplib.SMTP(lab.addresses["mail"], 25, timeout=20) as smtp:
        smtp.ehlo("controller.test")
        smtp.mail("tester@example.org")
        code, _msg = smtp.rcpt("someone@example.org")
    assert 400 <= code < 600


def test_delivery_and_imap_login_with_the_ldap_password(lab, coop):
    alice = coop.member("alice")
    subject = f"hello {secrets.token_hex(4)}"
    send(lab, alice["mail"], subject)
    assert subject in wait_for(lambda: subjects(lab, alice))
    # The primary address works as a login name too.
    conn = imap(lab, alice["mail"], alice["password"])
    conn.logout()
    with pytest.raises(imaplib.IMAP4.error):
        imap(lab, alice["uid"], alice["password"] + "x")
    owner = lab.host("mail").file(f"/var/vmail/{alice['uid']}")
    assert owner.is_directory and owner.user == "vmail"
    # The userdb's iterate filter lists the member for doveadm's -A/'*' commands.
    assert alice["mail"] in lab.host("mail").check_output("doveadm user '*'").split()
    quota = lab.host("mail").check_output(f"doveadm quota get -u {alice['mail']}")
    assert "102400" in quota  # 100 MiB from coopMailQuota, in KiB


def test_alias_delivers_to_the_same_mailbox(lab, coop):
    bea = coop.member("bea", aliases=("beatrice",))
    subject = f"alias {secrets.token_hex(4)}"
    send(lab, bea["aliases"][0], subject)
    assert subject in wait_for(lambda: subjects(lab, bea))


def test_forward_keeps_a_copy_in_the_mailbox(lab, coop):
    cid = coop.member("cid", forwards=("cid.elsewhere@example.org",))
    subject = f"forward {secrets.token_hex(4)}"
    send(lab, cid["mail"], subject)
    assert subject in wait_for(lambda: subjects(lab, cid))


def test_unknown_recipient_is_refused_with_550(lab):
    with smtplib.SMTP(lab.addresses["mail"], 25, timeout=20) as smtp:
        smtp.ehlo("controller.test")
        smtp.mail("tester@example.org")
        code, msg = smtp.rcpt(f"nobody{secrets.token_hex(4)}@{DOMAIN}")
    assert code == 550, msg


def test_quota_comes_from_ldap_and_over_quota_mail_is_bounced(lab, coop):
    dora = coop.member("dora", quota=1)
    sender = coop.member("eve")
    conn = imap(lab, dora["uid"], dora["password"])
    _typ, data = conn.getquotaroot("INBOX")
    conn.logout()
    assert b"STORAGE 0 1024" in b" ".join(d for d in data[1] if isinstance(d, bytes))
    subject = f"big {secrets.token_hex(4)}"
    send(
        lab,
        dora["mail"],
        subject,
        sender=sender["mail"],
        port=INTERNAL_SMTP_PORT,
        body="x" * 76 + "\n" * 1 + ("y" * 76 + "\n") * 27_000,
    )  # about 2 MiB
    # The sender gets the bounce; the message never reaches the full mailbox.
    bounces = wait_for(lambda: [s for s in subjects(lab, sender) if "Undelivered" in s])
    assert bounces, "no bounce reached the sender"
    assert subject not in subjects(lab, dora)
    log = lab.host("mail").run(f"journalctl --no-pager -t postfix/lmtp -g {dora['mail']}").stdout
    assert "Quota exceeded" in log or "552" in log


def test_suspended_member_cannot_log_in(lab, coop):
    fay = coop.member("fay")
    imap(lab, fay["uid"], fay["password"]).logout()  # works while active
    coop.set_status(fay, "suspended")
    with pytest.raises(imaplib.IMAP4.error):
        imap(lab, fay["uid"], fay["password"])
    # ... but mail to them is still accepted and kept (a payment suspension loses no mail).
    with smtplib.SMTP(lab.addresses["mail"], 25, timeout=20) as smtp:
        smtp.ehlo("controller.test")
        smtp.mail("tester@example.org")
        code, _msg = smtp.rcpt(fay["mail"])
    assert code == 250


def test_submission_needs_tls_and_the_ldap_password(lab, coop):
    gus = coop.member("gus")
    hal = coop.member("hal")
    ctx = ssl.create_default_context(cafile=str(lab.ca_file))
    ctx.check_hostname = False
    with smtplib.SMTP(lab.addresses["mail"], 587, timeout=20) as smtp:
        smtp.ehlo("controller.test")
        assert not smtp.has_extn("auth")  # no AUTH before TLS
        smtp.starttls(context=ctx)
        smtp.ehlo("controller.test")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(gus["uid"], gus["password"] + "x")
    subject = f"submitted {secrets.token_hex(4)}"
    with smtplib.SMTP(lab.addresses["mail"], 587, timeout=20) as smtp:
        smtp.starttls(context=ctx)
        smtp.login(gus["uid"], gus["password"])
        msg = email.message.EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = gus["mail"], hal["mail"], subject
        msg.set_content("sent through submission\n")
        smtp.send_message(msg)
    assert subject in wait_for(lambda: subjects(lab, hal))
