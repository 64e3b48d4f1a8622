"""The schema files: one OID arc, both forms in step, accepted by slapd."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from provisioner.schemafile import LDIF, to_schema

ARC = "2.25.148753804641266587023290281304315480332"


def test_slapd_conf_form_is_generated_from_the_ldif() -> None:
    generated = to_schema(LDIF.read_text(encoding="utf-8"))
    assert (LDIF.parent / "coop.schema").read_text(encoding="utf-8") == generated


def test_every_oid_is_under_the_project_arc() -> None:
    text = LDIF.read_text(encoding="utf-8")
    assert f"coopArc {ARC}" in text
    definitions = re.findall(r"olc(?:AttributeTypes|ObjectClasses): \( (\S+)", text)
    assert definitions and all(d.startswith(("coopAttr:", "coopClass:")) for d in definitions)
    assert len(set(definitions)) == len(definitions)


def test_slapd_accepts_the_slapd_conf_form(tmp_path: Path) -> None:
    conf = tmp_path / "slapd.conf"
    conf.write_text(
        "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n"
        "include /etc/ldap/schema/inetorgperson.schema\n"
        f"include {LDIF.parent / 'coop.schema'}\n"
        "moduleload back_mdb\n"
        f"database mdb\nsuffix dc=t\ndirectory {tmp_path}\n"
    )
    result = subprocess.run(["/usr/sbin/slaptest", "-u", "-f", str(conf)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
