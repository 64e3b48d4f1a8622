#!/usr/bin/python3
# Role-local module of the openldap role: sets an entry's password only when a
# bind with it fails. The password travels in the module arguments (never argv).
"""Ansible module: coop_ldap_password."""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: coop_ldap_password
short_description: Set an LDAP entry's password idempotently
description:
  - Tries a simple bind as C(dn) with C(password) over C(uri) (ldapi:/// by default). When the bind
    succeeds nothing changes; otherwise the password is set with the password-modify extended
    operation (RFC 3062) as the ldapi peercred identity (SASL EXTERNAL), so slapd hashes it.
  - With C(scheme), a password that binds but whose stored hash has another scheme (an {SSHA}
    hash from before slapd hashed with argon2) is set again, so that slapd hashes it anew; the
    stored value is read as the peercred identity and only its scheme prefix is looked at.
requirements: [python3-ldap]
options:
  dn: {description: DN of the entry., type: str}
  password: {description: The password., type: str}
  accounts:
    description: Several entries at once, each a dict with dn and password.
    type: list
    elements: dict
  uri: {description: The ldapi URI., type: str, default: "ldapi:///"}
  scheme: {description: "Scheme prefix every stored hash must have, e.g. {ARGON2}.", type: str}
"""

EXAMPLES = r"""
- name: Password of a service account
  coop_ldap_password:
    dn: cn=mail,ou=services,dc=demo,dc=coop
    password: "{{ secret }}"
  no_log: true
"""

RETURN = r"""
set_for: {description: DNs whose password was set., type: list, returned: always}
"""


def _binds(ldap, uri, dn, password):
    conn = ldap.initialize(uri)
    try:
        conn.simple_bind_s(dn, password)
        return True
    except ldap.LDAPError:
        return False
    finally:
        conn.unbind_s()


def _scheme_ok(ldap, uri, dn, scheme):
    """Whether every stored hash of dn starts with scheme (read as the peercred admin)."""
    conn = ldap.initialize(uri)
    try:
        conn.sasl_non_interactive_bind_s("EXTERNAL")
        found = conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", ["userPassword"])
    finally:
        conn.unbind_s()
    values = found[0][1].get("userPassword", []) if found else []
    prefix = scheme.encode("utf-8").upper()
    return bool(values) and all(v.upper().startswith(prefix) for v in values)


def _ensure(module, ldap, uri, dn, password, scheme=None):
    """True when the password had to be set."""
    if _binds(ldap, uri, dn, password) and (not scheme or _scheme_ok(ldap, uri, dn, scheme)):
        return False
    if module.check_mode:
        return True
    try:
        conn = ldap.initialize(uri)
        conn.sasl_non_interactive_bind_s("EXTERNAL")
        conn.passwd_s(dn, None, password)
        conn.unbind_s()
    except ldap.LDAPError as exc:
        module.fail_json(msg=f"could not set the password of {dn}: {exc}")
    if not _binds(ldap, uri, dn, password):
        module.fail_json(msg=f"password of {dn} set but a bind with it still fails")
    return True


def main():
    module = AnsibleModule(
        argument_spec={
            "dn": {"type": "str"},
            "password": {"type": "str", "no_log": True},
            "accounts": {"type": "list", "elements": "dict", "no_log": True},
            "uri": {"type": "str", "default": "ldapi:///"},
            "scheme": {"type": "str"},
        },
        required_one_of=[["dn", "accounts"]],
        required_together=[["dn", "password"]],
        mutually_exclusive=[["dn", "accounts"]],
        supports_check_mode=True,
    )
    try:
        import ldap  # pylint: disable=import-outside-toplevel
        import ldap.sasl  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        module.fail_json(msg="python3-ldap is required on the managed host")
    accounts = module.params["accounts"] or [
        {"dn": module.params["dn"], "password": module.params["password"]}
    ]
    changed = []
    for account in accounts:
        if _ensure(module, ldap, module.params["uri"], account["dn"], account["password"],
                   module.params["scheme"]):
            changed.append(account["dn"])
    module.exit_json(changed=bool(changed), set_for=changed)


if __name__ == "__main__":
    main()
