#!/usr/bin/python3
# Role-local module of the openldap role: keeps LDAP entries (data or
# cn=config) in a wanted state over ldapi:/// with SASL EXTERNAL.
"""Ansible module: coop_ldap_entry."""

from __future__ import annotations

import re

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: coop_ldap_entry
short_description: Keep LDAP entries (cn=config or data) as wanted, over ldapi with SASL EXTERNAL
description:
  - Connects to the local slapd over ldapi:/// and authenticates with SASL EXTERNAL (the
    peercred identity of root), so no LDAP password is involved.
  - Adds a missing entry; on an existing entry replaces every listed attribute whose values
    differ (C(mode=replace)) or adds only the missing values (C(mode=add)). objectClass values
    are only added.
  - Values of X-ORDERED attributes carry a C({N}) prefix in cn=config; the module compares them
    with the prefix stripped and in order, so a list without prefixes can be given.
  - C(ldif) loads the entries of an LDIF file instead (e.g. a schema); a
    C(cn=NAME,cn=schema,cn=config) entry matches the stored C(cn={N}NAME,cn=schema,cn=config).
requirements: [python3-ldap]
options:
  dn: {description: DN of the entry., type: str}
  attributes: {description: Attribute name to value or list of values., type: dict, default: {}}
  create_only:
    description: Attributes set only when the entry is added (a first userPassword); never compared.
    type: dict
    default: {}
  ldif:
    description: Path (on the managed host) of an LDIF file of entries to keep present.
    type: path
  entries:
    description:
      - Several entries at once, in order, each a dict with dn, attributes and optional
        create_only, state and mode (which default to the module's own).
    type: list
    elements: dict
  state: {description: present or absent., type: str, default: present, choices: [present, absent]}
  mode:
    description: replace (exact values) or add (only missing values).
    type: str
    default: replace
    choices: [replace, add]
  ordered:
    description: Attributes compared in order, the others as sets.
    type: list
    elements: str
  uri: {description: The ldapi URI., type: str, default: "ldapi:///"}
"""

EXAMPLES = r"""
- name: Indexes of the data database
  coop_ldap_entry:
    dn: olcDatabase={1}mdb,cn=config
    attributes:
      olcDbIndex: [objectClass eq, uid eq]
"""

RETURN = r"""
changes: {description: What was (or would be) changed., type: list, returned: always}
"""

PREFIX = re.compile(r"^\{-?\d+\}")
DEFAULT_ORDERED = [
    "olcaccess",
    "olclimits",
    "olcmoduleload",
    "olcattributetypes",
    "olcobjectclasses",
    "olcobjectidentifier",
    "olcldapsyntaxes",
    "olcditcontentrules",
    "olcsyncrepl",
    "olcauthzregexp",
]


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _strip(values):
    return [PREFIX.sub("", v, count=1) for v in values]


def _same(name, current, wanted, ordered):
    if name.lower() == "objectclass":
        return {v.lower() for v in current} >= {v.lower() for v in wanted}
    cur, want = _strip(current), _strip(wanted)
    if name.lower() in ordered:
        return cur == want
    return sorted(cur) == sorted(want)


def _read(conn, ldap, dn):
    try:
        res = conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", ["*", "+"])
    except ldap.NO_SUCH_OBJECT:
        return None
    if not res:
        return None
    _dn, attrs = res[0]
    return {k.lower(): (k, [v.decode("utf-8") for v in vals]) for k, vals in attrs.items()}


def _schema_dn(conn, ldap, dn):
    """Map cn=NAME,cn=schema,cn=config to the stored cn={N}NAME,... (or None if absent)."""
    m = re.match(r"^cn=([^,]+),cn=schema,cn=config$", dn, re.IGNORECASE)
    if not m:
        return dn
    name = PREFIX.sub("", m.group(1))
    for cdn, attrs in conn.search_s(
        "cn=schema,cn=config", ldap.SCOPE_ONELEVEL, "(objectClass=*)", ["cn"]
    ):
        for cn in attrs.get("cn", []):
            if PREFIX.sub("", cn.decode("utf-8")).lower() == name.lower():
                return cdn
    return None


def ensure(module, conn, ldap, dn, wanted, state, mode, ordered, create_only=None):
    """Bring one entry to its wanted state; returns the list of changes."""
    changes = []
    real_dn = _schema_dn(conn, ldap, dn)
    current = _read(conn, ldap, real_dn) if real_dn else None
    if state == "absent":
        if current is not None:
            changes.append({"dn": real_dn, "op": "delete"})
            if not module.check_mode:
                conn.delete_s(real_dn)
        return changes
    if current is None:
        full = dict(wanted, **(create_only or {}))
        addlist = [(k, [v.encode("utf-8") for v in vals]) for k, vals in full.items()]
        changes.append({"dn": dn, "op": "add", "attributes": sorted(wanted)})
        if not module.check_mode:
            conn.add_s(dn, addlist)
        return changes
    mods = []
    for name, vals in wanted.items():
        cur = current.get(name.lower(), (name, []))[1]
        if _same(name, cur, vals, ordered):
            continue
        if name.lower() == "objectclass":
            missing = [v for v in vals if v.lower() not in {c.lower() for c in cur}]
            mods.append((ldap.MOD_ADD, name, [v.encode("utf-8") for v in missing]))
            changes.append({"dn": real_dn, "op": "add", "attribute": name, "values": missing})
        elif mode == "add":
            have = _strip(cur)
            missing = [v for v in vals if PREFIX.sub("", v) not in have]
            if not missing:
                continue
            mods.append((ldap.MOD_ADD, name, [v.encode("utf-8") for v in missing]))
            changes.append({"dn": real_dn, "op": "add", "attribute": name, "values": missing})
        else:
            mods.append((ldap.MOD_REPLACE, name, [v.encode("utf-8") for v in vals]))
            changes.append({"dn": real_dn, "op": "replace", "attribute": name})
    if mods and not module.check_mode:
        conn.modify_s(real_dn, mods)
    return changes


def main():
    module = AnsibleModule(
        argument_spec={
            "dn": {"type": "str"},
            "attributes": {"type": "dict", "default": {}},
            "create_only": {"type": "dict", "default": {}, "no_log": True},
            "ldif": {"type": "path"},
            "entries": {"type": "list", "elements": "dict", "no_log": False},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "mode": {"type": "str", "default": "replace", "choices": ["replace", "add"]},
            "ordered": {"type": "list", "elements": "str"},
            "uri": {"type": "str", "default": "ldapi:///"},
        },
        required_one_of=[["dn", "ldif", "entries"]],
        mutually_exclusive=[["dn", "ldif", "entries"]],
        supports_check_mode=True,
    )
    try:
        import ldap  # pylint: disable=import-outside-toplevel
        import ldap.sasl  # pylint: disable=import-outside-toplevel
    except ImportError:
        module.fail_json(msg="python3-ldap is required on the managed host")
    ordered = [a.lower() for a in (module.params["ordered"] or DEFAULT_ORDERED)]
    if module.params["ldif"]:
        import ldif as ldifmod  # pylint: disable=import-outside-toplevel

        with open(module.params["ldif"], "rb") as fh:
            parser = ldifmod.LDIFRecordList(fh)
            parser.parse()
        entries = [
            (dn, {k: [v.decode("utf-8") for v in vals] for k, vals in attrs.items()}, {}, {})
            for dn, attrs in parser.all_records
        ]
    elif module.params["entries"]:
        entries = []
        for item in module.params["entries"]:
            for key, allowed in (("state", ("present", "absent")), ("mode", ("replace", "add"))):
                if item.get(key) and item[key] not in allowed:
                    module.fail_json(msg=f"{item.get('dn')}: {key} must be one of {allowed}")
            secret = {k: _as_list(v) for k, v in (item.get("create_only") or {}).items()}
            for vals in secret.values():
                for val in vals:
                    module.no_log_values.add(val)
            entries.append(
                (
                    item["dn"],
                    {k: _as_list(v) for k, v in (item.get("attributes") or {}).items()},
                    secret,
                    {key: item[key] for key in ("state", "mode") if item.get(key)},
                )
            )
    else:
        entries = [
            (
                module.params["dn"],
                {k: _as_list(v) for k, v in module.params["attributes"].items()},
                {k: _as_list(v) for k, v in module.params["create_only"].items()},
                {},
            )
        ]
    try:
        conn = ldap.initialize(module.params["uri"])
        conn.sasl_non_interactive_bind_s("EXTERNAL")
        changes = []
        for dn, wanted, create_only, own in entries:
            changes += ensure(
                module,
                conn,
                ldap,
                dn,
                wanted,
                own.get("state", module.params["state"]),
                own.get("mode", module.params["mode"]),
                ordered,
                create_only,
            )
        conn.unbind_s()
    except ldap.LDAPError as exc:
        module.fail_json(msg=f"LDAP error: {exc}", changes=locals().get("changes", []))
    module.exit_json(changed=bool(changes), changes=changes)


if __name__ == "__main__":
    main()
