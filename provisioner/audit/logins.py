"""A first audit: does each service really hold the accounts the directory says?

For every member and service the directory gives the expected state (an
active member with the service must be able to log in; anyone else must
not); each check asks the live service, through its own interface, what it
actually does. Mismatches are drift. This is the seed of `coopctl audit`;
today it covers mail (Dovecot's user database), single sign-on (Keycloak's
admin API over the LDAP federation) and the pads API.
"""

from __future__ import annotations

import shlex
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from provisioner.model import Member, Plan


@dataclass
class Finding:
    service: str
    uid: str
    expected: bool
    observed: bool | None  # None: the service could not be asked

    @property
    def drift(self) -> bool:
        return self.observed is not None and self.observed != self.expected


@dataclass
class AuditReport:
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def drift(self) -> list[Finding]:
        return [f for f in self.findings if f.drift]

    def matrix(self, members: list[Member], services: list[str]) -> str:
        """Member x service: 'yes'/'no' as observed, '!' marks drift."""
        index = {(f.uid, f.service): f for f in self.findings}
        lines = [f"{'MEMBER':<24} {'STATUS':<10} " + " ".join(f"{s:<6}" for s in services)]
        for m in members:
            cells = []
            for service in services:
                f = index.get((m.uid, service))
                if f is None or f.observed is None:
                    cells.append("?     ")
                else:
                    mark = "yes" if f.observed else "no"
                    cells.append(f"{mark + ('!' if f.drift else ''):<6}")
            lines.append(f"{m.uid:<24} {m.status:<10} " + " ".join(cells))
        return "\n".join(lines)


# Services whose login filter leaves out a member with the SSO who has not yet chosen their own
# password (pwdReset): they only bind, so they cannot ask for the change the SSO asks for. A
# member without the SSO has no page to change it on, and keeps the given password.
BIND_ONLY_SERVICES = frozenset({"mail", "wiki", "cloud"})


def expected_access(member: Member, service: str,
                    awaiting_own_password: frozenset[str] | set[str] = frozenset()) -> bool:
    """Active with the service; for a bind-only service, also past the first password change
    (when the member has the SSO, where that change happens)."""
    if service in BIND_ONLY_SERVICES and member.uid in awaiting_own_password \
            and "sso" in member.services:
        return False
    return member.status == "active" and service in member.services


def directory_summary(members: list[Member], plans: dict[str, Plan]) -> list[str]:
    by_status = Counter(m.status for m in members)
    revenue = sum(plans[m.plan].price_cents or 0 for m in members
                  if m.status == "active" and m.plan in plans)
    overrides = [m.uid for m in members if m.quota_overrides]
    return [
        f"members: {len(members)} ({', '.join(f'{k} {v}' for k, v in sorted(by_status.items()))})",
        f"monthly revenue of active members: {revenue // 100}.{revenue % 100:02d} EUR",
        f"active members without any service: "
        f"{sum(1 for m in members if m.status == 'active' and not m.services)}",
        f"quotas set by hand: {', '.join(overrides) or 'none'}",
    ]


def mail_logins(run_on_mail_host: Callable[[str], str], addresses: list[str]) -> set[str]:
    """Addresses Dovecot's passdb accepts for login (one SSH round trip for all).

    The userdb also knows suspended members (their mailbox is kept); the passdb, with its
    LDAP filter on status and service, is what decides who may log in.
    """
    script = "; ".join(
        f"doveadm auth lookup {shlex.quote(a)} >/dev/null 2>&1 && echo {shlex.quote(a)}"
        for a in addresses
    )
    return {line.strip() for line in run_on_mail_host(script + "; true").splitlines()}


def audit_mail(report: AuditReport, members: list[Member],
               run_on_mail_host: Callable[[str], str],
               awaiting_own_password: frozenset[str] | set[str] = frozenset()) -> None:
    try:
        known = mail_logins(run_on_mail_host, [m.mail for m in members])
    except (OSError, subprocess.CalledProcessError) as exc:
        report.notes.append(f"mail: could not ask Dovecot ({exc})")
        known = None
    for m in members:
        observed = None if known is None else m.mail in known
        expected = expected_access(m, "mail", awaiting_own_password)
        report.findings.append(Finding("mail", m.uid, expected, observed))
    waiting = sorted(m.uid for m in members if m.uid in awaiting_own_password
                     and m.status == "active" and {"mail", "sso"} <= set(m.services))
    if waiting:
        report.notes.append(
            f"mail: {len(waiting)} member(s) still have the password coopctl gave them, which "
            f"opens only the SSO's login, where they choose their own: {', '.join(waiting)}")


def audit_sso(report: AuditReport, members: list[Member], base_url: str, realm: str,
              admin_user: str, admin_password: str, ca_file: Path) -> None:
    """Keycloak resolves usernames through the LDAP federation and its filter."""
    session = requests.Session()
    # verify is passed per request: a session-wide value loses to $REQUESTS_CA_BUNDLE.
    verify = str(ca_file)
    try:
        token = session.post(
            f"{base_url}/realms/master/protocol/openid-connect/token",
            data={"grant_type": "password", "client_id": "admin-cli",
                  "username": admin_user, "password": admin_password},
            timeout=30, verify=verify,
        )
        token.raise_for_status()
        session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
    except requests.RequestException as exc:
        report.notes.append(f"sso: could not reach Keycloak's admin API ({exc})")
        for m in members:
            report.findings.append(Finding("sso", m.uid, expected_access(m, "sso"), None))
        return
    for m in members:
        found = session.get(f"{base_url}/admin/realms/{realm}/users",
                            params={"username": m.uid, "exact": "true"}, timeout=30,
                            verify=verify)
        observed = found.ok and any(u.get("username") == m.uid for u in found.json())
        report.findings.append(Finding("sso", m.uid, expected_access(m, "sso"), observed))


def audit_pads(report: AuditReport, base_url: str, api_key: str, ca_file: Path,
               host_header: str) -> None:
    try:
        # The key in the POST body: in a URL it would land in access logs.
        answer = requests.post(f"{base_url}/api/1.2.15/checkToken", data={"apikey": api_key},
                              headers={"Host": host_header}, verify=str(ca_file), timeout=30)
        code = answer.json().get("code")
    except (requests.RequestException, ValueError) as exc:
        report.notes.append(f"pads: Etherpad's API did not answer ({type(exc).__name__})")
        return
    report.notes.append("pads: Etherpad's API answers coopctl" if code == 0 else
                        f"pads: Etherpad's API refused coopctl's key (code {code})")
