"""What an audit produces: findings with a severity and a fix, the access matrix, the checks.

Everything here is plain data with a `to_dict()` that follows `schemas/audit-report.schema.json`,
so the three renderings (text, JSON, HTML) show the same facts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Severity(enum.IntEnum):
    """Ordered, so that `--fail-on medium` means "medium or worse"."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r}") from None


@dataclass(frozen=True)
class AuditFinding:
    """One fact that differs from what the directory (or a safe configuration) says."""

    severity: Severity
    area: str          # a service (mail, cloud...), "directory", "journal" or "infrastructure"
    subject: str       # a member's uid, a host, a journal record
    kind: str          # missing, orphan, enabled, quota, groups, remnant, check...
    message: str
    fix: str           # the command (or action) that fixes it

    def to_dict(self) -> dict[str, Any]:
        return {"severity": self.severity.label, "area": self.area, "subject": self.subject,
                "kind": self.kind, "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class AccessRow:
    """One member's access to each service: observed state and what the directory says."""

    uid: str
    status: str
    groups: tuple[str, ...]
    cells: dict[str, str]      # service -> observed: "yes", "disabled", "no", "?" (unknown)
    expected: dict[str, str]   # service -> what the directory implies ("yes" / "no")

    def drift(self, service: str) -> bool:
        seen = self.cells.get(service, "?")
        return seen != "?" and (seen == "yes") != (self.expected.get(service) == "yes")

    def to_dict(self) -> dict[str, Any]:
        return {"uid": self.uid, "status": self.status, "groups": list(self.groups),
                "observed": self.cells, "expected": self.expected}


@dataclass(frozen=True)
class CheckResult:
    """One infrastructure check (a testinfra test) on one host."""

    name: str
    host: str
    outcome: str       # passed | failed | skipped | error
    message: str = ""
    severity: Severity = Severity.HIGH

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "outcome": self.outcome,
                "message": self.message, "severity": self.severity.label}


@dataclass
class AuditResult:
    """The whole audit; `to_dict()` is the JSON report."""

    coop: str
    generated: str
    as_of: str | None
    summary: dict[str, Any]
    findings: list[AuditFinding] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    access: list[AccessRow] = field(default_factory=list)
    administrators: dict[str, list[str]] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    journal: dict[str, Any] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out = {s.label: 0 for s in Severity}
        for f in self.findings:
            out[f.severity.label] += 1
        return out

    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "coopctl-audit/1",
            "coop": self.coop,
            "generated": self.generated,
            "as_of": self.as_of,
            "summary": {**self.summary, "findings": self.counts(),
                        "checks": _check_counts(self.checks)},
            "findings": [f.to_dict() for f in self.findings],
            "services": self.services,
            "access": [r.to_dict() for r in self.access],
            "administrators": self.administrators,
            "checks": [c.to_dict() for c in self.checks],
            "journal": self.journal,
            "unavailable": self.unavailable,
            "credentials": self.credentials,
        }


def _check_counts(checks: list[CheckResult]) -> dict[str, int]:
    out = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    for c in checks:
        out[c.outcome] = out.get(c.outcome, 0) + 1
    return out
