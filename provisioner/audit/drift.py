"""Drift: whatever a sync would change is a difference between the directory and a service.

The audit does not compare anything by itself: it runs the sync's connectors' bulk `observe`
and pure `plan` (no apply, ever) and turns each planned change and each connector finding
into an audit finding with a severity and the command that fixes it. One definition of
"in line with the directory" therefore serves the sync and the audit. What no sync would
touch is added here: accounts of uids the directory does not know (orphans), which coopctl
never deletes by itself.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from provisioner.audit.model import AuditFinding, Severity
from provisioner.services.base import Action, Finding, ServiceChange
from provisioner.sync import ARCHIVE_SERVICE, SyncPlan

# Why each kind of planned change matters to an auditor.
ACTION_SEVERITY = {
    Action.SUSPEND: Severity.HIGH,      # someone the directory cut off still has access
    Action.PURGE: Severity.HIGH,        # data of a member past their grace period remains
    Action.ARCHIVE: Severity.MEDIUM,    # departed past grace, not archived yet
    Action.CREATE: Severity.MEDIUM,     # a paying member lacks a service
    Action.RESTORE: Severity.MEDIUM,    # a restored member is still locked out
    Action.GROUPS: Severity.MEDIUM,     # shared spaces of the wrong people
    Action.QUOTA: Severity.LOW,
    Action.UPDATE: Severity.LOW,
    Action.WELCOME: Severity.INFO,
}
ACTION_KIND = {
    Action.SUSPEND: "enabled", Action.PURGE: "remnant", Action.ARCHIVE: "remnant",
    Action.CREATE: "missing", Action.RESTORE: "disabled", Action.GROUPS: "groups",
    Action.QUOTA: "quota", Action.UPDATE: "attributes", Action.WELCOME: "welcome",
}
FINDING_SEVERITY = {"info": Severity.INFO, "warning": Severity.MEDIUM, "error": Severity.HIGH}


def fix_command(uid: str, service: str | None = None) -> str:
    base = f"coopctl sync --member {uid}"
    return f"{base} --service {service}" if service and service != ARCHIVE_SERVICE else base


def change_finding(change: ServiceChange) -> AuditFinding:
    severity = ACTION_SEVERITY.get(change.action, Severity.MEDIUM)
    if change.action is Action.GROUPS and change.detail.get("remove"):
        severity = Severity.HIGH  # someone is in a group's space who left the group
    return AuditFinding(severity, change.service, change.uid,
                        ACTION_KIND.get(change.action, str(change.action)),
                        f"a sync would {change.describe()}", fix_command(change.uid))


def connector_finding(finding: Finding) -> AuditFinding:
    orphan = "orphan" in finding.message or "does not know" in finding.message
    return AuditFinding(
        Severity.HIGH if orphan else FINDING_SEVERITY.get(finding.severity, Severity.MEDIUM),
        finding.service, finding.uid, "orphan" if orphan else "observed", finding.message,
        _orphan_fix(finding.service, finding.uid) if orphan else fix_command(finding.uid))


def _orphan_fix(service: str, uid: str) -> str:
    return (f"find out whose {service} account {uid} is; coopctl never removes an account the "
            "directory does not know: add the member to the directory, or remove it by hand")


def orphan_findings(plan: SyncPlan, known: Collection[str],
                    reported: set[tuple[str, str]]) -> Iterable[AuditFinding]:
    """Accounts held by a service for uids the directory does not have at all."""
    for service, sp in plan.services.items():
        if sp.observed is None:
            continue
        listing = getattr(sp.observed, "administrators", None)
        admins = set(listing()) if callable(listing) else set()  # listed apart, not orphans
        for uid in sorted(set(sp.observed.accounts) - set(known) - admins):
            if (service, uid) not in reported:
                yield AuditFinding(Severity.HIGH, service, uid, "orphan",
                                   f"{service} holds an account or data for {uid}, whom the "
                                   "directory does not know", _orphan_fix(service, uid))


def drift_findings(plan: SyncPlan, known: Collection[str]) -> list[AuditFinding]:
    """Every difference between the directory and the services, worst first."""
    out = [change_finding(c) for c in plan.changes()]
    out += [connector_finding(f) for f in plan.all_findings()]
    reported = {(f.area, f.subject) for f in out if f.kind == "orphan"}
    out += orphan_findings(plan, known, reported)
    out.sort(key=lambda f: (-f.severity, f.area, f.subject))
    return out
