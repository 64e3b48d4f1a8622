#!/usr/bin/python3
# Role-local module of the postgresql role: one database per application, owned by its own
# login role with a scram-sha-256 password. Reads before it writes (second run: no change).
# Talks to the server with psql as the cluster's owner over the Unix socket (peer
# authentication), SQL on stdin, so no driver (psycopg2) is needed and nothing secret is ever
# on a command line. The password itself never reaches the server either: the module sends a
# SCRAM-SHA-256 verifier it computed, and compares the stored verifier by recomputing it with
# the stored salt and iteration count.
"""Ansible module: coop_postgresql_db."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: coop_postgresql_db
short_description: Declare PostgreSQL databases, each owned by a login role with a password
description:
  - For each entry of C(databases), makes sure a role C(owner) exists with LOGIN and the given
    password stored as a SCRAM-SHA-256 verifier, that database C(name) exists (UTF8, from
    template0) and is owned by it, and that PUBLIC has no privilege on it (CONNECT/TEMPORARY),
    so only its owner (and superusers) may connect.
  - The stored verifier is checked by recomputing it from the password with its own salt and
    iteration count; it is rewritten only when it does not match (e.g. after the secret was
    rotated), with a fresh salt.
  - Runs psql (Debian's postgresql-client) as C(os_user) against the cluster's Unix socket.
    Nothing is ever dropped or renamed.
options:
  databases:
    description: The databases; only the passwords are no_log, names show in the changes.
    type: list
    elements: dict
    required: true
    suboptions:
      name: {description: Name of the database., type: str, required: true}
      owner: {description: Login role that owns it (created if missing)., type: str, required: true}
      password: {description: Password of that role., type: str, required: true, no_log: true}
  port: {description: Port of the cluster (selects its socket)., type: int, default: 5432}
  socket_dir: {description: Directory of the cluster's Unix socket., type: path, default: /var/run/postgresql}
  os_user: {description: System account that owns the cluster (peer authentication)., type: str, default: postgres}
  iterations: {description: SCRAM iteration count of new verifiers (PostgreSQL's default)., type: int, default: 4096}
"""

EXAMPLES = r"""
- name: Keycloak's database
  coop_postgresql_db:
    databases:
      - {name: keycloak, owner: keycloak, password: "{{ secret }}"}
    port: 5432
"""

RETURN = r"""
changes: {description: What was created or altered (names only, never secrets)., type: list, returned: always}
"""

# Plain lower-case identifiers only: they are then safe in SQL without quoting tricks, and the
# same names work in pg_hba.conf and in a JDBC URL.
NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
VERIFIER = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")


class PsqlError(Exception):
    pass


def scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """StoredKey and ServerKey of RFC 5802 / RFC 7677, as PostgreSQL computes them."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return hashlib.sha256(client_key).digest(), server_key


def scram_verifier(password: str, iterations: int) -> str:
    salt = os.urandom(16)
    stored, server = scram_keys(password, salt, iterations)
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored).decode()}:{b64(server).decode()}"


def verifier_matches(stored: str | None, password: str) -> bool:
    """True when the verifier PostgreSQL stores was made from this password."""
    match = VERIFIER.match(stored or "")
    if not match:
        return False  # no password, or an md5 hash: rewrite as SCRAM
    iterations, salt, stored_key, server_key = match.groups()
    want = scram_keys(password, base64.b64decode(salt), int(iterations))
    got = (base64.b64decode(stored_key), base64.b64decode(server_key))
    return all(hmac.compare_digest(a, b) for a, b in zip(want, got))


class Psql:
    """psql as the cluster owner over the Unix socket; SQL on stdin, never in argv."""

    def __init__(self, os_user: str, socket_dir: str, port: int) -> None:
        self.os_user = os_user
        self.argv = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                     "-h", socket_dir, "-p", str(port), "-d", "postgres"]

    def run(self, sql: str) -> str:
        try:
            result = subprocess.run(
                self.argv, input=sql, capture_output=True, text=True, check=False,
                user=self.os_user, group=self.os_user, extra_groups=[], cwd="/",
                env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "PGAPPNAME": "coop_postgresql_db"},
                timeout=120,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PsqlError(f"could not run psql: {exc}") from exc
        if result.returncode != 0:
            # Only the server's message lines: psql may echo the statement ("LINE 1: ..."),
            # which could hold a password verifier.
            lines = [ln for ln in result.stderr.splitlines()
                     if ln.startswith(("ERROR:", "FATAL:", "psql:")) and "LINE" not in ln]
            raise PsqlError("; ".join(lines) or f"psql exited with {result.returncode}")
        return result.stdout


def state_query(roles: list[str], databases: list[str]) -> str:
    def array(names: list[str]) -> str:
        return "ARRAY[" + ",".join(f"'{n}'" for n in names) + "]::text[]"

    return f"""
SELECT json_build_object(
  'roles', (SELECT coalesce(json_object_agg(rolname, json_build_object(
              'login', rolcanlogin, 'password', rolpassword)), '{{}}')
            FROM pg_authid WHERE rolname = ANY({array(roles)})),
  'databases', (SELECT coalesce(json_object_agg(datname, json_build_object(
              'owner', pg_get_userbyid(datdba), 'acl', datacl::text[])), '{{}}')
            FROM pg_database WHERE datname = ANY({array(databases)})));
"""


def public_has_privileges(acl: list[str] | None) -> bool:
    """A NULL ACL is the default one, which grants CONNECT and TEMPORARY to PUBLIC."""
    return acl is None or any(item.startswith("=") for item in acl)


def plan(entries: list[dict], state: dict, iterations: int) -> tuple[list[str], list[str]]:
    """SQL statements to run and the changes they make (no secrets in the latter)."""
    sql: list[str] = []
    changes: list[str] = []
    roles, databases = state["roles"], state["databases"]
    for entry in entries:
        name, owner, password = entry["name"], entry["owner"], entry["password"]
        role = roles.get(owner)
        if role is None:
            sql.append(f"CREATE ROLE \"{owner}\" LOGIN PASSWORD '{scram_verifier(password, iterations)}';")
            changes.append(f"role {owner} created")
            roles[owner] = {"login": True, "password": None}
        else:
            if not role["login"]:
                sql.append(f'ALTER ROLE "{owner}" LOGIN;')
                changes.append(f"role {owner} may log in")
            if not verifier_matches(role["password"], password):
                sql.append(f"ALTER ROLE \"{owner}\" PASSWORD '{scram_verifier(password, iterations)}';")
                changes.append(f"password of role {owner} set")
        database = databases.get(name)
        if database is None:
            sql.append(f'CREATE DATABASE "{name}" OWNER "{owner}" ENCODING \'UTF8\' TEMPLATE template0;')
            changes.append(f"database {name} created")
            database = {"owner": owner, "acl": None}
        elif database["owner"] != owner:
            sql.append(f'ALTER DATABASE "{name}" OWNER TO "{owner}";')
            changes.append(f"owner of database {name} set to {owner}")
        if public_has_privileges(database["acl"]):
            sql.append(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC;')
            changes.append(f"PUBLIC's privileges on database {name} revoked")
    return sql, changes


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            # Only the passwords are no_log: names stay readable in the reported changes.
            "databases": {"type": "list", "elements": "dict", "required": True, "options": {
                "name": {"type": "str", "required": True},
                "owner": {"type": "str", "required": True},
                "password": {"type": "str", "required": True, "no_log": True},
            }},
            "port": {"type": "int", "default": 5432},
            "socket_dir": {"type": "path", "default": "/var/run/postgresql"},
            "os_user": {"type": "str", "default": "postgres"},
            "iterations": {"type": "int", "default": 4096},
        },
        supports_check_mode=True,
    )
    entries = module.params["databases"]
    for i, entry in enumerate(entries):
        for key in ("name", "owner"):
            if not NAME.match(str(entry.get(key) or "")):
                module.fail_json(msg=f"databases[{i}].{key} must be a lower-case identifier "
                                     f"([a-z_][a-z0-9_]*), not {entry.get(key)!r}")
        password = entry.get("password")
        if not isinstance(password, str) or not password or not password.isascii() \
                or not password.isprintable():
            # Non-ASCII passwords would need SASLprep to match what PostgreSQL computes.
            module.fail_json(msg=f"databases[{i}].password (for {entry['name']}) must be "
                                 "non-empty printable ASCII")
    psql = Psql(module.params["os_user"], module.params["socket_dir"], module.params["port"])
    try:
        state = json.loads(psql.run(state_query(
            sorted({e["owner"] for e in entries}), sorted({e["name"] for e in entries}))))
        sql, changes = plan(entries, state, module.params["iterations"])
        if sql and not module.check_mode:
            # One statement per line in autocommit (CREATE DATABASE cannot run in a transaction).
            psql.run("\n".join(sql) + "\n")
    except PsqlError as exc:
        module.fail_json(msg=str(exc), changes=[])
    module.exit_json(changed=bool(changes), changes=changes)


if __name__ == "__main__":
    main()
