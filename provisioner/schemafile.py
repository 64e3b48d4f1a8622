"""The project schema in slapd.conf form, derived from its cn=config LDIF.

`schemas/coop.ldif` is the single source; `schemas/coop.schema` is generated
from it (`python -m provisioner.schemafile > schemas/coop.schema`) for servers
still configured with slapd.conf, and a test keeps the two in step.
"""

from __future__ import annotations

import re
import sys

from provisioner.resources import schemas_dir

LDIF = schemas_dir() / "coop.ldif"
KEYWORDS = {
    "olcObjectIdentifier": "objectidentifier",
    "olcAttributeTypes": "attributetype",
    "olcObjectClasses": "objectclass",
}


def to_schema(ldif: str) -> str:
    unfolded = re.sub(r"\n[ \t]", " ", ldif.replace("\r\n", "\n"))
    out = ["# Generated from coop.ldif by `python -m provisioner.schemafile`; do not edit."]
    for line in unfolded.splitlines():
        name, _, value = line.partition(":")
        if name in KEYWORDS:
            out.append(f"{KEYWORDS[name]} {re.sub(r' {2,}', ' ', value.strip())}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(to_schema(LDIF.read_text(encoding="utf-8")))
