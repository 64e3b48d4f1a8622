"""One audit run: read the directory, observe every service, compare, check, verify.

Read-only by construction: the journal is opened in SQLite's read-only mode, the sync's
`apply` is never called (only `observe` and the pure `plan`), the guards are bypassed because
nothing is touched, and the infrastructure checks run read-only commands on the hosts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from provisioner.audit import access, drift
from provisioner.audit.model import AuditFinding, AuditResult, CheckResult, Severity
from provisioner.config import AuditCredentials, Config
from provisioner.journal import Journal
from provisioner.model import Member, Plan
from provisioner.sync import Sync, SyncPlan

# How each service is observed when the configuration names no read-only credentials for it.
OWN_ACCESS = {
    "mail": "read-only commands on the mail hosts over SSH (doveadm, postconf)",
    "wiki": "reads the wiki's files on its hosts over SSH",
    "cloud": "the cloud's admin account: Nextcloud has no view-only role for its user API",
    "pads": "the Etherpad API key: Etherpad has one key for everything",
    "sso": "coopctl's own Keycloak credentials (can write): set audit.services.sso",
}
# Settings that say who a service's account is: an audit account replaces all of them.
CREDENTIAL_KEYS = frozenset({"client_id", "client_key_file", "client_secret_file", "admin_user",
                             "admin_secret_file", "admin_realm", "admin_client_id"})
# What a read-only account of the `audit` section can still do, where the service allows more
# than reading. Keycloak's view-clients, which listing sessions per client and the
# realm-management role members needs, also returns every client's secret: coopctl's client
# (whose service account has manage-users) is safe from it only when it signs JWTs with a key
# instead of holding a secret (measured on Keycloak 26.7).
SSO_READ_ONLY = ("view roles only (audit.services); coopctl's client signs with a key that "
                 "Keycloak never holds, so no secret the audit can read acts as it")
SSO_SECRET_LEAK = ("view roles only (audit.services), but Keycloak's view-clients also reveals "
                   "client secrets, coopctl's included (services.sso.client_secret_file): not "
                   "read-only in effect; give coopctl's client a key (sso role, client_key_file)")


def read_only_config(config: Config) -> tuple[Config, dict[str, str]]:
    """The configuration the audit runs with, and which credentials each part uses.

    The `audit` section's accounts replace coopctl's own (the directory's cn=audit, a
    Keycloak client with view roles only), so that an audit cannot write even by mistake;
    where a service has no read-only access, the report says so instead of hiding it.
    """
    creds = config.audit or AuditCredentials()
    if creds.directory is not None:
        used = {"directory": f"{creds.directory.bind_dn} (read-only)"}
    else:
        used = {"directory": f"{config.directory.bind_dn} (coopctl's account, can write: "
                             "set audit.directory)"}
    services: dict[str, dict[str, Any]] = {}
    for name, settings in config.services.items():
        override = creds.services.get(name)
        kept = settings
        if override and CREDENTIAL_KEYS & set(override):
            # The audit's account replaces coopctl's whole: no key or secret of coopctl's stays.
            kept = {k: v for k, v in settings.items() if k not in CREDENTIAL_KEYS}
        services[name] = {**kept, **override} if override else settings
        if override and settings.get("client_id") and override.get("client_id"):
            # The SSO's administrators name coopctl's own client (the sync's) as such.
            services[name]["sync_client_id"] = settings["client_id"]
        if override and name == "sso":
            own = config.services[name]
            leaks = own.get("client_secret_file") and not own.get("client_key_file")
            used[name] = SSO_SECRET_LEAK if leaks else SSO_READ_ONLY
        elif override:
            used[name] = "read-only account (audit.services)"
        else:
            used[name] = OWN_ACCESS.get(name, "the service's own settings")
    return replace(config, directory=creds.directory or config.directory,
                   services=services), used


def run_audit(config: Config, services: Iterable[str] = (), as_of: str | None = None,
              checks: Callable[[], list[CheckResult]] | None = None) -> AuditResult:
    journal = _open_journal(config)  # read-only, opened once for the whole audit
    try:
        return _audit(config, journal, services, as_of, checks)
    finally:
        if journal is not None:
            journal.close()


def _audit(config: Config, journal: Journal | None, services: Iterable[str],
           as_of: str | None, checks: Callable[[], list[CheckResult]] | None) -> AuditResult:
    reader, credentials = read_only_config(config)
    sync = Sync(reader, journal=journal)
    members, plans, total = sync.read()
    plan = sync.plan(services, force=True, read=(members, plans, total))
    known = {m.uid for m in members}
    result = AuditResult(
        coop=config.coop,
        generated=datetime.now(UTC).isoformat(timespec="seconds"),
        as_of=as_of,
        summary=directory_summary(members, plans),
        findings=drift.drift_findings(plan, known),
        services=list(plan.services),
        unavailable={s: sp.error for s, sp in plan.services.items() if sp.error},
        credentials={k: v for k, v in credentials.items()
                     if k == "directory" or k in plan.services},
    )
    for service, error in result.unavailable.items():
        result.findings.append(AuditFinding(
            Severity.HIGH, service, service, "unavailable",
            f"{service} could not be observed: {error}",
            f"check that {service} runs, then `coopctl audit --service {service}`"))
    result.administrators = administrators(config, plan, members)
    result.journal = verify_journal(journal)
    broken = result.journal["first_broken"]
    if broken is not None:
        result.findings.append(AuditFinding(
            Severity.CRITICAL, "journal", f"record {broken}", "tampered",
            f"journal record {broken} does not match the hash chain: it (or the one before "
            "it) was edited or removed outside coopctl",
            "compare the journal with its backups; `coopctl audit journal` names the record"))
    if as_of:
        statuses = {m.uid: m.status for m in members}
        entries = list(journal.entries()) if journal else []
        result.access = access.matrix_as_of(entries, result.services, as_of, statuses)
    else:
        result.access = access.matrix_now(members, plan)
    if checks is not None:
        result.checks = checks()
        for c in result.checks:
            if c.outcome in ("failed", "error"):
                result.findings.append(AuditFinding(
                    c.severity, "infrastructure", c.host, "check",
                    f"{c.name}: {c.message}" if c.message else c.name,
                    "see the check's message; the role of that service sets it right "
                    "(`coopctl deploy`)"))
    result.findings.sort(key=lambda f: (-f.severity, f.area, f.subject))
    return result


def _open_journal(config: Config) -> Journal | None:
    path = config.sync.journal if config.sync else None
    if path is None or not path.exists():
        return None
    return Journal(path, readonly=True)


def verify_journal(journal: Journal | None) -> dict[str, object]:
    """Record count and the first record that breaks the hash chain (None: all verify)."""
    if journal is None:
        return {"records": 0, "verified": True, "first_broken": None}
    count = journal.db.execute("SELECT count(*) FROM journal").fetchone()[0]
    broken = journal.verify_chain()
    return {"records": count, "verified": broken is None, "first_broken": broken}


def directory_summary(members: list[Member], plans: dict[str, Plan]) -> dict[str, object]:
    """Members by status, per plan, and the monthly revenue of active members."""
    by_status = Counter(m.status for m in members)
    per_plan: dict[str, dict[str, object]] = {}
    revenue = 0
    for name, p in sorted(plans.items()):
        active = sum(1 for m in members if m.plan == name and m.status == "active")
        per_plan[name] = {"description": p.description, "active_members": active,
                          "price_cents": p.price_cents, "currency": p.currency or "EUR"}
        revenue += active * (p.price_cents or 0)
    return {"members": len(members), "by_status": dict(sorted(by_status.items())),
            "plans": per_plan, "monthly_revenue_cents": revenue}


def administrators(config: Config, plan: SyncPlan,
                   members: list[Member]) -> dict[str, list[str]]:
    """Who can change any account: the directory's writers, and each service's admins as its
    observation shows them (connectors that can list them offer `administrators()`). The
    wiki's superusers are a directory group (the wiki role's `wiki_admin_group`, given to the
    audit as services.wiki.admin_group), so they come from the directory itself."""
    out = {"directory": [f"{config.directory.bind_dn} (coopctl's account: writes members)"]}
    for service, sp in plan.services.items():
        listing = getattr(sp.observed, "administrators", None)
        if callable(listing):
            out[service] = list(listing())
    if "wiki" in plan.services:
        group = str(config.services.get("wiki", {}).get("admin_group", "admins"))
        out["wiki"] = [f"{m.uid} (group {group}: superuser)" for m in members
                       if group in m.groups]
    return out
