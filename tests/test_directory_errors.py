"""What the directory server refuses in the middle of a pipelined transaction, and a CA file
that is not there: an error that names the entry (and the CSV line), and nothing written."""

from __future__ import annotations

from pathlib import Path

import ldap3
import pytest
import yaml
from click.testing import CliRunner

from provisioner.cli import cli
from provisioner.config import load
from provisioner.directory import Directory
from provisioner.errors import Conflict, CoopError
from provisioner.importrun import ImportJournal, ImportRun, file_digest
from provisioner.imports import plan_import
from provisioner.ldapconn import Transaction, connect
from tests.conftest import SUFFIX, Coopctl

PEOPLE = f"ou=people,{SUFFIX}"


def person(uid: str) -> dict[str, object]:
    return {"objectClass": ["top", "inetOrgPerson"], "uid": uid, "cn": uid, "sn": uid}


def count_people(admin: ldap3.Connection) -> int:
    admin.search(PEOPLE, "(objectClass=inetOrgPerson)", ldap3.LEVEL, attributes=["1.1"],
                 paged_size=5000)
    return len(admin.response)


@pytest.mark.parametrize("bad_dn", [f"uid=bad+,{PEOPLE}", "uid=bad,dc=elsewhere"])
def test_an_operation_refused_at_once_names_its_label_and_writes_nothing(
        coop: Path, admin: ldap3.Connection, bad_dn: str) -> None:
    """Refused when queued (a DN the server cannot parse or does not hold), 700 operations
    into a pipelined batch of 1,200: the batch's other answers are read, the connection stays
    usable, the transaction is abandoned."""
    config = load(coop)
    conn = connect(config.directory)
    tx = Transaction()
    for n in range(1200):
        tx.add(f"uid=p{n},{PEOPLE}", person(f"p{n}"), f"line {n + 2} (p{n})")
        if n == 700:
            tx.add(bad_dn, person("bad"), "line 999 (bad)")
    with pytest.raises(CoopError) as caught:
        tx.commit(conn)
    assert caught.value.message.startswith(f"line 999 (bad): adding {bad_dn}: the directory "
                                           "refused it")
    assert "nothing was written" in caught.value.message and caught.value.hint
    assert count_people(admin) == 0
    # the connection is still in step: a read and another transaction work
    assert Directory(config, conn).members() == []
    ok = Transaction()
    ok.add(f"uid=fine,{PEOPLE}", person("fine"))
    ok.commit(conn)
    assert count_people(admin) == 1
    conn.unbind()


def test_a_refusal_at_commit_names_the_csv_line(with_plans: Coopctl, admin: ldap3.Connection,
                                                tmp_path: Path) -> None:
    """Another writer creates an entry between the plan and the commit: the server refuses
    the whole transaction at EndTxn and names the operation; the error names the CSV line."""
    config = load(with_plans.config)
    # Debian 12's slapd (2.5.13) does not unwind an attribute's registration in the database
    # when the transaction that used it first is aborted: every entry written after that
    # with the attribute is unreadable ("mdb_entry_decode: attribute index 21 not
    # recognized"), even after a restart. Use every member attribute once, outside any
    # transaction, so that this test's refused transaction cannot register one.
    with_plans("member", "add", "--given-name", "Pri", "--family-name", "Mer", "--plan", "small",
               "--member-number", "P-1", "--recovery-mail", "p@example.org", "--language", "fr",
               "--alias", "primer@demo.coop", "--forward", "p@example.org", "--mail-quota",
               "2 GB", "--cloud-quota", "9 GB", "--group", "board", "--generate-password")
    with_plans("member", "depart", "pri.mer")
    with_plans("member", "modify", "pri.mer", "--remove-group", "board")
    assert admin.delete(f"uid=pri.mer,{PEOPLE}")
    rows = ["member_number,given_name,family_name,plan"]
    rows += [f"R-{n},Person{n},Racer,small" for n in range(800)]
    data = ("\n".join(rows) + "\n").encode()
    conn = connect(config.directory)
    directory = Directory(config, conn)
    plan = plan_import(directory, data, "members.csv")
    assert len(plan.changes) == 800
    admin.add(f"uid=person500.racer,{PEOPLE}", ["inetOrgPerson"],
              {"cn": "someone else", "sn": "else"})  # line 502 of the file
    assert config.sync is not None
    journal = ImportJournal(config.sync.state_dir, config.directory)
    run = ImportRun(directory, journal, plan, tmp_path / "members.csv", file_digest(data))
    with pytest.raises(Conflict) as caught:
        run.run()
    message = caught.value.message
    assert message.startswith(f"line 502 (person500.racer): adding uid=person500.racer,{PEOPLE}: "
                              "the directory refused it (entryAlreadyExists)"), message
    assert "Nothing of the import was written." in message and caught.value.hint
    assert count_people(admin) == 1  # only the other writer's entry
    assert journal.load() is None  # rolled back: nothing to finish
    conn.unbind()


def test_a_ca_file_that_does_not_exist_is_an_error_before_anything(coopctl: Coopctl,
                                                                   tmp_path: Path) -> None:
    data = yaml.safe_load(Path(coopctl.config).read_text())
    data["directory"].update(tls="starttls", ca_file=str(tmp_path / "nowhere" / "ca.crt"))
    variant = tmp_path / "variant.yaml"
    variant.write_text(yaml.safe_dump(data))
    csv_file = tmp_path / "m.csv"
    csv_file.write_text("member_number,given_name,family_name,plan\nM-1,A,B,small\n")
    result = CliRunner().invoke(cli, ["--config", str(variant), "member", "import",
                                      str(csv_file)])
    assert result.exit_code == 5, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Error: directory.ca_file in " in result.output
    assert "cannot be read: No such file or directory" in result.output
    assert "Hint: " in result.output
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("hello\n")
    data["directory"]["ca_file"] = str(not_pem)
    variant.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["--config", str(variant), "member", "list"])
    assert result.exit_code == 5 and "is not a PEM certificate" in result.output
