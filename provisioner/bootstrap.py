"""`coopctl init`: make a directory coopctl administers ready for the coop.

It converges, step by step, on: the project's schema loaded, the coop's
attributes indexed, the access rules of `schemas/acl.j2` in force, the base
tree present and the coopctl service account able to bind with its secret.
Each step reads first and writes only what differs, so a second run reports
nothing to do. It works through ldapi + SASL EXTERNAL: no admin password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import ldap3

from provisioner.config import Config
from provisioner.errors import CoopError
from provisioner.ldapconn import connect, connect_admin, result_error, set_password

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
INDEXES = [
    "objectClass eq", "uid eq,sub", "mail eq,sub", "cn eq,sub", "coopMemberStatus eq",
    "coopPlan eq", "coopService eq", "coopMailAlias eq", "employeeNumber eq", "member eq",
    "entryCSN eq", "entryUUID eq",
]  # fmt: skip


@dataclass
class InitReport:
    done: list[str] = field(default_factory=list)

    def note(self, line: str) -> None:
        self.done.append(line)


def _ldif_values(path: Path) -> tuple[dict[str, list[str]], str]:
    """Attributes of the single entry of an LDIF file (folded lines joined)."""
    text = re.sub(r"\n[ \t]", " ", path.read_text(encoding="utf-8").replace("\r\n", "\n"))
    values: dict[str, list[str]] = {}
    dn = ""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(":")
        value = value.strip()
        if name == "dn":
            dn = value
        else:
            values.setdefault(name, []).append(re.sub(r"\s+", " ", value))
    return values, dn


def render_acl(base_dn: str, admin_dn: str) -> list[str]:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(SCHEMAS), undefined=StrictUndefined,
                      keep_trailing_newline=True)
    text = env.get_template("acl.j2").render(base_dn=base_dn, admin_dn=admin_dn)
    return [line.strip() for line in text.splitlines() if line.strip()]


def _strip_index(value: str) -> str:
    return re.sub(r"^\{\d+\}", "", value)


def _ensure_schema(admin: ldap3.Connection, report: InitReport) -> None:
    values, _dn = _ldif_values(SCHEMAS / "coop.ldif")
    admin.search("cn=schema,cn=config", "(cn=*coop)", ldap3.LEVEL,
                 attributes=["olcAttributeTypes", "olcObjectClasses", "cn"])
    found = [e for e in admin.response or [] if e.get("type") == "searchResEntry"]
    if not found:
        attrs = {k: v for k, v in values.items() if k not in ("objectClass",)}
        if not admin.add("cn=coop,cn=schema,cn=config", "olcSchemaConfig", attrs):
            raise result_error(admin, "loading the coop schema")
        report.note("loaded the coop schema")
        return
    entry = found[0]
    mods = {}
    for attr in ("olcAttributeTypes", "olcObjectClasses"):
        have = {_strip_index(v).split(" NAME ")[1].split()[0]: re.sub(r"\s+", " ", _strip_index(v))
                for v in entry["attributes"].get(attr, [])}
        for value in values.get(attr, []):
            name = value.split(" NAME ")[1].split()[0]
            if name not in have:
                mods.setdefault(attr, []).append(value)
    if mods:
        changes = {a: [(ldap3.MODIFY_ADD, v)] for a, v in mods.items()}
        if not admin.modify(entry["dn"], changes):
            raise result_error(admin, "extending the coop schema")
        report.note(f"added {sum(map(len, mods.values()))} definitions to the coop schema")


def _database(admin: ldap3.Connection, base_dn: str) -> tuple[str, dict]:
    """DN and attributes (indexes, access rules, rootDN) of the database holding base_dn."""
    admin.search("cn=config", f"(olcSuffix={ldap3.utils.conv.escape_filter_chars(base_dn)})",
                 ldap3.LEVEL, attributes=["olcDbIndex", "olcAccess", "olcRootDN"])
    found = [e for e in admin.response or [] if e.get("type") == "searchResEntry"]
    if not found:
        raise CoopError(f"no database with suffix {base_dn} on this server",
                        "create it first (the openldap role does), or fix directory.base_dn")
    return found[0]["dn"], found[0]["attributes"]


def _ensure_indexes(admin: ldap3.Connection, db_dn: str, entry: dict,
                    report: InitReport) -> None:
    have = {name.lower() for v in entry.get("olcDbIndex", []) for name in v.split()[0].split(",")}
    missing = [i for i in INDEXES if i.split()[0].lower() not in have]
    if missing and not admin.modify(db_dn, {"olcDbIndex": [(ldap3.MODIFY_ADD, missing)]}):
        raise result_error(admin, "adding indexes")
    if missing:
        report.note(f"indexed {', '.join(i.split()[0] for i in missing)}")


def _ensure_acl(admin: ldap3.Connection, db_dn: str, entry: dict, base_dn: str,
                report: InitReport) -> None:
    admin_dn = entry.get("olcRootDN") or ""
    admin_dn = admin_dn[0] if isinstance(admin_dn, list) else admin_dn
    wanted = render_acl(base_dn, admin_dn)
    have = [re.sub(r"\s+", " ", _strip_index(v)).strip() for v in entry.get("olcAccess", [])]
    if have != [re.sub(r"\s+", " ", w) for w in wanted]:
        numbered = [f"{{{i}}}{rule}" for i, rule in enumerate(wanted)]
        if not admin.modify(db_dn, {"olcAccess": [(ldap3.MODIFY_REPLACE, numbered)]}):
            raise result_error(admin, "setting the access rules")
        report.note(f"set {len(wanted)} access rules")


def _ensure_tree(admin: ldap3.Connection, config: Config, report: InitReport) -> None:
    cfg = config.directory
    rdn_attr, _, rdn_value = cfg.base_dn.split(",", 1)[0].partition("=")
    base_attrs = (
        {"objectClass": ["dcObject", "organization"], "dc": rdn_value, "o": config.coop}
        if rdn_attr.lower() == "dc"
        else {"objectClass": ["organization"], "o": rdn_value}
    )
    entries = [(cfg.base_dn, base_attrs)]
    for ou, what in (("people", "members"), ("groups", "groups"), ("plans", "plans"),
                     ("services", "service accounts")):
        entries.append((f"ou={ou},{cfg.base_dn}", {
            "objectClass": ["organizationalUnit"], "ou": ou, "description": f"the coop's {what}",
        }))
    entries.append((cfg.bind_dn, {
        "objectClass": ["applicationProcess", "simpleSecurityObject"],
        "cn": cfg.bind_dn.split(",", 1)[0].split("=", 1)[1],
        "userPassword": "{CRYPT}!",  # no password until the password modify below
        "description": "coopctl: writes members, groups and plans",
    }))
    for dn, attrs in entries:
        if admin.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["1.1"]):
            continue
        attrs = dict(attrs)
        if not admin.add(dn, attrs.pop("objectClass"), attrs):
            raise result_error(admin, f"creating {dn}")
        report.note(f"created {dn}")


def _ensure_service_password(admin: ldap3.Connection, config: Config,
                             report: InitReport) -> None:
    try:
        connect(config.directory, check_base=False).unbind()
        return
    except CoopError:
        pass
    set_password(admin, config.directory.bind_dn, config.directory.bind_secret())
    connect(config.directory).unbind()
    report.note(f"set the password of {config.directory.bind_dn} from its secret")


def initialise(config: Config) -> InitReport:
    """Converge the server on what coopctl needs; returns what was done."""
    report = InitReport()
    config.directory.bind_secret()  # fail before any write if the secret is missing
    admin = connect_admin(config.directory)
    try:
        _ensure_schema(admin, report)
        db_dn, entry = _database(admin, config.directory.base_dn)
        _ensure_indexes(admin, db_dn, entry, report)
        _ensure_acl(admin, db_dn, entry, config.directory.base_dn, report)
        _ensure_tree(admin, config, report)
        _ensure_service_password(admin, config, report)
    finally:
        admin.unbind()
    return report
