"""The sysadmin's member commands, against a real slapd."""

from __future__ import annotations

import json

import ldap3
import pytest

from provisioner.config import load
from tests.conftest import SUFFIX, Coopctl


def member_bind(coopctl: Coopctl, uid: str, password: str) -> bool:
    cfg = load(coopctl.config).directory
    conn = ldap3.Connection(ldap3.Server(cfg.uri), user=f"uid={uid},ou=people,{SUFFIX}",
                            password=password)
    ok = conn.bind()
    conn.unbind()
    return ok


def test_add_show_list_with_password_from_stdin(with_plans: Coopctl) -> None:
    c = with_plans
    out = c("member", "add", "--given-name", "Stéphanie", "--family-name", "Dupré-Noël",
            "--plan", "family", "--group", "board", "--alias", "steph@demo.coop",
            "--password-stdin", input="correct horse battery\n")
    assert "+ member stephanie.dupre-noel" in out.output
    shown = json.loads(c("member", "show", "stephanie.dupre-noel", "--json").output)
    assert shown["mail"] == "stephanie.dupre-noel@demo.coop"
    assert shown["services"] == ["cloud", "mail", "wiki"]
    assert shown["mail_quota"] == 5 * 1024 and shown["cloud_quota"] == 50 * 1024
    assert shown["groups"] == ["board"] and shown["aliases"] == ["steph@demo.coop"]
    assert member_bind(c, "stephanie.dupre-noel", "correct horse battery")
    assert not member_bind(c, "stephanie.dupre-noel", "wrong password!!")
    listed = json.loads(c("member", "list", "--json").output)
    assert [m["uid"] for m in listed] == ["stephanie.dupre-noel"]


def test_password_is_hashed_by_the_server(with_plans: Coopctl, admin: ldap3.Connection) -> None:
    with_plans("member", "add", "--given-name", "Jan", "--family-name", "van der Berg",
               "--plan", "small", "--password-stdin", input="a long secret phrase\n")
    admin.search(f"uid=jan.vanderberg,ou=people,{SUFFIX}", "(objectClass=*)", ldap3.BASE,
                 attributes=["userPassword"])
    stored = admin.response[0]["raw_attributes"]["userPassword"][0]
    assert stored.startswith(b"{SSHA}") and b"a long secret phrase" not in stored


def test_generated_password_is_shown_once_and_works(with_plans: Coopctl) -> None:
    out = with_plans("member", "add", "--given-name", "Zoë", "--family-name", "O'Neill",
                     "--plan", "small", "--generate-password", "--json")
    data = json.loads(out.output)
    assert data["uid"] == "zoe.oneill"
    assert member_bind(with_plans, "zoe.oneill", data["initial_password"])
    shown = with_plans("member", "show", "zoe.oneill", "--json").output
    assert data["initial_password"] not in shown


def test_password_is_never_accepted_as_an_argument(with_plans: Coopctl) -> None:
    result = with_plans("member", "add", "--given-name", "A", "--family-name", "B",
                        "--plan", "small", "--password", "secret123456", ok=False)
    assert result.exit_code != 0 and "No such option" in result.output


def test_no_password_and_no_terminal_is_an_error(with_plans: Coopctl) -> None:
    result = with_plans("member", "add", "--given-name", "A", "--family-name", "Bee",
                        "--plan", "small", ok=False)
    assert result.exit_code == 2 and "--password-stdin" in result.output
    assert json.loads(with_plans("member", "list", "--json").output) == []


def test_short_password_writes_nothing(with_plans: Coopctl) -> None:
    result = with_plans("member", "add", "--given-name", "A", "--family-name", "Bee",
                        "--plan", "small", "--password-stdin", input="short\n", ok=False)
    assert result.exit_code == 2 and "shorter than" in result.output
    assert json.loads(with_plans("member", "list", "--json").output) == []


def add(c: Coopctl, given: str, family: str, *extra: str) -> None:
    c("member", "add", "--given-name", given, "--family-name", family, "--plan", "small",
      "--password-stdin", *extra, input="a long secret phrase\n")


def test_homonyms_get_distinct_uids_and_duplicates_are_refused(with_plans: Coopctl) -> None:
    add(with_plans, "Jan", "Peeters")
    add(with_plans, "Jan", "Peeters")
    uids = [m["uid"] for m in json.loads(with_plans("member", "list", "--json").output)]
    assert uids == ["jan.peeters", "jan.peeters2"]
    dup_uid = with_plans("member", "add", "--given-name", "X", "--family-name", "Y",
                         "--uid", "jan.peeters", "--plan", "small", "--password-stdin",
                         input="a long secret phrase\n", ok=False)
    assert dup_uid.exit_code == 4 and "already taken" in dup_uid.output
    dup_mail = with_plans("member", "add", "--given-name", "X", "--family-name", "Y",
                          "--mail", "jan.peeters@demo.coop", "--plan", "small",
                          "--password-stdin", input="a long secret phrase\n", ok=False)
    assert dup_mail.exit_code == 4 and "already belongs to member jan.peeters" in dup_mail.output


def test_modify_plan_quota_groups_addresses(with_plans: Coopctl) -> None:
    c = with_plans
    add(c, "Chloé", "Lefèvre", "--group", "board")
    c("member", "modify", "chloe.lefevre", "--plan", "family", "--remove-group", "board",
      "--add-group", "wiki-editors", "--add-alias", "chloe@demo.coop",
      "--add-forward", "chloe@example.org", "--cloud-quota", "80 GB")
    m = json.loads(c("member", "show", "chloe.lefevre", "--json").output)
    assert m["plan"] == "family" and m["groups"] == ["wiki-editors"]
    assert m["cloud_quota"] == 80 * 1024 and m["mail_quota"] == 5 * 1024
    assert m["quota_overrides"] == ["cloud"]
    assert m["aliases"] == ["chloe@demo.coop"] and m["forwards"] == ["chloe@example.org"]
    board = json.loads(c("group", "show", "board", "--json").output)
    assert board["members"] == []
    again = c("member", "modify", "chloe.lefevre", "--plan", "family")
    assert "No changes" in again.output
    c("member", "modify", "chloe.lefevre", "--follow-plan-quotas")
    m = json.loads(c("member", "show", "chloe.lefevre", "--json").output)
    assert m["cloud_quota"] == 50 * 1024 and m["quota_overrides"] == []


def test_plan_change_reaches_members_who_follow_it(with_plans: Coopctl) -> None:
    c = with_plans
    add(c, "Amadou", "Diallo")
    add(c, "Inès", "Benali", "--mail-quota", "3 GB")
    out = c("plan", "modify", "small", "--mail-quota", "2 GB")
    assert "~ member amadou.diallo" in out.output and "ines.benali" not in out.output
    assert json.loads(c("member", "show", "amadou.diallo", "--json").output)["mail_quota"] == 2048
    assert json.loads(c("member", "show", "ines.benali", "--json").output)["mail_quota"] == 3072
    assert "No changes" in c("plan", "modify", "small", "--mail-quota", "2 GB").output


def test_suspend_restore_depart_keep_everything(with_plans: Coopctl) -> None:
    c = with_plans
    add(c, "Pieter", "De Smet", "--group", "board")
    assert member_bind(c, "pieter.desmet", "a long secret phrase")
    c("member", "suspend", "pieter.desmet")
    assert not member_bind(c, "pieter.desmet", "a long secret phrase")
    assert "already suspended" in c("member", "suspend", "pieter.desmet").output
    suspended = json.loads(c("member", "list", "--status", "suspended", "--json").output)
    assert [m["uid"] for m in suspended] == ["pieter.desmet"]
    c("member", "restore", "pieter.desmet")
    assert member_bind(c, "pieter.desmet", "a long secret phrase")
    c("member", "depart", "pieter.desmet")
    m = json.loads(c("member", "show", "pieter.desmet", "--json").output)
    assert m["status"] == "departed" and m["departure_date"]
    assert m["groups"] == ["board"] and m["services"]  # nothing deleted here
    assert not member_bind(c, "pieter.desmet", "a long secret phrase")


def test_list_filters(with_plans: Coopctl) -> None:
    c = with_plans
    add(c, "Ann", "Aa", "--group", "board")
    c("member", "add", "--given-name", "Bob", "--family-name", "Bb", "--plan", "family",
      "--service", "mail", "--password-stdin", input="a long secret phrase\n")
    add(c, "Cid", "Cc")
    c("member", "suspend", "cid.cc")

    def uids(*args: str) -> list[str]:
        return [m["uid"] for m in json.loads(c("member", "list", *args, "--json").output)]

    assert uids("--plan", "family") == ["bob.bb"]
    assert uids("--group", "board") == ["ann.aa"]
    assert uids("--service", "cloud") == ["ann.aa", "cid.cc"]
    assert uids("--status", "active", "--service", "mail") == ["ann.aa", "bob.bb"]
    assert "3 member(s)" in c("member", "list").output


@pytest.mark.parametrize(("args", "code", "text"), [
    (["member", "show", "nobody.here"], 3, "no member with uid"),
    (["member", "show", "*"], 2, "not valid"),
    (["member", "show", "a)(uid=*"], 2, "not valid"),
    (["member", "suspend", "x,ou=people"], 2, "not valid"),
    (["member", "list", "--plan", "gold"], 3, "no plan named 'gold'"),
    (["member", "list", "--plan", "gold*"], 2, "not valid"),
    (["member", "list", "--group", "ghosts"], 3, "no group named"),
    (["member", "list", "--status", "dead"], 2, "unknown status"),
    (["member", "list", "--service", "ftp"], 2, "unknown service"),
    (["plan", "show", "gold"], 3, "no plan named"),
    (["group", "show", "x\\2a"], 2, "not valid"),
    (["group", "add-member", "board", "nobody.here"], 3, "no member with uid"),
])
def test_bad_references_and_injection_are_refused(with_plans: Coopctl, args: list[str],
                                                  code: int, text: str) -> None:
    result = with_plans(*args, ok=False)
    assert result.exit_code == code, result.output
    assert text in result.output


@pytest.mark.parametrize(("extra", "text"), [
    (["--plan", "gold"], "no plan named 'gold'"),
    (["--plan", "small", "--group", "ghosts"], "no group named 'ghosts'"),
    (["--plan", "small", "--mail", "not-an-address"], "not valid"),
    (["--plan", "small", "--mail", "x@elsewhere.org"], "not in the coop's domain"),
    (["--plan", "small", "--mail-quota", "5G"], "not understood"),
    (["--plan", "small", "--mail-quota", "500MiB"], "not understood"),
    (["--plan", "small", "--cloud-quota", "-1"], "not understood"),
    (["--plan", "small", "--cloud-quota", "lots"], "not understood"),
    (["--plan", "small", "--uid", "a*"], "not valid"),
    (["--plan", "small", "--service", "ftp"], "unknown service"),
    (["--plan", "small", "--alias", "x@other.org"], "not in the coop's domain"),
])
def test_bad_member_input_writes_nothing(with_plans: Coopctl, extra: list[str],
                                         text: str) -> None:
    result = with_plans("member", "add", "--given-name", "Eve", "--family-name", "Test",
                        *extra, "--password-stdin", input="a long secret phrase\n", ok=False)
    assert result.exit_code != 0 and text in result.output, result.output
    assert json.loads(with_plans("member", "list", "--json").output) == []


@pytest.mark.parametrize("name", ["Eve*", "Eve(", "Eve)", "Eve\\", "Eve,", "Eve+", "Eve\x00",
                                  "E" * 65])
def test_names_with_metacharacters_are_refused(with_plans: Coopctl, name: str) -> None:
    result = with_plans("member", "add", "--given-name", "X", "--family-name", name,
                        "--plan", "small", "--password-stdin", input="a long secret phrase\n",
                        ok=False)
    assert result.exit_code == 2
    assert json.loads(with_plans("member", "list", "--json").output) == []


def test_json_errors(with_plans: Coopctl) -> None:
    result = with_plans("member", "show", "ghost", "--json", ok=False)
    assert result.exit_code == 3
    err = json.loads(result.stderr)
    assert err["kind"] == "NotFound" and "ghost" in err["error"]


def test_dry_run_writes_nothing(with_plans: Coopctl) -> None:
    out = with_plans("member", "add", "--given-name", "Dry", "--family-name", "Run",
                     "--plan", "small", "--dry-run")
    assert "+ member dry.run" in out.output and "nothing written" in out.output
    assert json.loads(with_plans("member", "list", "--json").output) == []


def test_plans_and_groups(with_plans: Coopctl) -> None:
    c = with_plans
    plans = json.loads(c("plan", "list", "--json").output)
    small = next(p for p in plans if p["name"] == "small")
    assert small["label"] == "5 GB cloud, 1 GB mail for 2.50 EUR/month"
    dup = c("plan", "add", "small", ok=False)
    assert dup.exit_code == 4
    bad = c("plan", "add", "gold", "--price", "cheap", ok=False)
    assert bad.exit_code == 2 and "not a number" in bad.output
    add(c, "Ann", "Aa")
    c("group", "add-member", "board", "ann.aa")
    assert json.loads(c("group", "show", "board", "--json").output)["members"] == ["ann.aa"]
    assert "No changes" in c("group", "add-member", "board", "ann.aa").output
    c("group", "remove-member", "board", "ann.aa")
    assert json.loads(c("group", "show", "board", "--json").output)["members"] == []
    assert c("group", "add", "board", ok=False).exit_code == 4
