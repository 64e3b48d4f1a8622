"""`coopctl init`'s indexes come from schemas/indexes.yml, the list the openldap role writes too.

Against the session's private slapd (Debian's package): init gives the server every index of
the file in the file's own form, keeps what the server indexes beyond it, and has nothing to do
when the server already has them (as on a server the role deployed).
"""

from __future__ import annotations

from pathlib import Path

import ldap3
import pytest
import yaml

from provisioner.bootstrap import initialise, load_indexes
from provisioner.config import load
from provisioner.errors import ConfigError
from provisioner.resources import playbooks_dir, schemas_dir

DB = "olcDatabase={1}mdb,cn=config"


def indexes(admin: ldap3.Connection) -> list[str]:
    admin.search(DB, "(objectClass=*)", ldap3.BASE, attributes=["olcDbIndex"])
    return sorted(admin.entries[0].olcDbIndex.values)


def set_indexes(admin: ldap3.Connection, values: list[str]) -> None:
    assert admin.modify(DB, {"olcDbIndex": [(ldap3.MODIFY_REPLACE, values)]}), admin.result


def test_the_file_is_the_list_the_role_reads() -> None:
    role_task = (playbooks_dir() / "roles/openldap/tasks/config.yml").read_text(encoding="utf-8")
    assert "openldap_schema_dir ~ '/indexes.yml'" in role_task
    values = load_indexes()
    assert values == yaml.safe_load((schemas_dir() / "indexes.yml").read_text())["indexes"]
    assert "employeeNumber eq" in values  # imports find members by their ERP number


@pytest.mark.parametrize("text", ["indexes: [", "indexes: []", "other: 1", "indexes: ['uid eq;']",
                                  "indexes: [{uid: eq}]"])
def test_a_broken_index_file_stops_init_before_any_write(tmp_path: Path, text: str) -> None:
    path = tmp_path / "indexes.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_indexes(path)
    assert caught.value.hint and "indexes" in caught.value.hint


def test_a_missing_index_file_is_an_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the index list"):
        load_indexes(tmp_path / "absent.yml")


def test_init_adds_missing_indexes_in_the_files_form_and_keeps_others(
        config_path: Path, admin: ldap3.Connection) -> None:
    wanted = load_indexes()
    assert set(wanted) <= set(indexes(admin))  # the session's init gave them
    try:
        # A server with its own grouping, part of the list, and two indexes of its own.
        set_indexes(admin, ["objectClass eq", "uid eq", "givenName,mail eq", "displayName eq"])
        report = initialise(load(config_path))
        assert [line for line in report.done if line.startswith("indexed")] == [
            "indexed uid, mail, cn, coopMemberStatus, coopPlan, coopService, coopMailAlias, "
            "employeeNumber, member, entryCSN, entryUUID"]
        assert indexes(admin) == sorted([*wanted, "givenName eq", "displayName eq"])
        # Nothing to do the second time: the role's list (plus the extras) is all there.
        assert initialise(load(config_path)).done == []
        # Nor when the server has exactly the file's list, as the openldap role leaves it.
        set_indexes(admin, wanted)
        assert initialise(load(config_path)).done == []
        assert indexes(admin) == sorted(wanted)
    finally:
        set_indexes(admin, wanted)
