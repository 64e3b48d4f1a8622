"""Issue 9, mail: no spoofing by members (587) or from outside (25), postmaster@ and abuse@,
a login penalty that does not block other clients, TLS 1.2 or newer with forward secrecy.

Everything talks to the lab's real Postfix and Dovecot on `mail`: from the controller (the
bridge address, one of the coop's own hosts in the lab's mail_internal_sender_networks), from
`dir` (a stranger: neither internal nor trusted) and from `apps` (it stands for a webmail host:
mail_login_trusted_networks). Clients on the lab hosts are Python scripts run there over SSH.
"""

from __future__ import annotations

import email.message
import email.policy
import json
import secrets
import shlex
import smtplib
import socket
import ssl
from collections.abc import Iterator

import pytest

from provisioner.services.mail import INTERNAL_SMTP_PORT
from tests.lab.test_mail import BASE, DOMAIN, Coop, imap, subjects, wait_for

pytestmark = pytest.mark.lab

LAB_ADMIN = "labadmin"  # the lab's mail_role_recipients (inventories/lab/group_vars)

# Run on a lab host: one SMTP transaction on mail:25; prints the RCPT reply as JSON.
REMOTE_SMTP = r"""
import json, smtplib, sys
p = json.loads(sys.argv[1])
with smtplib.SMTP(p["addr"], 25, timeout=30) as smtp:
    smtp.ehlo("stranger.test")
    smtp.mail(p["sender"])
    code, reply = smtp.rcpt(p["rcpt"])
    if code == 250:
        smtp.data(("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\nhello\r\n"
                   % (p["sender"], p["rcpt"], p["subject"])).encode())
print(json.dumps([code, reply.decode()]))
"""

# Run on a lab host: one whole SMTP transaction on addr:port with a From: header of its own;
# prints [stage, code, reply] of the first refusal, or ["sent", 250, ...].
REMOTE_MESSAGE = r"""
import json, smtplib, sys
p = json.loads(sys.argv[1])
with smtplib.SMTP(p["addr"], p["port"], timeout=30) as smtp:
    smtp.ehlo("stranger.test")
    code, reply = smtp.mail(p["sender"])
    if code == 250:
        code, reply = smtp.rcpt(p["rcpt"])
    if code != 250:
        print(json.dumps(["rcpt", code, reply.decode()]))
        sys.exit()
    message = p.get("raw") or ("From: %s\r\nTo: <%s>\r\nSubject: %s\r\n\r\nhello\r\n"
                               % (p["from_header"], p["rcpt"], p["subject"]))
    code, reply = smtp.data(message.encode())
    print(json.dumps(["sent" if code == 250 else "data", code, reply.decode()]))
"""

# Run on a lab host: IMAP logins (STARTTLS) on mail:143, one per password, optionally telling
# Dovecot the client's address as a webmail host does (ID x-originating-ip); prints ok/no each.
REMOTE_IMAP = r"""
import imaplib, json, ssl, sys
p = json.loads(sys.argv[1])
imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED"))
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
out = []
for password in p["passwords"]:
    conn = imaplib.IMAP4(p["addr"], 143, timeout=60)
    conn.starttls(ssl_context=ctx)
    if p.get("origin"):
        conn._simple_command("ID", '("x-originating-ip" "%s")' % p["origin"])
    try:
        conn.login(p["user"], password)
        out.append("ok")
        conn.logout()
    except imaplib.IMAP4.error:
        out.append("no")
        conn.shutdown()
print(json.dumps(out))
"""

def run_on(lab, host: str, script: str, **params: object) -> object:
    """Run a Python script on a lab host with params (JSON in argv); its JSON output."""
    params.setdefault("addr", lab.addresses["mail"])
    out = lab.host(host).check_output("python3 -c %s %s", script, json.dumps(params))
    return json.loads(out)


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False  # lab certificates name the host; clients dial its address
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture(scope="module")
def coop(lab) -> Iterator[Coop]:
    c = Coop(lab)
    yield c
    c.close()


@pytest.fixture(scope="module")
def lab_admin(lab, coop: Coop) -> Iterator[dict]:
    """The member labadmin@demo.coop, where the lab's postmaster@ and abuse@ deliver."""
    dn = f"uid={LAB_ADMIN},ou=people,{BASE}"
    coop.conn.delete(dn)  # left by an interrupted run, if any
    attrs = {"uid": LAB_ADMIN, "cn": "Lab admin", "sn": "admin", "mail": f"{LAB_ADMIN}@{DOMAIN}",
             "coopMemberStatus": "active", "coopService": ["mail"]}
    assert coop.conn.add(dn, ["inetOrgPerson", "coopMember"], attrs), coop.conn.result
    password = secrets.token_urlsafe(18)
    assert coop.conn.extend.standard.modify_password(user=dn, new_password=password)
    yield {"uid": LAB_ADMIN, "dn": dn, "mail": attrs["mail"], "password": password}
    coop.conn.delete(dn)
    lab.host("mail").run(f"rm -rf /var/vmail/{LAB_ADMIN}")


def submit(lab, member: dict, sender: str, rcpt: str, subject: str = "") -> tuple[int, str]:
    """One message on 587 logged in as `member` with envelope sender `sender`: RCPT reply."""
    with smtplib.SMTP(lab.addresses["mail"], 587, timeout=20) as smtp:
        smtp.starttls(context=tls_context())
        smtp.login(member["uid"], member["password"])
        smtp.mail(sender)
        code, reply = smtp.rcpt(rcpt)
        if code == 250:
            msg = email.message.EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = sender, rcpt, subject or "submitted"
            msg.set_content("hello\n")
            smtp.data(msg.as_bytes())
    return code, reply.decode()


def penalised(lab) -> dict[str, str]:
    """Client addresses Dovecot's anvil currently penalises (`doveadm penalty`), each with the
    rest of its line (penalty, last penalty, last update)."""
    lines = lab.host("mail").check_output("doveadm penalty").splitlines()
    return {line.split()[0]: " ".join(line.split()[1:]) for line in lines[1:] if line.strip()}


def mail_log(lab, pattern: str) -> str:
    return lab.host("mail").run(f"journalctl --no-pager -q -g {shlex.quote(pattern)}").stdout


# --- 1. members cannot send as someone else on 587 ---------------------------------------


def test_member_sends_as_own_address_and_alias_only(lab, coop):
    ann = coop.member("ann", aliases=("annie",))
    ben = coop.member("ben")
    code, reply = submit(lab, ann, ben["mail"], ann["mail"])
    assert code == 553 and "not owned by user" in reply, reply
    code, reply = submit(lab, ann, "ann.private@example.org", ann["mail"])
    assert code == 553, reply  # an address outside the coop is nobody's on 587 either
    own, alias = f"own {secrets.token_hex(3)}", f"alias {secrets.token_hex(3)}"
    assert submit(lab, ann, ann["mail"], ben["mail"], own)[0] == 250
    assert submit(lab, ann, ann["aliases"][0], ben["mail"], alias)[0] == 250
    got = wait_for(lambda: {own, alias} <= set(subjects(lab, ben)))
    assert got, subjects(lab, ben)


# --- 2. nobody outside forges a coop address on port 25 -----------------------------------


def test_forged_coop_sender_from_another_host_is_refused_on_25(lab, coop):
    cat = coop.member("cat", aliases=("catherine",))
    dan = coop.member("dan")
    for forged in (dan["mail"], cat["aliases"][0], f"postmaster@{DOMAIN}"):
        code, reply = run_on(lab, "dir", REMOTE_SMTP, sender=forged, rcpt=cat["mail"],
                             subject="forged")
        assert code == 554 and "Forged sender" in reply, (forged, reply)
    # A sender from elsewhere is accepted for the member and delivered.
    subject = f"outside {secrets.token_hex(3)}"
    code, reply = run_on(lab, "dir", REMOTE_SMTP, sender="friend@example.org",
                         rcpt=cat["mail"], subject=subject)
    assert code == 250, reply
    assert subject in wait_for(lambda: subjects(lab, cat))


def test_forged_coop_from_header_is_refused_on_25(lab, coop):
    """The envelope is a stranger's own, the From: header (what the member's mail program shows)
    names a member: refused at DATA, as the coop's DMARC p=reject would have it. The coop's own
    hosts hand mail over on the internal port, which refuses everyone else."""
    eli = coop.member("eli")
    fin = coop.member("fin")
    for header in (f"<{fin['mail']}>", f'"Fin (the treasurer)" <{fin["mail"]}>',
                   f"bank@mail.{DOMAIN}"):
        stage, code, reply = run_on(lab, "dir", REMOTE_MESSAGE, port=25,
                                    sender="friend@example.org", rcpt=eli["mail"],
                                    from_header=header, subject="pay now")
        assert (stage, code) == ("data", 550) and "Forged From" in reply, (header, reply)
    subject = f"honest {secrets.token_hex(3)}"
    stage, code, reply = run_on(lab, "dir", REMOTE_MESSAGE, port=25,
                                sender="friend@example.org", rcpt=eli["mail"],
                                from_header="Friend <friend@example.org>", subject=subject)
    assert stage == "sent", reply
    assert subject in wait_for(lambda: subjects(lab, eli))
    # A member's message forwarded whole (attached) from outside is not a forgery.
    forwarded = email.message.EmailMessage()
    forwarded["From"], forwarded["Subject"] = fin["mail"], "the minutes"
    forwarded.set_content("minutes of the board")
    outer = email.message.EmailMessage()
    outer["From"], outer["To"] = "friend@example.org", eli["mail"]
    outer["Subject"] = subject = f"fwd {secrets.token_hex(3)}"
    outer.set_content("see attached")
    outer.add_attachment(forwarded)
    stage, code, reply = run_on(lab, "dir", REMOTE_MESSAGE, port=25,
                                sender="friend@example.org", rcpt=eli["mail"],
                                raw=outer.as_string(policy=email.policy.SMTP))
    assert stage == "sent", reply
    assert subject in wait_for(lambda: subjects(lab, eli))
    # The internal port is for the coop's own hosts only (dir is not one of them).
    stage, code, reply = run_on(lab, "dir", REMOTE_MESSAGE, port=INTERNAL_SMTP_PORT,
                                sender="friend@example.org", rcpt=eli["mail"],
                                from_header=f"<{fin['mail']}>", subject="pay now")
    assert stage == "rcpt" and code == 554, reply
    # From the controller (an internal sender) it takes a coop From: header.
    subject = f"internal {secrets.token_hex(3)}"
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = f"welcome@{DOMAIN}", eli["mail"], subject
    msg.set_content("hello")
    with smtplib.SMTP(lab.addresses["mail"], INTERNAL_SMTP_PORT, timeout=20) as smtp:
        smtp.send_message(msg)
    assert subject in wait_for(lambda: subjects(lab, eli))


# --- 3. postmaster@ and abuse@ ------------------------------------------------------------


def test_postmaster_and_abuse_deliver_to_the_admin(lab, coop, lab_admin):
    sent = []
    for role in ("postmaster", "abuse"):
        subject = f"{role} {secrets.token_hex(3)}"
        code, reply = run_on(lab, "dir", REMOTE_SMTP, sender="reporter@example.org",
                             rcpt=f"{role}@{DOMAIN}", subject=subject)
        assert code == 250, reply
        sent.append(subject)
    assert wait_for(lambda: set(sent) <= set(subjects(lab, lab_admin))), subjects(lab, lab_admin)
    # The admin answers as abuse@; another member may not.
    assert submit(lab, lab_admin, f"abuse@{DOMAIN}", lab_admin["mail"])[0] == 250
    eve = coop.member("eve")
    assert submit(lab, eve, f"abuse@{DOMAIN}", eve["mail"])[0] == 553


# --- 4. a login penalty that does not block other clients ---------------------------------


def test_bad_passwords_from_one_host_do_not_block_the_member_elsewhere(lab, coop):
    fay = coop.member("fay")
    # One wrong password: enough for a penalty, and far below fail2ban's ban (the hosts role's
    # jails count every failure of dir, reruns included).
    wrong = [secrets.token_urlsafe(12)]
    assert run_on(lab, "dir", REMOTE_IMAP, user=fay["uid"], passwords=wrong) == ["no"]
    # The member logs in from the controller at once (the penalty is dir's alone).
    imap(lab, fay["uid"], fay["password"]).logout()
    assert lab.addresses["dir"] in penalised(lab)
    # fail2ban's input: each failure is logged with the user and the client address, by
    # Dovecot (IMAP) and by Postfix (submission; from the controller, which fail2ban ignores).
    assert f"rip={lab.addresses['dir']}" in mail_log(lab, f"auth failed.*{fay['uid']}")
    with smtplib.SMTP(lab.addresses["mail"], 587, timeout=60) as smtp:
        smtp.starttls(context=tls_context())
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(fay["uid"], wrong[0])
    controller = lab.cfg.bridge_ip
    assert mail_log(lab, rf"\[{controller}\]: SASL (PLAIN|LOGIN) authentication failed")


def test_webmail_host_is_not_penalised_for_its_users_mistakes(lab, coop):
    gil, hoa = coop.member("gil"), coop.member("hoa")
    stranger, member_ip = "192.0.2.44", "192.0.2.45"  # the webmail's clients (TEST-NET-1)
    wrong = [secrets.token_urlsafe(12) for _ in range(2)]
    # Another test may have left apps a penalty of its own (logins from apps that named no
    # end client, e.g. the hosts' fail2ban flood): what matters is that this adds nothing.
    apps_before = penalised(lab).get(lab.addresses["apps"])
    assert run_on(lab, "apps", REMOTE_IMAP, user=gil["uid"], passwords=wrong,
                  origin=stranger) == ["no", "no"]
    assert run_on(lab, "apps", REMOTE_IMAP, user=hoa["uid"], passwords=[hoa["password"]],
                  origin=member_ip) == ["ok"]
    penalties = penalised(lab)
    assert stranger in penalties, penalties  # the client the webmail named, ...
    # ... never the webmail host
    assert penalties.get(lab.addresses["apps"]) == apps_before, penalties
    assert f"rip={stranger}" in mail_log(lab, f"auth failed.*{gil['uid']}")


# --- 5. TLS 1.2 or newer with forward secrecy ----------------------------------------------


def handshake(lab, port: int, ctx: ssl.SSLContext) -> tuple[str, str] | None:
    """(protocol, cipher) of a TLS handshake on `port` (STARTTLS on 25/587), or None."""
    addr = lab.addresses["mail"]
    try:
        if port in (25, 587):
            with smtplib.SMTP(addr, port, timeout=20) as smtp:
                smtp.ehlo("controller.test")
                smtp.starttls(context=ctx)
                tls = smtp.sock
                return tls.version(), tls.cipher()[0]
        with socket.create_connection((addr, port), timeout=20) as sock, \
                ctx.wrap_socket(sock) as tls:
            return tls.version(), tls.cipher()[0]
    except (ssl.SSLError, smtplib.SMTPException, ConnectionError):
        return None


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
@pytest.mark.parametrize("port", [25, 587, 993])
def test_tls_is_1_2_or_newer_with_forward_secrecy(lab, port):
    old = tls_context()
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    assert handshake(lab, port, old) is None
    no_fs = tls_context()
    no_fs.maximum_version = ssl.TLSVersion.TLSv1_2
    no_fs.set_ciphers("AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-SHA256:AES256-SHA256")
    assert handshake(lab, port, no_fs) is None  # RSA key exchange: no forward secrecy
    fs = tls_context()
    fs.maximum_version = ssl.TLSVersion.TLSv1_2
    fs.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:AES128-GCM-SHA256")
    assert handshake(lab, port, fs) == ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")
