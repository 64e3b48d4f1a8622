"""CSV import/export: all-or-nothing, line-numbered errors, idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Coopctl

HEADER = "member_number,given_name,family_name,plan,services,groups,aliases,mail_quota\n"
GOOD = HEADER + (
    "M-1,Stéphanie,Dupré-Noël,family,,board,steph@demo.coop,\n"
    "M-2,Jan,van der Berg,small,,,,2 GB\n"
    "M-3,Zoë,O'Neill,small,mail,wiki-editors,,\n"
)


def write(tmp_path: Path, text: str | bytes, name: str = "members.csv") -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def members(c: Coopctl) -> list[dict]:
    return json.loads(c("member", "list", "--json").output)


def test_import_creates_then_changes_nothing(with_plans: Coopctl, tmp_path: Path) -> None:
    c = with_plans
    path = write(tmp_path, GOOD)
    dry = c("member", "import", path, "--dry-run")
    assert "3 to create" in dry.output and members(c) == []
    out = c("member", "import", path)
    assert "Applied: 3 created" in out.output
    found = {m["uid"]: m for m in members(c)}
    assert set(found) == {"stephanie.dupre-noel", "jan.vanderberg", "zoe.oneill"}
    assert found["jan.vanderberg"]["mail_quota"] == 2048
    assert found["jan.vanderberg"]["quota_overrides"] == ["mail"]
    assert found["zoe.oneill"]["services"] == ["mail"]
    assert found["stephanie.dupre-noel"]["groups"] == ["board"]
    assert "No changes" in c("member", "import", path).output


def test_export_round_trip_is_stable(with_plans: Coopctl, tmp_path: Path) -> None:
    c = with_plans
    c("member", "import", write(tmp_path, GOOD))
    c("member", "suspend", "zoe.oneill")
    exported = c("member", "export").output
    before = members(c)
    assert "No changes" in c("member", "import", write(tmp_path, exported, "x.csv")).output
    assert members(c) == before
    # an edited export changes exactly what was edited
    edited = exported.replace(",suspended,", ",active,")
    out = c("member", "import", write(tmp_path, edited, "y.csv"))
    assert "status: suspended -> active" in out.output and "1 changed" in out.output


def test_changed_rows_update_members_by_member_number(with_plans: Coopctl,
                                                     tmp_path: Path) -> None:
    c = with_plans
    c("member", "import", write(tmp_path, GOOD))
    moved = GOOD.replace("M-2,Jan,van der Berg,small,,,,2 GB",
                         "M-2,Jan,van der Berg,family,,,,plan")
    out = c("member", "import", write(tmp_path, moved, "m.csv"))
    assert "~ member jan.vanderberg" in out.output and "plan: small -> family" in out.output
    jan = next(m for m in members(c) if m["uid"] == "jan.vanderberg")
    assert jan["mail_quota"] == 5 * 1024 and jan["quota_overrides"] == []


def test_every_bad_row_is_reported_and_nothing_is_applied(with_plans: Coopctl,
                                                         tmp_path: Path) -> None:
    c = with_plans
    bad = GOOD + (
        "M-4,Eve,Bad*Name,small,,,,\n"
        "M-5,Ann,Other,gold,,,,\n"
        "M-6,Bob,Quota,small,,,,5G\n"
        "M-7,Cid,Group,small,,ghosts,,\n"
        "M-1,Dup,Number,small,,,,\n"
        "M-8,Al,Ias,small,,,steph@demo.coop,\n"
        "M-9,Too,Few\n"
    )
    result = c("member", "import", write(tmp_path, bad), ok=False)
    assert result.exit_code == 2
    for line in ("line 5:", "line 6:", "line 7:", "line 8:", "line 9:", "line 10:", "line 11:"):
        assert line in result.output, result.output
    assert "nothing was imported" in result.output
    assert members(c) == []


def test_conflict_with_the_directory_is_caught_before_writing(with_plans: Coopctl,
                                                             tmp_path: Path) -> None:
    c = with_plans
    c("member", "add", "--given-name", "Old", "--family-name", "Timer", "--plan", "small",
      "--alias", "steph@demo.coop", "--password-stdin", input="a long secret phrase\n")
    result = c("member", "import", write(tmp_path, GOOD), ok=False)
    assert result.exit_code == 2 and "line 2: steph@demo.coop already belongs to member old.timer" \
        in result.output
    assert [m["uid"] for m in members(c)] == ["old.timer"]


@pytest.mark.parametrize(("content", "text"), [
    ("given_name,family_name\nA,B\n", "missing column(s): plan"),
    ("uid,given_name,family_name,plan,colour\n", "unknown column(s): colour"),
    ("given_name,family_name,plan\nA,B,small\n", "uid or member_number"),
    ("uid,uid,given_name,family_name,plan\n", "repeated column(s): uid"),
    ("", "is empty"),
    (b"member_number,given_name,family_name,plan\nM-1,Andr\xe9,Latin1,small\n",
     "not UTF-8 (line 2"),
    (b"member_number,given_name,family_name,plan\nM-1,A\x00,B,small\n", "NUL"),
])
def test_bad_files(with_plans: Coopctl, tmp_path: Path, content: str | bytes, text: str) -> None:
    result = with_plans("member", "import", write(tmp_path, content), ok=False)
    assert result.exit_code == 2 and text in result.output, result.output
    assert members(with_plans) == []


def test_duplicate_rows_are_errors(with_plans: Coopctl, tmp_path: Path) -> None:
    dup = GOOD + "M-3,Zoë,O'Neill,small,mail,wiki-editors,,\n"
    result = with_plans("member", "import", write(tmp_path, dup), ok=False)
    assert "line 5: duplicates line 4" in result.output
    assert members(with_plans) == []


def test_semicolon_csv_from_a_spreadsheet(with_plans: Coopctl, tmp_path: Path) -> None:
    text = "\ufeffmember_number;given_name;family_name;plan\nM-1;Inès;Benali;small\n"
    with_plans("member", "import", write(tmp_path, text))
    assert [m["uid"] for m in members(with_plans)] == ["ines.benali"]


def test_initial_passwords_file(with_plans: Coopctl, tmp_path: Path) -> None:
    out_file = tmp_path / "passwords.csv"
    with_plans("member", "import", write(tmp_path, GOOD), "--initial-passwords", str(out_file))
    assert oct(out_file.stat().st_mode & 0o777) == "0o600"
    rows = out_file.read_text().splitlines()[1:]
    assert len(rows) == 3
    from tests.test_members import member_bind

    uid, password = rows[0].split(",")
    assert member_bind(with_plans, uid, password)


def test_each_row_needs_a_uid_or_a_member_number(with_plans: Coopctl, tmp_path: Path) -> None:
    text = "uid,member_number,given_name,family_name,plan\n,,Karel,Noid,small\n"
    out = with_plans("member", "import", write(tmp_path, text), ok=False)
    assert out.exit_code != 0 and "line 2: neither uid nor member_number" in out.output
    assert members(with_plans) == []


def test_a_member_number_is_never_given_twice(with_plans: Coopctl, tmp_path: Path) -> None:
    c = with_plans
    c("member", "import", write(tmp_path, GOOD))
    text = "uid,member_number,given_name,family_name,plan\nnew.person,M-2,New,Person,small\n"
    out = c("member", "import", write(tmp_path, text, "dup.csv"), ok=False)
    assert out.exit_code != 0
    assert "line 2: member number M-2 belongs to jan.vanderberg" in out.output
    assert "new.person" not in {m["uid"] for m in members(c)}


def test_export_file_is_readable_by_its_owner_only(with_plans: Coopctl, tmp_path: Path) -> None:
    c = with_plans
    c("member", "import", write(tmp_path, GOOD))
    target = tmp_path / "members-export.csv"
    target.write_text("old")
    target.chmod(0o644)
    c("member", "export", "--output", str(target))
    assert target.stat().st_mode & 0o777 == 0o600
    assert "jan.vanderberg" in target.read_text()


NO_QUOTAS = ("member_number,given_name,family_name,plan\n"
             "M-1,Jan,van der Berg,small\nM-2,Zoë,O'Neill,small\n")


def show(c: Coopctl, uid: str) -> dict:
    return json.loads(c("member", "show", uid, "--json").output)


def test_hand_set_quotas_survive_every_later_import(with_plans: Coopctl, tmp_path: Path) -> None:
    """The ERP knows nothing of a quota the sysadmin set by hand: its imports keep it."""
    c = with_plans
    c("member", "import", write(tmp_path, NO_QUOTAS))
    c("member", "modify", "jan.vanderberg", "--mail-quota", "2 GB", "--cloud-quota", "20 GB")
    # no quota column at all
    assert "No changes" in c("member", "import", write(tmp_path, NO_QUOTAS, "a.csv")).output
    # empty quota cells, and a change elsewhere in the same row
    empty = ("member_number,given_name,family_name,plan,mail_quota,cloud_quota\n"
             "M-1,Jan,van der Berg,family,,\nM-2,Zoë,O'Neill,small,,\n")
    out = c("member", "import", write(tmp_path, empty, "b.csv")).output
    assert "plan: small -> family" in out and "quota" not in out, out
    jan = show(c, "jan.vanderberg")
    assert (jan["mail_quota"], jan["cloud_quota"]) == (2048, 20 * 1024)
    assert jan["quota_overrides"] == ["cloud", "mail"]
    # a member who follows the plan still follows it (family: 5 GB mail, 50 GB cloud)
    c("member", "import", write(tmp_path, empty.replace("M-2,Zoë,O'Neill,small",
                                                        "M-2,Zoë,O'Neill,family"), "c.csv"))
    zoe = show(c, "zoe.oneill")
    assert (zoe["mail_quota"], zoe["quota_overrides"]) == (5 * 1024, [])


def test_the_word_plan_puts_a_quota_back_on_the_plan(with_plans: Coopctl,
                                                     tmp_path: Path) -> None:
    c = with_plans
    c("member", "import", write(tmp_path, NO_QUOTAS))
    c("member", "modify", "jan.vanderberg", "--mail-quota", "2 GB", "--cloud-quota", "20 GB")
    text = ("member_number,given_name,family_name,plan,mail_quota,cloud_quota\n"
            "M-1,Jan,van der Berg,small,Plan,\n")
    out = c("member", "import", write(tmp_path, text)).output
    assert "mail quota: 2 GB -> 1 GB" in out and "cloud quota" not in out, out
    jan = show(c, "jan.vanderberg")
    assert (jan["mail_quota"], jan["cloud_quota"]) == (1024, 20 * 1024)
    assert jan["quota_overrides"] == ["cloud"]
    # the same word on the command line
    c("member", "modify", "jan.vanderberg", "--cloud-quota", "plan")
    jan = show(c, "jan.vanderberg")
    assert (jan["cloud_quota"], jan["quota_overrides"]) == (5 * 1024, [])
    # and a plan change now reaches both quotas
    c("plan", "modify", "small", "--mail-quota", "3 GB")
    assert show(c, "jan.vanderberg")["mail_quota"] == 3 * 1024


def test_a_bad_quota_cell_names_the_word_plan(with_plans: Coopctl, tmp_path: Path) -> None:
    text = "member_number,given_name,family_name,plan,mail_quota\nM-1,Jan,Peeters,small,plans\n"
    out = with_plans("member", "import", write(tmp_path, text), ok=False)
    assert out.exit_code == 2 and "line 2: the mail quota 'plans' is not understood" in out.output
    assert members(with_plans) == []


@pytest.mark.parametrize("target", ["missing/pw.csv", "exists.csv", "exists.csv/pw.csv"])
def test_the_passwords_file_is_checked_before_anything_is_written(
        with_plans: Coopctl, tmp_path: Path, target: str) -> None:
    (tmp_path / "exists.csv").write_text("keep me\n")
    out = with_plans("member", "import", write(tmp_path, GOOD), "--initial-passwords",
                     str(tmp_path / target), ok=False)
    assert out.exit_code == 2, out.output
    assert out.output.startswith("Error: ") and "Hint: " in out.output, out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)
    assert members(with_plans) == []
    assert (tmp_path / "exists.csv").read_text() == "keep me\n"


def test_names_in_other_scripts_become_whole_logins(with_plans: Coopctl, tmp_path: Path) -> None:
    text = ("member_number,given_name,family_name,plan\n"
            "M-1,Ivan,Петров,small\nM-2,Jan,ا,small\n")
    out = with_plans("member", "import", write(tmp_path, text), ok=False)
    assert out.exit_code == 2 and "line 3: cannot spell 'ا' in plain ASCII" in out.output
    assert members(with_plans) == []
    with_plans("member", "import", write(tmp_path, text.replace("M-2,Jan,ا,small\n", ""), "b.csv"))
    assert [(m["uid"], m["family_name"]) for m in members(with_plans)] == [
        ("ivan.petrov", "Петров")]


def test_json_output_of_an_import(with_plans: Coopctl, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    dry = json.loads(with_plans("member", "import", path, "--dry-run", "--json").output)
    assert dry["dry_run"] and dry["summary"]["create"] == 3 and members(with_plans) == []
    assert [c["name"] for c in dry["changes"]] == ["stephanie.dupre-noel", "jan.vanderberg",
                                                   "zoe.oneill"]
    done = json.loads(with_plans("member", "import", path, "--json").output)
    assert done["summary"] == {"create": 3, "change": 0, "remove": 0}
    assert done["new"] == ["stephanie.dupre-noel", "jan.vanderberg", "zoe.oneill"]
    again = json.loads(with_plans("member", "import", path, "--json").output)
    assert again["changes"] == [] and again["summary"]["create"] == 0
