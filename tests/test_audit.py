"""The audit's logic without servers: severities, orphans, the journal read-only and verified,
the access matrix replayed from the journal, and the three renderings (the JSON against its
schema). The audit against real services is in tests/lab/test_audit.py."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import pytest

from provisioner.audit import access, drift, render
from provisioner.audit.model import AccessRow, AuditFinding, AuditResult, CheckResult, Severity
from provisioner.config import Config
from provisioner.journal import Journal
from provisioner.services.base import Action, Finding, MemberState, ServiceChange
from provisioner.sync import ServicePlan, SyncPlan

SCHEMA = Path(__file__).resolve().parent.parent / "schemas" / "audit-report.schema.json"
COOPCTL = str(Path(sys.executable).with_name("coopctl"))


@dataclass
class Seen:
    """An observation as connectors return it: the uids with an account, and findings."""

    uids: set[str]
    findings: list[Finding] = field(default_factory=list)

    @property
    def accounts(self) -> set[str]:
        return self.uids


def _state(uid: str, status: str = "active") -> MemberState:
    return MemberState(uid=uid, mail=f"{uid}@demo.coop", display_name=uid, language="en",
                       status=status, services=frozenset({"mail", "cloud"}),
                       groups=frozenset({"board"}), mail_quota=1024, cloud_quota=5120)


def _plan() -> SyncPlan:
    cloud = ServicePlan("cloud", changes=[
        ServiceChange("cloud", Action.SUSPEND, "ines"),
        ServiceChange("cloud", Action.QUOTA, "jan", {"from": "1 GB", "to": "2 GB"}),
        ServiceChange("cloud", Action.GROUPS, "zoe", {"add": [], "remove": ["board"]}),
    ], findings=[Finding("cloud", "ghost", "account in the cloud that the directory does not "
                         "know (orphan): left alone")],
        observed=Seen({"ines", "jan", "zoe", "ghost"}))
    mail = ServicePlan("mail", observed=Seen({"ines", "jan", "zoe", "stray"}))
    return SyncPlan(members_read=3,
                    desired={u: _state(u, s) for u, s in
                             (("ines", "suspended"), ("jan", "active"), ("zoe", "active"))},
                    services={"cloud": cloud, "mail": mail})


def test_drift_is_what_a_sync_would_change_plus_orphans_worst_first() -> None:
    findings = drift.drift_findings(_plan(), known={"ines", "jan", "zoe"})
    got = [(f.severity.label, f.area, f.subject, f.kind) for f in findings]
    assert got == [
        ("high", "cloud", "ghost", "orphan"),     # reported by the connector, not twice
        ("high", "cloud", "ines", "enabled"),     # suspended yet enabled
        ("high", "cloud", "zoe", "groups"),       # still in a group she left
        ("high", "mail", "stray", "orphan"),      # found by the audit from observe()
        ("low", "cloud", "jan", "quota"),
    ]
    ines = next(f for f in findings if f.subject == "ines")
    assert ines.fix == "coopctl sync --member ines"
    assert "coopctl never removes" in next(f for f in findings if f.subject == "stray").fix


def test_matrix_now_marks_what_differs_from_the_directory() -> None:
    from provisioner.model import Member

    members = [Member(uid="ines", given_name="I", family_name="B", mail="ines@demo.coop",
                      status="suspended", services=["mail", "cloud"], groups=["board"]),
               Member(uid="nora", given_name="N", family_name="O", mail="nora@demo.coop",
                      services=["mail", "cloud"])]
    plan = _plan()
    plan.desired["nora"] = _state("nora")
    rows = {r.uid: r for r in access.matrix_now(members, plan)}
    assert rows["ines"].cells == {"cloud": "yes", "mail": "yes"}
    assert rows["ines"].expected == {"cloud": "no", "mail": "no"}
    assert rows["ines"].drift("cloud")
    assert rows["nora"].cells == {"cloud": "no", "mail": "no"}
    assert rows["nora"].drift("mail")  # active with mail, but no mailbox


def test_access_as_of_a_past_date_replays_the_journal(tmp_path: Path) -> None:
    book = Journal(tmp_path / "j.sqlite")
    run = book.start_run()
    book.append(run, "cloud", "ana", "create", {"groups": ["board", "crew"]}, True)
    book.append(run, "cloud", "bob", "create", {}, False, "down")
    book.append(run, "cloud", "ana", "groups", {"add": [], "remove": ["crew"]}, True)
    book.close()
    db = sqlite3.connect(tmp_path / "j.sqlite")
    db.execute("UPDATE journal SET at = '2026-05-01T10:00:00+00:00' WHERE id IN (1, 2)")
    db.execute("UPDATE journal SET at = '2026-08-01T10:00:00+00:00' WHERE id = 3")
    db.commit()
    db.close()
    entries = list(Journal(tmp_path / "j.sqlite", readonly=True).entries())
    june = access.matrix_as_of(entries, ["cloud", "mail"], "2026-06-30", {"ana": "active"})
    assert [(r.uid, r.status, r.groups, r.cells) for r in june] == [
        ("ana", "active", ("board", "crew"), {"cloud": "yes", "mail": "?"})]
    assert access.matrix_as_of(entries, ["cloud"], "2026-08-01")[0].groups == ("board",)
    assert access.matrix_as_of(entries, ["cloud"], "2026-04-30") == []


def test_a_read_only_journal_cannot_be_written(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    book = Journal(path)
    book.append(book.start_run(), "mail", "ana", "create", {}, True)
    book.close()
    ro = Journal(path, readonly=True)
    assert ro.verify_chain() is None
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.append("r", "mail", "bob", "create", {}, True)
    assert [e.uid for e in ro.entries()] == ["ana"]


def _result() -> AuditResult:
    return AuditResult(
        coop="demo", generated="2026-11-29T10:00:00+00:00", as_of=None,
        summary={"members": 2, "by_status": {"active": 1, "suspended": 1},
                 "plans": {"small": {"description": "5 GB", "active_members": 1,
                                     "price_cents": 250, "currency": "EUR"}},
                 "monthly_revenue_cents": 250},
        findings=[AuditFinding(Severity.HIGH, "cloud", "ines", "enabled",
                               "a sync would suspend ines <script>", "coopctl sync --member ines")],
        services=["cloud", "mail"],
        access=[AccessRow("ines", "suspended", ("board",), {"cloud": "yes", "mail": "no"},
                          {"cloud": "no", "mail": "no"})],
        checks=[CheckResult("port 25 refuses relaying", "mail", "passed"),
                CheckResult("old TLS refused", "dir", "failed", "dir:636 accepts TLSv1",
                            Severity.HIGH)],
        journal={"records": 3, "verified": True, "first_broken": None},
    )


def test_json_report_follows_its_schema() -> None:
    data = json.loads(render.render_json(_result()))
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    assert data["summary"]["findings"]["high"] == 1
    assert data["summary"]["checks"] == {"passed": 1, "failed": 1, "skipped": 0, "error": 0}


def test_text_and_html_reports_show_the_same_facts() -> None:
    result = _result()
    text = render.render_text(result)
    assert "monthly revenue of active members: 2.50 EUR" in text
    assert "ines" in text and "yes!" in text  # drift marked in the matrix
    assert "infrastructure checks: 1 of 2 passed" in text
    html = render.render_html(result, "fr")
    assert '<html lang="fr">' in html and "Résumé" in html
    assert "&lt;script&gt;" in html and "<script>" not in html  # escaped, no script at all
    assert 'class="drift"' in html
    assert "http" not in html.replace("https://coopctl", "")  # nothing fetched from outside


def test_audit_journal_names_the_record_edited_by_hand(tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    book = Journal(journal)
    run = book.start_run()
    for uid in ("a", "b", "c"):
        book.append(run, "mail", uid, "create", {}, True)
    book.close()
    config = tmp_path / "coopctl.yaml"
    config.write_text(
        "directory: {uri: 'ldapi:///', base_dn: 'dc=demo,dc=coop', bind_dn: 'cn=x'}\n"
        "mail: {domain: demo.coop}\n"
        f"sync: {{journal: '{journal}', state_dir: '{tmp_path}/state'}}\n")
    ok = subprocess.run([COOPCTL, "--config", str(config), "audit", "journal"],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "3 record(s), hash chain verified" in ok.stdout
    db = sqlite3.connect(journal)
    db.execute("UPDATE journal SET detail = '{\"quota\": \"99 GB\"}' WHERE id = 2")
    db.commit()
    db.close()
    bad = subprocess.run([COOPCTL, "--config", str(config), "audit", "journal"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 9
    assert "journal record 2 of 3" in bad.stderr and "Hint:" in bad.stderr
    assert "Traceback" not in bad.stderr


def _config(extra: dict) -> Config:
    from provisioner.config import parse
    return parse({
        "coop": "demo",
        "directory": {"uri": "ldap://dir.demo.coop", "tls": "starttls",
                      "base_dn": "dc=demo,dc=coop",
                      "bind_dn": "cn=coopctl,ou=services,dc=demo,dc=coop",
                      "bind_secret_file": "/secrets/ldap_coopctl"},
        "mail": {"domain": "demo.coop"},
        "services": {"sso": {"url": "https://dir:8443", "realm": "demo", "client_id": "coopctl",
                             "client_secret_file": "/secrets/keycloak_coopctl_client"},
                     "pads": {"url": "https://apps", "api_key_file": "/secrets/etherpad"}},
        **extra,
    })


def test_the_audit_reads_with_its_own_read_only_accounts() -> None:
    from provisioner.audit.run import read_only_config
    config = _config({"audit": {
        "directory": {"bind_dn": "cn=audit,ou=services,dc=demo,dc=coop",
                      "bind_secret_file": "/secrets/ldap_audit"},
        "services": {"sso": {"client_id": "coopctl-audit",
                             "client_secret_file": "/secrets/keycloak_audit_client"}}}})
    reader, used = read_only_config(config)
    assert reader.directory.bind_dn == "cn=audit,ou=services,dc=demo,dc=coop"
    assert reader.directory.bind_secret_file == "/secrets/ldap_audit"
    assert reader.directory.uri == config.directory.uri  # same server, same TLS
    assert reader.directory.ca_file == config.directory.ca_file
    assert reader.services["sso"]["client_id"] == "coopctl-audit"
    assert reader.services["sso"]["sync_client_id"] == "coopctl"  # named in the SSO's admins
    assert "sync_client_id" not in config.services["sso"]
    assert reader.services["sso"]["client_secret_file"].endswith("keycloak_audit_client")
    assert reader.services["pads"] == config.services["pads"]
    assert "read-only" in used["directory"] and "view roles only" in used["sso"]
    assert "not read-only in effect" in used["sso"]  # Keycloak's view-clients shows secrets
    assert "one key for everything" in used["pads"]  # said, not hidden


def test_when_coopctl_signs_with_a_key_the_audit_client_is_read_only_in_effect() -> None:
    """coopctl's client with a key: no secret of coopctl's for view-clients to reveal, and the
    audit's own key replaces coopctl's (never both in the settings the audit uses)."""
    from provisioner.audit.run import read_only_config
    config = _config({"audit": {"services": {"sso": {
        "client_id": "coopctl-audit", "client_key_file": "/secrets/keycloak_audit_client.pem"}}}})
    sso = {**config.services["sso"], "client_key_file": "/secrets/keycloak_coopctl_client.pem"}
    del sso["client_secret_file"]
    config.services["sso"] = sso
    reader, used = read_only_config(config)
    assert reader.services["sso"]["client_key_file"].endswith("keycloak_audit_client.pem")
    assert "client_secret_file" not in reader.services["sso"]
    assert "not read-only in effect" not in used["sso"]
    assert "never holds" in used["sso"]
    # a secret-holding coopctl client and an audit client with a key: coopctl's secret is
    # neither used by the audit nor hidden from the report
    config.services["sso"] = {**sso, "client_secret_file": "/secrets/keycloak_coopctl_client"}
    del config.services["sso"]["client_key_file"]
    reader, used = read_only_config(config)
    assert "client_secret_file" not in reader.services["sso"]
    assert "not read-only in effect" in used["sso"]


def test_without_audit_accounts_the_report_says_it_read_with_writing_ones() -> None:
    from provisioner.audit.run import read_only_config
    reader, used = read_only_config(_config({}))
    assert reader.directory.bind_dn.startswith("cn=coopctl")
    assert "can write" in used["directory"] and "can write" in used["sso"]


def test_administrators_name_the_wiki_superusers_from_their_directory_group() -> None:
    from provisioner.audit.run import administrators
    from provisioner.model import Member
    plan = _plan()
    plan.services["wiki"] = ServicePlan("wiki", observed=Seen(set()))
    config = _config({})
    config.services["wiki"] = {"admin_group": "wikiadmins"}
    members = [Member("ana", "Ana", "P", "ana@demo.coop", groups=["wikiadmins", "board"]),
               Member("bob", "Bob", "Q", "bob@demo.coop", groups=[])]
    admins = administrators(config, plan, members)
    assert admins["wiki"] == ["ana (group wikiadmins: superuser)"]
    assert admins["directory"][0].startswith("cn=coopctl,ou=services")


def test_sso_administrators_are_fetched_only_when_the_audit_asks_and_once() -> None:
    from provisioner.services.sso import SsoObservation
    calls = []
    seen = SsoObservation(fetch_administrators=lambda: calls.append(1) or ["x (user; y)"])
    assert seen.accounts == set() and seen.access("ana") == "?"  # what a sync uses
    assert calls == []
    assert seen.administrators() == ["x (user; y)"] == seen.administrators()
    assert calls == [1]
    assert SsoObservation().administrators() == []


def test_sso_admin_roles_reached_through_composite_realm_roles() -> None:
    from provisioner.services.sso import admin_realm_roles
    composites = {
        "ops": [(True, "manage-users"), (True, "view-users")],
        "chiefs": [(False, "ops"), (True, "impersonation")],
        "top": [(False, "chiefs")],
        "default-roles-demo": [(False, "offline_access"), (True, "view-users")],
        "loop-a": [(False, "loop-b")], "loop-b": [(False, "loop-a"), (True, "realm-admin")],
    }
    assert admin_realm_roles(composites) == {
        "ops": {"manage-users"}, "chiefs": {"manage-users", "impersonation"},
        "top": {"manage-users", "impersonation"},
        "loop-a": {"realm-admin"}, "loop-b": {"realm-admin"}}


def test_sso_administrators_are_labelled_by_kind_and_role() -> None:
    from provisioner.services.sso import Holder, admin_entries
    own = {"coopctl": "coopctl's own client (coopctl sync)",
           "coopctl-audit": "coopctl's audit client"}
    entries = admin_entries([
        Holder("user", "service-account-coopctl", {"manage-users", "view-clients"}),
        Holder("user", "service-account-coopctl-audit", {"view-clients"}),
        Holder("user", "service-account-billing", {"manage-realm"}),
        Holder("user", "ana", {"realm-admin"}),
        Holder("group", "/sso-admins", {"manage-users via realm role ops"}, ["bob", "eve"]),
        Holder("group", "/empty", {"impersonation"}, []),
        Holder("group", "/big", {"manage-users"}, ["a", "b"], more=True),
    ], own, everyone=["manage-users via realm role default-roles-demo"])
    assert entries == [
        "every user of the realm (manage-users via realm role default-roles-demo: in the "
        "realm's default roles)",
        "ana (user; realm-admin)",
        "group /big (manage-users; members: a, b, ...)",
        "group /empty (impersonation; no members)",
        "group /sso-admins (manage-users via realm role ops; members: bob, eve)",
        "service-account-billing (service account of client billing; manage-realm)",
        "service-account-coopctl (service account of client coopctl: coopctl's own client "
        "(coopctl sync); manage-users, view-clients)",
        "service-account-coopctl-audit (service account of client coopctl-audit: coopctl's "
        "audit client; view-clients)",
    ]


def test_sso_administrators_are_not_orphans() -> None:
    """Entries are labelled lines, not uids: a session user is still judged on its own."""
    from provisioner.services.sso import SsoObservation, UserSessions
    seen = SsoObservation(sessions={"stranger": UserSessions("id1")},
                          fetch_administrators=lambda: ["ana (user; realm-admin)"])
    plan = _plan()
    plan.services["sso"] = ServicePlan("sso", observed=seen)
    found = drift.drift_findings(plan, known={"ana"})
    assert ("sso", "stranger", "orphan") in {(f.area, f.subject, f.kind) for f in found}


def test_access_matrix_reads_each_service_accounts_once() -> None:
    """An observation may build `accounts` on each access (the wiki's, from its rules): at
    10,000 members, once per member made the audit quadratic (48 s instead of 4.5 s)."""
    from provisioner.model import Member

    class Counting(Seen):
        reads = 0

        @property
        def accounts(self) -> set[str]:
            Counting.reads += 1
            return self.uids

    plan = _plan()
    plan.services["wiki"] = ServicePlan("wiki", observed=Counting({"jan"}))
    members = [Member(u, u, "X", f"{u}@demo.coop") for u in ("ines", "jan", "zoe")]
    rows = access.matrix_now(members, plan)
    assert [r.cells["wiki"] for r in rows] == ["no", "yes", "no"]
    assert Counting.reads == 1
