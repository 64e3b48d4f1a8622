"""`coopctl audit`: prove that the servers are in the state the directory says.

Strictly read-only. Drift comes from the sync's own connectors (their bulk `observe` and pure
`plan`: whatever a sync would change is drift), the access matrix from the same observation
(and, for a past date, from the journal), the journal's hash chain is verified, and the
infrastructure checks are testinfra tests (`provisioner/audit/checks/`) run against the
inventory's hosts. `logins` keeps the demo's first per-login probe.
"""

from provisioner.audit.logins import (  # the demo's login probe (kept for it)
    AuditReport,
    audit_mail,
    audit_pads,
    audit_sso,
    directory_summary,
    expected_access,
    mail_logins,
)

__all__ = ["AuditReport", "audit_mail", "audit_pads", "audit_sso", "directory_summary",
           "expected_access", "mail_logins"]
