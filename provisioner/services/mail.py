"""Mail (Postfix + Dovecot 2.3, role ``mail``): what the sync does for each member's mailbox.

Dovecot and Postfix read accounts and quotas from the directory live, so the sync creates
nothing and sets no quota. What is left to it:

- **welcome**: one mail to each new active member, in their language, sent once (remembered
  in the state store as ``mail/welcome`` only after the SMTP server accepted it);
- **suspend**: ``doveadm kick`` (an LDAP change refuses *new* logins, it does not end an open
  IMAP session), over SSH at once rather than through the playbook (see ``_kick``);
  remembered as ``mail/kicked`` so it runs once per suspension, forgotten by ``restore`` when
  the member is active again;
- **purge**: kick, then remove the mail home (after ``export`` put it in the archive);
- a **finding** when a member's quota is below what their mailbox already uses: the quota is
  already in force (Dovecot reads it from the directory), nothing can be "applied".

Observation is one SSH command on the mail host (the list of mail homes with their sizes);
purges and exports are one run of ``playbooks/sync.yml`` for the whole batch.

Purge and mail in flight: the sync purges every service *then* marks the member ``purged`` in
the directory. Until that status is written, Postfix and Dovecot still accept the member's
mail (a departed member's mail is kept), so a message arriving in between recreates the home.
``plan`` therefore purges any home of a member in ``Phase.GONE`` as well: the next sync
removes such a leftover, and once the status is ``purged`` nothing can recreate it (the
role's delivery filter refuses the address).
"""

from __future__ import annotations

import contextlib
import email.policy
import email.utils
import functools
import shlex
import smtplib
import ssl
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jinja2

from provisioner.hosts import parse_results
from provisioner.resources import welcome_templates_dir
from provisioner.services.base import (
    Action,
    ChangeResult,
    Connector,
    Desired,
    Finding,
    MemberState,
    Observation,
    Phase,
    PlaybookExport,
    Report,
    ServiceChange,
    ServiceUnavailable,
)

SERVICE = "mail"
WELCOME = "welcome"   # state mark: the welcome mail was accepted by the SMTP server
KICKED = "kicked"     # state mark: live sessions ended for the current suspension
LANGUAGES = ("fr", "nl", "en")
DEFAULT_LANGUAGE = "en"
BUILTIN_TEMPLATES = welcome_templates_dir()
# Where the role keeps one home per uid (mail_vmail_dir); the sync lists it to find leftovers
# of purged members, whom Dovecot no longer knows.
VMAIL_DIR = "/var/vmail"
HOMES_MARK = "--coopctl-homes--"
KICK_MARK = "--coopctl-kicks--"
# doveadm kick processes at once on the mail host: each mostly waits for Dovecot's anvil, and
# a burst of 100 suspensions kicked one after the other took 3.9 s (bench/bench_watch_lab.py).
KICK_PARALLEL = 8
# The mail role's listener for the coop's own hosts (mail_internal_port): port 25 refuses a
# From: header in the coop's domains, which the welcome mail has.
INTERNAL_SMTP_PORT = 2525
SMTP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Usage:
    """What one mail home holds on disk (KiB: messages plus Dovecot's index files)."""

    used_kib: int
    limit_kib: int | None  # None: no limit


@dataclass
class MailObservation:
    """What the mail host shows: each mail home (by uid) and the size of what it holds."""

    usage: dict[str, Usage]
    homes: frozenset[str]
    welcomed: frozenset[str]
    kicked: frozenset[str]
    findings: list[Finding] = field(default_factory=list)

    @property
    def accounts(self) -> Collection[str]:
        """Uids that have a mail home (the audit looks for homes of unknown uids)."""
        return self.homes

    def access(self, uid: str) -> str:
        """For the audit's access matrix. Dovecot creates a home at the first delivery or
        login, so a welcomed member without one yet has a working mailbox all the same; whether
        they may log in is the directory's filter, read by Dovecot at each login."""
        if uid in self.kicked:
            return "disabled"
        return "yes" if uid in self.homes or uid in self.welcomed else "no"


def parse_homes(text: str) -> dict[str, Usage]:
    """Parse ``du -s -k`` over the mail homes: ``<KiB>\t<vmail>/<uid>`` per line, by uid."""
    usage: dict[str, Usage] = {}
    for line in text.splitlines():
        size, _, path = line.partition("\t")
        uid = path.rstrip("/").rpartition("/")[2]
        if size.strip().isdigit() and uid and not uid.startswith("."):
            usage[uid] = Usage(int(size), None)
    return usage


def kick_failure(result: tuple[int, str] | None) -> str | None:
    """Why a kick failed, or None: exit 0, or 68 with "no users kicked" (nobody connected)."""
    if result is None:
        return "doveadm kick: the mail host gave no answer for this member"
    code, output = result
    if code == 0 or (code == 68 and "no users kicked" in output):
        return None
    return f"doveadm kick failed (exit {code}): {output or 'no output'}"


def _size(kib: int) -> str:
    """A size for a person: 512 KB, 12.3 MB, 1.5 GB."""
    if kib < 1024:
        return f"{kib} KB"
    mib = kib / 1024
    if mib < 1024:
        return f"{mib:.1f} MB".replace(".0 MB", " MB")
    return f"{mib / 1024:.1f} GB".replace(".0 GB", " GB")


class WelcomeTemplates:
    """The welcome mail's text per language: the coop's own templates first, then ours.

    A template's first line is ``Subject: ...``, then a blank line, then the body.
    """

    def __init__(self, override: str | Path | None = None) -> None:
        paths = [str(Path(override).expanduser())] if override else []
        paths.append(str(BUILTIN_TEMPLATES))
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(paths),
            undefined=jinja2.StrictUndefined,   # a typo in a coop's template fails loudly
            autoescape=False,                   # plain text mail, not HTML
            keep_trailing_newline=True,
        )

    def render(self, language: str, context: Mapping[str, Any]) -> tuple[str, str]:
        """(subject, body) in `language`, falling back to English for another language."""
        lang = language if language in LANGUAGES else DEFAULT_LANGUAGE
        try:
            template = self.env.get_template(f"{lang}.txt.j2")
        except jinja2.TemplateNotFound:
            template = self.env.get_template(f"{DEFAULT_LANGUAGE}.txt.j2")
        text = template.render(**context)
        head, _, body = text.partition("\n")
        if not head.lower().startswith("subject:"):
            raise ValueError(f"the welcome template {template.name} must start with "
                             "'Subject: ...'")
        return head.split(":", 1)[1].strip(), body.lstrip("\n")


class MailConnector(PlaybookExport, Connector):
    """Mailboxes on the coop's Dovecot host (see the module docstring)."""

    export_var = "coop_sync_mail"
    export_file = "mailbox.tar"

    name = SERVICE

    # -- settings ---------------------------------------------------------------------------
    @property
    def host_group(self) -> str:
        return str(self.runtime.settings.get("host_group") or "mail_servers")

    @property
    def vmail_dir(self) -> str:
        return str(self.runtime.settings.get("vmail_dir") or VMAIL_DIR)

    @property
    def sender(self) -> str:
        return str(self.runtime.settings.get("from") or f"welcome@{self.runtime.mail_domain}")

    # -- observe ----------------------------------------------------------------------------
    def observe(self, uids: Collection[str] | None = None) -> MailObservation:
        """Every mail home with the size of what it holds, in one SSH command.

        One `du` over the mail homes (apparent sizes: the messages plus Dovecot's small index
        files) costs a fraction of a second for 10,000 homes, where `doveadm quota get -A`
        opens every mailbox (14 s for 9,000 on the lab): the quota itself needs no reading, as
        Dovecot takes it from the directory at each login and delivery. The homes listing
        also shows what purged members left behind. `uids` is ignored: one listing either way.
        """
        script = (f"echo {HOMES_MARK} && find {shlex.quote(self.vmail_dir)} -mindepth 1 "
                  "-maxdepth 1 -type d -exec du -s -k --apparent-size {} +")
        try:
            out = self.runtime.hosts.read(self.host_group, ["sh", "-c", script])
        except Exception as exc:  # HostError, and whatever the SSH layer raises
            raise ServiceUnavailable(f"mail host ({self.host_group}) unreadable: {exc}") from None
        if HOMES_MARK not in out:
            raise ServiceUnavailable("mail host: the listing of mail homes is incomplete")
        usage = parse_homes(out.partition(HOMES_MARK)[2])
        state = self.runtime.state
        return MailObservation(usage=usage, homes=frozenset(usage),
                               welcomed=frozenset(state.marks(SERVICE, WELCOME)),
                               kicked=frozenset(state.marks(SERVICE, KICKED)))

    # -- plan -------------------------------------------------------------------------------
    def plan(self, desired: Mapping[str, Desired], observed: Observation) -> list[ServiceChange]:
        """Welcome, restore, suspend, purge; quota findings go to ``observed.findings``.

        Pure: the findings list is rebuilt on every call, so planning twice (plan, then the
        verify step) reports each finding once.
        """
        if not isinstance(observed, MailObservation):
            raise TypeError(f"the mail connector cannot plan from {type(observed).__name__}")
        changes: list[ServiceChange] = []
        findings: list[Finding] = []
        for uid in sorted(desired):
            want = desired[uid]
            member, phase = want.member, want.phase
            has_home = uid in observed.homes
            if phase is Phase.ACTIVE:
                if uid in observed.kicked:
                    changes.append(self._change(Action.RESTORE, member))
                if uid not in observed.welcomed:
                    changes.append(self._change(Action.WELCOME, member, welcome=True))
            elif phase is Phase.DISABLED:
                if uid not in observed.kicked:
                    changes.append(self._change(Action.SUSPEND, member))
            elif phase in (Phase.PURGE, Phase.GONE) and has_home:
                changes.append(self._change(Action.PURGE, member))
            if phase in (Phase.ACTIVE, Phase.DISABLED):
                finding = self._quota_finding(member, observed.usage.get(uid))
                if finding:
                    findings.append(finding)
        observed.findings = findings
        return changes

    @staticmethod
    def _change(action: Action, member: MemberState, welcome: bool = False) -> ServiceChange:
        detail: dict[str, Any] = {"mail": member.mail}
        if welcome:  # apply() has only the change: it carries what the mail needs (no secret)
            detail |= {"name": member.display_name, "language": member.language,
                       "sso": "sso" in member.services}
        return ServiceChange(SERVICE, action, member.uid, detail)

    @staticmethod
    def _quota_finding(member: MemberState, usage: Usage | None) -> Finding | None:
        if usage is None:
            return None
        limit_kib = member.mail_quota * 1024 if member.mail_quota else usage.limit_kib
        if not limit_kib or usage.used_kib <= limit_kib:
            return None
        return Finding(
            SERVICE, member.uid,
            f"{member.uid}'s mailbox holds about {_size(usage.used_kib)} but their mail quota is "
            f"{_size(limit_kib)}; the quota is already in force (Dovecot reads it from the "
            "directory), so new mail is refused until they delete some or the quota is raised",
        )

    # -- apply ------------------------------------------------------------------------------
    def apply(self, changes: Sequence[ServiceChange], report: Report) -> None:
        """Restore locally; suspend (kick) first, over SSH; welcome over SMTP; purge in one
        playbook run (it kicks again before it removes anything)."""
        suspends: list[ServiceChange] = []
        purges: list[ServiceChange] = []
        welcomes: list[ServiceChange] = []
        for change in changes:
            if change.action is Action.RESTORE:
                report(self._unmark_kicked(change))
            elif change.action is Action.WELCOME:
                welcomes.append(change)
            elif change.action is Action.SUSPEND:
                suspends.append(change)
            elif change.action is Action.PURGE:
                purges.append(change)
            else:
                report(ChangeResult(change, False, f"the mail connector has no {change.action}"))
        if suspends:
            self._kick(suspends, report)
        if welcomes:
            self._send_welcomes(welcomes, report)
        if purges:
            self._run_host_side(purges, report)

    def _kick(self, changes: Sequence[ServiceChange], report: Report) -> None:
        """End the live IMAP/submission sessions of suspended members: one SSH command for
        the batch, `doveadm kick` per login (it takes one user mask per call).

        Not through the sync playbook: a suspension for abuse must cut sessions within
        seconds (the watcher's target is 5 s from the LDAP write), one Ansible run costs
        several, and a kick stores nothing on the host that Ansible could report or repeat.
        Dovecot 2.3 exits 68 with "no users kicked" when nobody was connected; 2.4 prints
        "0 connections kicked" and exits 0: both are success. Each member's result is one
        ``mail<TAB>exit<TAB>output`` line (one write, so lines of kicks running side by side
        do not mix), so a failure stays with its member; up to KICK_PARALLEL at once, and
        only for the members `doveadm who` lists (Dovecot lowercases logins, so the
        addresses are compared in lower case): a burst of 100 suspensions, of whom a few
        are connected, is a few kicks, not 100 (each doveadm process costs 30-40 ms).
        """
        one = ("out=$(doveadm kick \"$1\" 2>&1); rc=$?; printf '%s\\t%s\\t%s\\n' \"$1\" \"$rc\" "
               "\"$(printf %s \"$out\" | tr '\\t\\n' '  ' | cut -c1-200)\"")
        # Who is connected now (one doveadm call): only they are kicked. The directory
        # already refuses the others' new logins. If the list cannot be read, everyone is.
        # Its header line ("username") is kept: it never equals an address.
        script = (f"echo {KICK_MARK}; one=$1; shift; nl='\n'; "
                  "if who=$(doveadm -f tab who -1 2>/dev/null); then "
                  "on=\"$nl$(printf '%s\\n' \"$who\" | cut -f1 | "
                  "tr '[:upper:]' '[:lower:]')$nl\"; "
                  "for m do shift; case \"$on\" in *\"$nl$m$nl\"*) set -- \"$@\" \"$m\" ;; "
                  "*) printf '%s\\t0\\tnot connected\\n' \"$m\" ;; esac; done; fi; "
                  "[ $# -eq 0 ] || printf '%s\\0' \"$@\" | "
                  f"xargs -0 -r -n 1 -P {KICK_PARALLEL} sh -c \"$one\" kick")
        mails = [str(c.detail["mail"]).lower() for c in changes]
        try:
            out = self.runtime.hosts.signal(self.host_group,
                                            ["sh", "-c", script, "kick", one, *mails])
        except Exception as exc:  # HostError, and whatever the SSH layer raises
            for change in changes:
                report(ChangeResult(change, False, f"doveadm kick: {exc}"))
            return
        results = parse_results(out.partition(KICK_MARK)[2])
        for change in changes:
            failure = kick_failure(results.get(str(change.detail["mail"]).lower()))
            if failure:
                report(ChangeResult(change, False, failure))
                continue
            try:
                self.runtime.state.mark(SERVICE, KICKED, change.uid)
            except Exception as exc:
                report(ChangeResult(change, False, f"kicked, but the state store: {exc}"))
                continue
            report(ChangeResult(change, True))

    def _unmark_kicked(self, change: ServiceChange) -> ChangeResult:
        try:
            self.runtime.state.unmark(SERVICE, KICKED, change.uid)
        except Exception as exc:
            return ChangeResult(change, False, f"state store: {exc}")
        return ChangeResult(change, True)

    def _run_host_side(self, changes: Sequence[ServiceChange], report: Report) -> None:
        """Purges, in one sync.yml run (suspensions are kicked over SSH: `_kick`)."""
        items = [{"uid": c.uid, "mail": c.detail["mail"], "action": "purge"} for c in changes]
        try:
            result = self.runtime.hosts.playbook("sync.yml", {"coop_sync_mail": items})
        except Exception as exc:
            result = {"ok": False, "error": str(exc), "failed_items": {}}
        failed: Mapping[str, str] = result.get("failed_items") or {}
        for change in changes:
            if not result.get("ok"):
                report(ChangeResult(change, False,
                                    failed.get(change.uid) or result.get("error") or "failed"))
            elif change.uid in failed:
                report(ChangeResult(change, False, failed[change.uid]))
            else:
                report(ChangeResult(change, True))

    # -- welcome ----------------------------------------------------------------------------
    def welcome_context(self, uid: str, mail: str, name: str,
                        sso: bool = True) -> dict[str, Any]:
        """What a welcome template may use. `sso`: the member logs in at the SSO, where the
        first login has them choose their own password (without it, mail takes the given one:
        there is no other page to change it on yet)."""
        settings = self.runtime.settings
        domain = self.runtime.mail_domain
        return {
            "name": name, "uid": uid, "mail": mail, "coop": self.runtime.coop,
            "mail_domain": domain,
            "login_url": settings.get("login_url") or "",
            "imap_host": settings.get("imap_host") or f"imap.{domain}",
            "submission_host": settings.get("submission_host") or f"smtp.{domain}",
            "sender": self.sender,
            "sso": sso,
            # Who a member writes to for a new password: there is no self-service reset yet
            # (Keycloak federates the directory read-only), so the mail must name a person.
            "help_contact": settings.get("help_contact") or self.sender,
        }

    @functools.cached_property
    def _templates(self) -> WelcomeTemplates:
        """The templates, loaded once per connector: jinja2 compiles each template once per
        environment, and a new environment per mail made the compile most of a first sync's
        welcome cost (bench_sync, py-spy: 79 of mail's 170 samples)."""
        return WelcomeTemplates(self.runtime.settings.get("templates_dir"))

    def welcome_message(self, uid: str, mail: str, name: str, language: str,
                        sso: bool = True) -> EmailMessage:
        """The welcome mail for one member (rendered, not sent)."""
        subject, body = self._templates.render(language, self.welcome_context(uid, mail, name, sso))
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = self.sender
        msg["To"] = email.utils.formataddr((name, mail))
        msg["Subject"] = subject
        msg["Date"] = email.utils.formatdate(localtime=True)
        msg["Message-ID"] = email.utils.make_msgid(domain=self.runtime.mail_domain)
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(body)
        # After set_content, which replaces every Content-* header.
        msg["Content-Language"] = language if language in LANGUAGES else DEFAULT_LANGUAGE
        return msg

    def _send_welcomes(self, changes: Sequence[ServiceChange], report: Report) -> None:
        """One SMTP connection for the batch; each member marked once the server accepted."""
        settings = self.runtime.settings
        host = settings.get("smtp_host")
        if not host:
            for change in changes:
                report(ChangeResult(change, False, "services.mail.smtp_host is not set"))
            return
        if not settings.get("login_url"):
            for change in changes:
                report(ChangeResult(change, False, "services.mail.login_url is not set: the "
                                    "welcome mail must say where to log in"))
            return
        smtp: smtplib.SMTP | None = None
        try:
            smtp = self._smtp(str(host), int(settings.get("smtp_port") or INTERNAL_SMTP_PORT))
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            for change in changes:
                report(ChangeResult(change, False, f"SMTP {host}: {exc}"))
            return
        try:
            for change in changes:
                report(self._send_one(smtp, change))
        finally:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                smtp.quit()

    def _smtp(self, host: str, port: int) -> smtplib.SMTP:
        """Connected and greeted; STARTTLS (verified with the coop CA) whenever offered."""
        smtp = smtplib.SMTP(host, port, timeout=SMTP_TIMEOUT)
        smtp.ehlo()
        if smtp.has_extn("starttls"):
            context = ssl.create_default_context(cafile=self.runtime.ca_file)
            smtp.starttls(context=context)
            smtp.ehlo()
        return smtp

    def _send_one(self, smtp: smtplib.SMTP, change: ServiceChange) -> ChangeResult:
        detail = change.detail
        try:
            msg = self.welcome_message(change.uid, str(detail["mail"]),
                                       str(detail.get("name") or change.uid),
                                       str(detail.get("language") or DEFAULT_LANGUAGE),
                                       bool(detail.get("sso", True)))
        except (jinja2.TemplateError, ValueError, KeyError) as exc:
            return ChangeResult(change, False, f"welcome template: {exc}")
        try:
            refused = smtp.send_message(msg, from_addr=self.sender,
                                        to_addrs=[str(detail["mail"])])
        except (OSError, smtplib.SMTPException) as exc:
            return ChangeResult(change, False, f"SMTP: {exc}")
        if refused:
            return ChangeResult(change, False, f"SMTP refused: {refused}")
        try:
            self.runtime.state.mark(SERVICE, WELCOME, change.uid)
        except Exception as exc:
            return ChangeResult(change, False, f"sent, but the state store: {exc}")
        return ChangeResult(change, True)

    # -- export -----------------------------------------------------------------------------
    def export_item(self, member: MemberState, dest: Path) -> dict[str, Any]:
        """The member's mail home as ``dest/mailbox.tar`` (an empty tar if they had none)."""
        return {"uid": member.uid, "mail": member.mail, "action": "export",
                "dest": str(dest.resolve())}
