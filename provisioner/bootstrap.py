"""`coopctl init`: make a directory coopctl administers ready for the coop.

It converges, step by step, on: the project's schema loaded, the coop's
attributes indexed, the access rules of `schemas/acl.j2` in force, the base
tree present and the coopctl service account able to bind with its secret.
Each step reads first and writes only what differs, so a second run reports
nothing to do. It works through ldapi + SASL EXTERNAL: no admin password.

The openldap Ansible role writes the same settings on the servers it deploys,
from the same files (`schemas/coop.ldif`, `schemas/acl.j2`,
`schemas/indexes.yml`): neither may carry a list of its own, or each run of one
would undo the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import ldap3
import yaml

from provisioner.config import Config
from provisioner.errors import ConfigError, CoopError
from provisioner.ldapconn import connect, connect_admin, result_error, set_password
from provisioner.resources import schemas_dir

SCHEMAS = schemas_dir()
# The coop's olcDbIndex values, shared with the openldap role (tasks/config.yml reads it too).
INDEXES_FILE = "indexes.yml"
# One olcDbIndex value: attributes separated by commas, then optionally the index types.
INDEX_VALUE = re.compile(r"^[A-Za-z][\w;-]*(,[A-Za-z][\w;-]*)*( [a-z]+(,[a-z]+)*)?$")


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


def load_indexes(path: Path | None = None) -> list[str]:
    """The coop's index definitions (olcDbIndex values) from `schemas/indexes.yml`.

    Read and checked before anything is written: a broken file must stop `init` at once,
    not half-way.
    """
    path = path or SCHEMAS / INDEXES_FILE
    hint = (f"restore {path} from coopctl's release: it lists the coop's indexes "
            "(`indexes:` then one `- ATTR[,ATTR...] TYPE[,TYPE...]` per line)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the index list {path}: {exc.strerror}", hint) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"the index list {path} is not valid YAML: {exc}", hint) from None
    values = data.get("indexes") if isinstance(data, dict) else None
    if (not isinstance(values, list) or not values
            or not all(isinstance(v, str) and INDEX_VALUE.match(v) for v in values)):
        raise ConfigError(f"the index list {path} has no valid `indexes:` list", hint)
    return values


def _split_index(value: str) -> tuple[list[str], set[str]]:
    """`uid,mail eq,sub` -> (["uid", "mail"], {"eq", "sub"})."""
    attrs, _, types = value.strip().partition(" ")
    return attrs.split(","), {t.strip().lower() for t in types.split(",") if t.strip()}


def _index_types(values: list[str]) -> dict[str, set[str]]:
    """Which index types each attribute (lower-cased) has."""
    found: dict[str, set[str]] = {}
    for value in values:
        attrs, types = _split_index(value)
        for attr in attrs:
            found.setdefault(attr.lower(), set()).update(types)
    return found


def _ensure_indexes(admin: ldap3.Connection, db_dn: str, entry: dict, wanted: list[str],
                    report: InitReport) -> None:
    """Give every attribute of `wanted` its index types; keep the server's other indexes.

    Nothing is written when each wanted (attribute, type) is there already, whatever the
    grouping of the values: a server the openldap role deployed has exactly `wanted`, plus
    `memberOf eq` when it runs the memberof overlay, and must be left alone. Otherwise the
    values are replaced by `wanted` plus what the server had for other attributes (slapd
    refuses a second value for an attribute that already has one, so adding is not enough).
    """
    current = [str(v) for v in entry.get("olcDbIndex", [])]
    have, want = _index_types(current), _index_types(wanted)
    lacking = [attr for attr, types in want.items() if not types <= have.get(attr, set())]
    if not lacking:
        return
    kept = []
    for value in current:
        attrs, _types = _split_index(value)
        others = [a for a in attrs if a.lower() not in want]
        if others:
            rest = value.strip().partition(" ")[2]
            kept.append(",".join(others) + (f" {rest}" if rest else ""))
    if not admin.modify(db_dn, {"olcDbIndex": [(ldap3.MODIFY_REPLACE, wanted + kept)]}):
        raise result_error(admin, "setting the indexes")
    names = {a.lower(): a for v in wanted for a in _split_index(v)[0]}
    report.note(f"indexed {', '.join(names[a] for a in lacking)}")


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
    indexes = load_indexes()
    admin = connect_admin(config.directory)
    try:
        _ensure_schema(admin, report)
        db_dn, entry = _database(admin, config.directory.base_dn)
        _ensure_indexes(admin, db_dn, entry, indexes, report)
        _ensure_acl(admin, db_dn, entry, config.directory.base_dn, report)
        _ensure_tree(admin, config, report)
        _ensure_service_password(admin, config, report)
    finally:
        admin.unbind()
    return report
