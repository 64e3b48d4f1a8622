"""The audit's three readings: text for the terminal, JSON for machines, HTML for the board.

The HTML report is one self-contained file (inline CSS, no script, no external resource) that a
non-technical board member can open offline: a summary first, then the findings by severity,
the access matrix, the infrastructure checks and the journal's verification. Labels exist in
French and English; the facts themselves (member names, commands) are not translated.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2

from provisioner.audit.model import AuditResult, Severity

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "audit"
LANGUAGES = ("en", "fr")

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Audit of {coop}", "generated": "Generated", "as_of": "Access as of",
        "summary": "Summary", "members": "Members", "by_status": "By status",
        "revenue": "Monthly revenue of active members", "plans": "Plans",
        "plan": "Plan", "active_members": "Active members", "price": "Price per month",
        "findings": "Findings", "no_findings": "No finding: every service matches the directory.",
        "severity": "Severity", "area": "Where", "subject": "Who / what", "message": "What",
        "fix": "How to fix", "access": "Who has access to what", "member": "Member",
        "status": "Status", "groups": "Groups", "checks": "Infrastructure checks",
        "no_checks": "No infrastructure check was run.", "check": "Check", "host": "Host",
        "outcome": "Outcome", "journal": "Journal", "records": "Records",
        "chain_ok": "The hash chain of every record verifies: nothing was edited.",
        "chain_broken": "The hash chain breaks at record {record}: the journal was edited.",
        "unavailable": "Services that could not be observed", "verdict_clean": "Clean",
        "verdict_findings": "{count} finding(s) need attention",
        "legend": "yes: has a working account; disabled: kept but locked; no: none; "
                  "?: unknown; ! marks a difference with the directory",
        "administrators": "Administrators",
        "credentials": "How this audit read each part",
    },
    "fr": {
        "title": "Audit de {coop}", "generated": "Produit le", "as_of": "Accès au",
        "summary": "Résumé", "members": "Membres", "by_status": "Par statut",
        "revenue": "Recette mensuelle des membres actifs", "plans": "Formules",
        "plan": "Formule", "active_members": "Membres actifs", "price": "Prix par mois",
        "findings": "Constats",
        "no_findings": "Aucun constat : chaque service correspond à l'annuaire.",
        "severity": "Gravité", "area": "Où", "subject": "Qui / quoi", "message": "Quoi",
        "fix": "Comment corriger", "access": "Qui a accès à quoi", "member": "Membre",
        "status": "Statut", "groups": "Groupes", "checks": "Contrôles de l'infrastructure",
        "no_checks": "Aucun contrôle de l'infrastructure n'a été lancé.", "check": "Contrôle",
        "host": "Machine", "outcome": "Résultat", "journal": "Journal",
        "records": "Enregistrements",
        "chain_ok": "La chaîne d'empreintes de chaque enregistrement est intacte : rien n'a "
                    "été modifié.",
        "chain_broken": "La chaîne d'empreintes est rompue à l'enregistrement {record} : le "
                        "journal a été modifié.",
        "unavailable": "Services qui n'ont pas pu être observés", "verdict_clean": "Conforme",
        "verdict_findings": "{count} constat(s) à traiter",
        "legend": "yes : compte utilisable ; disabled : conservé mais bloqué ; no : aucun ; "
                  "? : inconnu ; ! signale un écart avec l'annuaire",
        "administrators": "Administrateurs",
        "credentials": "Comment cet audit a lu chaque partie",
    },
}


def render_json(result: AuditResult) -> str:
    return json.dumps(result.to_dict(), indent=2, ensure_ascii=False)


def _money(cents: int | None, currency: str = "EUR") -> str:
    if cents is None:
        return "-"
    return f"{cents // 100}.{cents % 100:02d} {currency}"


def render_text(result: AuditResult) -> str:
    s = result.summary
    lines = [f"Audit of {result.coop} ({result.generated})"]
    lines.append(f"members: {s['members']} ("
                 + ", ".join(f"{k} {v}" for k, v in s["by_status"].items()) + ")")
    lines.append(f"monthly revenue of active members: {_money(s['monthly_revenue_cents'])}")
    counts = result.counts()
    lines.append("findings: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
                 if result.findings else "findings: none, every service matches the directory")
    for f in result.findings:
        lines.append(f"  {f.severity.label:<8} {f.area:<14} {f.subject}: {f.message}")
        lines.append(f"  {'':<8} fix: {f.fix}")
    lines.append("")
    title = f"Access as of {result.as_of}" if result.as_of else "Access (observed now)"
    lines.append(f"{title}:")
    lines.append(f"  {'MEMBER':<24} {'STATUS':<10} "
                 + " ".join(f"{svc:<9}" for svc in result.services))
    for row in result.access:
        cells = [(row.cells.get(svc, "?") + ("!" if row.drift(svc) else "")) for svc
                 in result.services]
        lines.append(f"  {row.uid:<24} {row.status:<10} " + " ".join(f"{c:<9}" for c in cells))
    if result.checks:
        passed = sum(1 for c in result.checks if c.outcome == "passed")
        lines.append("")
        lines.append(f"infrastructure checks: {passed} of {len(result.checks)} passed")
        for c in result.checks:
            if c.outcome != "passed":
                lines.append(f"  {c.outcome:<7} {c.host:<10} {c.name}: {c.message}")
    if result.credentials:
        lines.append("")
        lines.append("read with:")
        for part, how in result.credentials.items():
            lines.append(f"  {part:<10} {how}")
    j = result.journal
    lines.append("")
    lines.append(f"journal: {j.get('records', 0)} record(s), "
                 + ("hash chain verified" if j.get("verified")
                    else f"hash chain BROKEN at record {j.get('first_broken')}"))
    return "\n".join(lines)


def render_html(result: AuditResult, language: str = "en") -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined)
    template = env.get_template("report.html.j2")
    labels = LABELS[language if language in LABELS else "en"]
    worst = result.worst()
    return template.render(
        r=result, t=labels, lang=language, counts=result.counts(), money=_money,
        verdict_class=("clean" if not result.findings
                       else worst.label if worst is not None else "info"),
        severities=[s.label for s in sorted(Severity, reverse=True)],
    )
