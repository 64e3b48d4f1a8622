"""The mail connector without a server: parsing, planning, welcome mails, apply and export.

Hosts, the state store and the SMTP server are replaced by small fakes; the lab test
(tests/lab/test_sync_mail.py) runs the same code against real Postfix and Dovecot. The kick
script itself runs here, in a local `sh`, against a stand-in `doveadm` that answers as Dovecot
2.3 and 2.4 do (the lab tests cut real IMAP sessions with it).
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import os
import smtplib
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from provisioner.services import mail as mailmod
from provisioner.services.base import (
    Action,
    ChangeResult,
    Desired,
    MemberState,
    Phase,
    ServiceUnavailable,
)
from provisioner.services.mail import (
    MailConnector,
    MailObservation,
    Usage,
    WelcomeTemplates,
    parse_homes,
)
from tests.sync_helpers import MemoryState, runtime

# As `du -s -k --apparent-size` prints the mail homes on the lab's Debian 12 (KiB, path).
DU_OUTPUT = (
    "2048\t/var/vmail/ana\n"
    "10\t/var/vmail/bob\n"
    "4\t/var/vmail/old.member\n"
)


# Answers like Dovecot: 2.3 without a session (exit 68), 2.4 (exit 0 either way), a failure.
# `doveadm -f tab who -1` prints who.tab beside it (a header, then a line per connection),
# or fails when there is none; each kick is logged to kicked.log.
FAKE_DOVEADM = """#!/bin/sh
dir=$(dirname "$0")
if [ "$1" = "-f" ] && [ "$3" = "who" ]; then
  [ -f "$dir/who.tab" ] || { echo "doveadm(root): Error: anvil: connect failed" >&2; exit 75; }
  cat "$dir/who.tab"; exit 0
fi
echo "$2" >> "$dir/kicked.log"
case "$2" in
  ana@*) echo "ana@demo.coop"; exit 0 ;;
  cy@*) echo "doveadm(cy): Fatal: anvil socket refused" >&2; exit 75 ;;
  dee@*) echo "0 connections kicked"; exit 0 ;;
  *) echo "no users kicked"; exit 68 ;;
esac
"""


class FakeHosts:
    def __init__(self, read_output: str = "", playbook_result: dict | None = None,
                 on_playbook: Any = None, bin_dir: Path | None = None) -> None:
        self.read_output = read_output
        self.reads: list[tuple[str, list[str]]] = []
        self.signals: list[tuple[str, list[str]]] = []
        self.bin_dir = bin_dir
        self.runs: list[tuple[str, dict]] = []
        self.playbook_result = playbook_result or {"ok": True, "error": None,
                                                   "failed_items": {}, "changed": 1}
        self.on_playbook = on_playbook

    def read(self, group: str, argv: Sequence[str], timeout: float = 60) -> str:
        self.reads.append((group, list(argv)))
        if isinstance(self.read_output, Exception):
            raise self.read_output
        return self.read_output

    def signal(self, group: str, argv: Sequence[str], timeout: float = 60) -> str:
        """Runs the command in a local sh, with the stand-in doveadm first on PATH."""
        self.signals.append((group, list(argv)))
        if self.bin_dir is None:
            raise OSError("ssh: connect to host mail port 22: Connection refused")
        env = os.environ | {"PATH": f"{self.bin_dir}:{os.environ['PATH']}"}
        return subprocess.run(list(argv), capture_output=True, text=True, env=env,
                              check=True, timeout=timeout).stdout

    def playbook(self, name: str, extravars: Mapping[str, Any]) -> dict[str, Any]:
        self.runs.append((name, dict(extravars)))
        if self.on_playbook:
            self.on_playbook(extravars)
        return self.playbook_result


def connector(hosts: FakeHosts | None = None, state: MemoryState | None = None,
              **settings: Any) -> MailConnector:
    base = {"smtp_host": "127.0.0.1", "login_url": "https://sso.demo.coop/account",
            "imap_host": "imap.demo.coop", "submission_host": "smtp.demo.coop"}
    return MailConnector(runtime(hosts or FakeHosts(), state, settings=base | settings,
                                 coop="Demo Coop"))


def member(uid: str, *, status: str = "active", quota: int | None = 100,
           language: str = "en", name: str | None = None,
           services: tuple[str, ...] = ("mail",)) -> MemberState:
    return MemberState(uid=uid, mail=f"{uid}@demo.coop", display_name=name or uid.title(),
                       language=language, status=status, services=frozenset(services),
                       groups=frozenset(), mail_quota=quota, cloud_quota=None)


def desired(*members: MemberState, purge_due: bool = False) -> dict[str, Desired]:
    return {m.uid: Desired(m, m.phase("mail", purge_due)) for m in members}


def observation(*, usage: dict[str, Usage] | None = None, homes: tuple[str, ...] = (),
                welcomed: tuple[str, ...] = (), kicked: tuple[str, ...] = ()) -> MailObservation:
    return MailObservation(usage=usage or {}, homes=frozenset(homes),
                           welcomed=frozenset(welcomed), kicked=frozenset(kicked))


def actions(changes: Sequence) -> list[tuple[str, str]]:
    return [(str(c.action), c.uid) for c in changes]


# -- parsing ----------------------------------------------------------------------------------

def test_homes_listing_gives_each_home_and_its_size() -> None:
    usage = parse_homes(DU_OUTPUT)
    assert usage == {"ana": Usage(2048, None), "bob": Usage(10, None),
                     "old.member": Usage(4, None)}


def test_observe_is_one_read_with_the_marks() -> None:
    state = MemoryState()
    state.mark("mail", "welcome", "ana")
    state.mark("mail", "kicked", "bob")
    hosts = FakeHosts(mailmod.HOMES_MARK + "\n" + DU_OUTPUT)
    seen = connector(hosts, state).observe()
    assert len(hosts.reads) == 1 and hosts.reads[0][0] == "mail_servers"
    assert "du -s -k --apparent-size" in hosts.reads[0][1][-1]
    assert "doveadm" not in hosts.reads[0][1][-1]  # no mailbox is opened to observe
    assert seen.welcomed == {"ana"} and seen.kicked == {"bob"}
    assert seen.accounts == {"ana", "bob", "old.member"}


def test_observe_raises_service_unavailable_when_the_host_is_down() -> None:
    with pytest.raises(ServiceUnavailable):
        connector(FakeHosts(OSError("no route to host"))).observe()  # type: ignore[arg-type]
    with pytest.raises(ServiceUnavailable):
        connector(FakeHosts("doveadm: Error: ldap down\n")).observe()


# -- plan -------------------------------------------------------------------------------------

def test_active_member_is_welcomed_once() -> None:
    conn = connector()
    ana = member("ana", language="fr", name="Anaïs Dubœuf")
    changes = conn.plan(desired(ana), observation())
    assert actions(changes) == [("welcome", "ana")]
    assert changes[0].detail == {"mail": "ana@demo.coop", "name": "Anaïs Dubœuf",
                                 "language": "fr", "sso": False}
    bob = member("bob", services=("mail", "sso"))
    assert conn.plan(desired(bob), observation())[0].detail["sso"] is True
    assert conn.plan(desired(ana), observation(welcomed=("ana",))) == []


def test_suspended_member_is_kicked_once_and_restored_when_active() -> None:
    conn = connector()
    bob = member("bob", status="suspended")
    assert actions(conn.plan(desired(bob), observation(welcomed=("bob",)))) == [
        ("suspend", "bob")]
    assert conn.plan(desired(bob), observation(welcomed=("bob",), kicked=("bob",))) == []
    back = member("bob")
    assert actions(conn.plan(desired(back), observation(welcomed=("bob",), kicked=("bob",)))) \
        == [("restore", "bob")]


def test_dropped_service_and_departure_in_grace_are_disabled() -> None:
    conn = connector()
    cy = member("cy", services=("cloud",))
    dee = member("dee", status="departed")
    changes = conn.plan(desired(cy, dee), observation(welcomed=("cy", "dee"), homes=("dee",)))
    assert actions(changes) == [("suspend", "cy"), ("suspend", "dee")]


def test_purge_and_gone_remove_a_home_and_only_a_home() -> None:
    conn = connector()
    eve = member("eve", status="departed")
    fox = member("fox", status="departed")
    gus = member("gus", status="purged")   # mail arrived between purge and the status change
    hal = member("hal", status="purged")
    changes = conn.plan(desired(eve, fox, gus, hal, purge_due=True),
                        observation(homes=("eve", "gus", "stranger")))
    assert actions(changes) == [("purge", "eve"), ("purge", "gus")]
    assert all(c.destructive for c in changes)


def test_quota_below_usage_is_a_finding_not_a_change() -> None:
    conn = connector()
    ana = member("ana", quota=1)          # 1 MiB, uses 2 MiB
    bob = member("bob", quota=None)       # no quota in the entry: nothing to compare
    seen = observation(usage=parse_homes(DU_OUTPUT), welcomed=("ana", "bob"))
    assert conn.plan(desired(ana, bob), seen) == []
    assert len(seen.findings) == 1
    finding = seen.findings[0]
    assert finding.uid == "ana" and finding.service == "mail"
    assert "2 MB" in finding.message and "1 MB" in finding.message
    assert "already in force" in finding.message
    conn.plan(desired(ana, bob), seen)     # planning again does not repeat it
    assert len(seen.findings) == 1


def test_members_absent_from_desired_are_never_touched() -> None:
    conn = connector()
    assert conn.plan({}, observation(homes=("someone",), kicked=("other",))) == []


# -- welcome mail -----------------------------------------------------------------------------

@pytest.mark.parametrize(("language", "words"), [
    ("fr", ["Bienvenue", "mot de passe", "identifiant", "écrivez à"]),
    ("nl", ["Welkom", "wachtwoord", "gebruikersnaam", "schrijf dan naar"]),
    ("en", ["Welcome", "password", "login name", "write to"]),
])
def test_welcome_mail_in_each_language_with_a_non_ascii_name(language: str,
                                                            words: list[str]) -> None:
    conn = connector()
    msg = conn.welcome_message("zoe.dubuc", "zoe.dubuc@demo.coop", "Zoë Dubœuf-Çelik", language)
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    body = parsed.get_content()
    assert words[0] in str(parsed["Subject"])
    for word in words:
        assert word in body or word in str(parsed["Subject"])
    assert "Zoë Dubœuf-Çelik" in body and "Zoë Dubœuf-Çelik" in str(parsed["To"])
    for shown in ("zoe.dubuc", "zoe.dubuc@demo.coop", "https://sso.demo.coop/account",
                  "imap.demo.coop", "993", "smtp.demo.coop", "587"):
        assert shown in body, shown
    assert parsed["Content-Language"] == language
    assert parsed["From"] == "welcome@demo.coop"
    assert "{{" not in body and "Subject:" not in body


@pytest.mark.parametrize("language", ["en", "fr", "nl"])
def test_welcome_sends_a_member_with_the_sso_to_choose_a_password_there(language: str) -> None:
    """With the SSO, the given password must be changed at its first login (and mail refuses
    it until then): the mail starts there. Without it, the given password is the one."""
    conn = connector()

    def body(sso: bool) -> str:
        msg = conn.welcome_message("zoe", "zoe@demo.coop", "Zoë", language, sso)
        parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
        return " ".join(parsed.get_content().split())  # one line: the template wraps

    first = {"en": "choose a password of your own", "fr": "d'en choisir un à vous",
             "nl": "een eigen wachtwoord te kiezen"}[language]
    assert first in body(True) and "https://sso.demo.coop/account" in body(True)
    assert first not in body(False) and "https://sso.demo.coop/account" not in body(False)


def test_unknown_language_falls_back_to_english() -> None:
    msg = connector().welcome_message("ana", "ana@demo.coop", "Ana", "de")
    assert str(msg["Subject"]).startswith("Welcome")


def test_coop_templates_override_ours(tmp_path: Path) -> None:
    (tmp_path / "nl.txt.j2").write_text("Subject: Dag {{ name }}\n\nLog in: {{ login_url }}\n")
    conn = connector(templates_dir=str(tmp_path))
    assert conn.welcome_message("ana", "ana@demo.coop", "Ana", "nl")["Subject"] == "Dag Ana"
    # Languages the coop did not override still use ours.
    assert str(conn.welcome_message("ana", "ana@demo.coop", "Ana", "fr")["Subject"]) \
        .startswith("Bienvenue")


def test_template_without_subject_is_refused(tmp_path: Path) -> None:
    (tmp_path / "en.txt.j2").write_text("Hello {{ name }}\n")
    with pytest.raises(ValueError, match="Subject"):
        WelcomeTemplates(tmp_path).render("en", {"name": "x"})


class FakeSMTP:
    """Stands in for smtplib.SMTP: accepts every recipient but `refuse`."""

    sent: ClassVar[list[Any]] = []
    refuse: ClassVar[set[str]] = set()

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port = host, port

    def ehlo(self) -> None: ...

    def has_extn(self, name: str) -> bool:
        return False

    def send_message(self, msg: Any, from_addr: str, to_addrs: list[str]) -> dict:
        if set(to_addrs) & self.refuse:
            raise smtplib.SMTPRecipientsRefused({to_addrs[0]: (550, b"no")})
        FakeSMTP.sent.append(msg)
        return {}

    def quit(self) -> None: ...


def test_welcome_is_marked_only_once_the_server_accepted(monkeypatch) -> None:
    monkeypatch.setattr(mailmod.smtplib, "SMTP", FakeSMTP)
    FakeSMTP.sent, FakeSMTP.refuse = [], {"bob@demo.coop"}
    state = MemoryState()
    conn = connector(state=state)
    changes = conn.plan(desired(member("ana"), member("bob")), observation())
    results: list[ChangeResult] = []
    conn.apply(changes, results.append)
    assert [(r.change.uid, r.ok) for r in results] == [("ana", True), ("bob", False)]
    assert state.marks("mail", "welcome") == {"ana"}
    assert len(FakeSMTP.sent) == 1


def test_welcome_without_smtp_host_fails_without_raising() -> None:
    state = MemoryState()
    conn = connector(state=state, smtp_host="")
    results: list[ChangeResult] = []
    conn.apply(conn.plan(desired(member("ana")), observation()), results.append)
    assert not results[0].ok and "smtp_host" in (results[0].error or "")
    assert state.marks("mail", "welcome") == set()


def test_welcome_when_the_smtp_server_is_down(monkeypatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(mailmod.smtplib, "SMTP", refuse)
    conn = connector()
    results: list[ChangeResult] = []
    conn.apply(conn.plan(desired(member("ana"), member("bob")), observation()), results.append)
    assert [r.ok for r in results] == [False, False]


# -- apply on the host ------------------------------------------------------------------------

@pytest.fixture
def doveadm_dir(tmp_path: Path) -> Path:
    script = tmp_path / "doveadm"
    script.write_text(FAKE_DOVEADM)
    script.chmod(0o755)
    return tmp_path


def test_suspensions_are_one_ssh_kick_and_failures_stay_per_member(doveadm_dir: Path) -> None:
    hosts = FakeHosts(bin_dir=doveadm_dir)
    state = MemoryState()
    conn = connector(hosts, state)
    changes = conn.plan(
        desired(*(member(u, status="suspended") for u in ("ana", "cy", "dee", "eve"))),
        observation(welcomed=("ana", "cy", "dee", "eve")))
    results: list[ChangeResult] = []
    conn.apply(changes, results.append)
    assert hosts.runs == [], "a suspension needs no Ansible run"
    assert len(hosts.signals) == 1 and hosts.signals[0][0] == "mail_servers"
    outcome = {r.change.uid: (r.ok, r.error) for r in results}
    assert outcome == {
        "ana": (True, None),   # kicked (2.3 prints the users)
        "cy": (False, "doveadm kick failed (exit 75): "
                      "doveadm(cy): Fatal: anvil socket refused"),
        "dee": (True, None),   # 2.4: nobody connected, exit 0
        "eve": (True, None),   # 2.3: nobody connected, exit 68
    }
    assert state.marks("mail", "kicked") == {"ana", "dee", "eve"}


def test_only_the_members_doveadm_who_lists_are_kicked(doveadm_dir: Path) -> None:
    """`doveadm who` read once: a member not connected needs no kick (the directory already
    refuses their logins); a connected one is kicked whatever the case of the address."""
    (doveadm_dir / "who.tab").write_text(
        "username\tservice\tpid\tip\tdest_ip\n"
        "ana@demo.coop\timap\t4242\t10.77.0.1\t10.77.0.11\n"
        "ana@demo.coop\tsubmission\t4243\t10.77.0.1\t10.77.0.11\n"
        "cy@demo.coop\timap\t4250\t10.77.0.2\t10.77.0.11\n"
        "zed@demo.coop\timap\t4260\t10.77.0.3\t10.77.0.11\n")
    hosts, state = FakeHosts(bin_dir=doveadm_dir), MemoryState()
    conn = connector(hosts, state)
    members = [member(u, status="suspended") for u in ("ana", "cy", "eve")]
    members[0] = dataclasses.replace(members[0], mail="Ana@Demo.coop")
    results: list[ChangeResult] = []
    conn.apply(conn.plan(desired(*members), observation(welcomed=("ana", "cy", "eve"))),
               results.append)
    assert sorted((doveadm_dir / "kicked.log").read_text().split()) == [
        "ana@demo.coop", "cy@demo.coop"]
    assert {r.change.uid: (r.ok, r.error) for r in results} == {
        "ana": (True, None),
        "cy": (False, "doveadm kick failed (exit 75): doveadm(cy): Fatal: anvil socket refused"),
        "eve": (True, None)}  # not connected: nothing to kick
    assert state.marks("mail", "kicked") == {"ana", "eve"}


def test_an_unreachable_mail_host_fails_each_suspension_and_marks_nothing() -> None:
    state = MemoryState()
    conn = connector(FakeHosts(bin_dir=None), state)
    results: list[ChangeResult] = []
    conn.apply(conn.plan(desired(member("ana", status="suspended")),
                         observation(welcomed=("ana",))), results.append)
    assert [(r.ok, r.error) for r in results] == [
        (False, "doveadm kick: ssh: connect to host mail port 22: Connection refused")]
    assert state.marks("mail", "kicked") == set()


def test_purges_are_one_playbook_run_and_failures_stay_per_member() -> None:
    hosts = FakeHosts(playbook_result={"ok": True, "error": None,
                                       "failed_items": {"cy": "doveadm: Fatal"}, "changed": 2})
    conn = connector(hosts)
    changes = conn.plan(desired(member("bob", status="purged"), member("cy", status="purged")),
                        observation(homes=("bob", "cy")))
    results: list[ChangeResult] = []
    conn.apply(changes, results.append)
    assert hosts.signals == [] and len(hosts.runs) == 1
    name, extravars = hosts.runs[0]
    assert name == "sync.yml"
    assert extravars == {"coop_sync_mail": [
        {"uid": "bob", "mail": "bob@demo.coop", "action": "purge"},
        {"uid": "cy", "mail": "cy@demo.coop", "action": "purge"},
    ]}
    outcome = {r.change.uid: (r.ok, r.error) for r in results}
    assert outcome == {"bob": (True, None), "cy": (False, "doveadm: Fatal")}


def test_a_failed_run_fails_every_item() -> None:
    hosts = FakeHosts(playbook_result={"ok": False, "error": "host unreachable: mail",
                                       "failed_items": {}, "changed": 0})
    conn = connector(hosts)
    results: list[ChangeResult] = []
    conn.apply(conn.plan(desired(member("ana", status="purged")), observation(homes=("ana",))),
               results.append)
    assert [(r.ok, r.error) for r in results] == [(False, "host unreachable: mail")]


def test_a_playbook_that_raises_is_reported_not_raised() -> None:
    def boom(extravars: Mapping[str, Any]) -> None:
        raise RuntimeError("no inventory")

    conn = connector(FakeHosts(on_playbook=boom))
    results: list[ChangeResult] = []
    conn.apply(conn.plan(desired(member("ana", status="purged")), observation(homes=("ana",))),
               results.append)
    assert [(r.ok, r.error) for r in results] == [(False, "no inventory")]


def test_restore_unmarks_without_touching_the_host() -> None:
    hosts, state = FakeHosts(), MemoryState()
    state.mark("mail", "kicked", "ana")
    conn = connector(hosts, state)
    results: list[ChangeResult] = []
    conn.apply(conn.plan(desired(member("ana")), observation(welcomed=("ana",), kicked=("ana",))),
               results.append)
    assert [(str(r.change.action), r.ok) for r in results] == [(str(Action.RESTORE), True)]
    assert hosts.runs == [] and state.marks("mail", "kicked") == set()


# -- export -----------------------------------------------------------------------------------

def test_export_fetches_one_tar(tmp_path: Path) -> None:
    def fetched(extravars: Mapping[str, Any]) -> None:
        (item,) = extravars["coop_sync_mail"]
        assert item["action"] == "export" and item["uid"] == "ana"
        Path(item["dest"], "mailbox.tar").write_bytes(b"tar")

    conn = connector(FakeHosts(on_playbook=fetched))
    files = conn.export(member("ana", status="departed"), tmp_path / "stage" / "mail")
    assert files == [tmp_path / "stage" / "mail" / "mailbox.tar"]


def test_export_failure_raises_so_that_nothing_is_purged(tmp_path: Path) -> None:
    stale = tmp_path / "mailbox.tar"
    stale.write_bytes(b"old")
    hosts = FakeHosts(playbook_result={"ok": True, "error": None,
                                       "failed_items": {"ana": "tar: failed"}, "changed": 0})
    with pytest.raises(ServiceUnavailable, match="tar: failed"):
        connector(hosts).export(member("ana", status="departed"), tmp_path)
    assert not stale.exists()


def test_phase_table_matches_the_design() -> None:
    assert member("a").phase("mail", False) is Phase.ACTIVE
    assert member("a", status="departed").phase("mail", True) is Phase.PURGE
