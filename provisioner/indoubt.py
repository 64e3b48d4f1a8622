"""Whether a transaction whose commit was cut off was applied: read some of it back.

When the connection breaks after EndTransaction was sent (slapd crashed or restarted, the
network dropped), the client cannot know whether the server committed. A transaction is
applied whole or not at all, so the state of a few of its operations tells for all of them:
an added entry that exists, a deleted one that is gone, a modified attribute that holds
the new values. Both ends of the operation list are read (a handful of searches, whatever
the transaction's size); if some say "applied" and others "not applied", somebody else wrote
meanwhile and the answer is "cannot tell".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import ldap3

# Read back at most this many operations from each end of the transaction.
SAMPLE = 4
# Attributes the coopctl account may write but not read: their state proves nothing.
UNREADABLE = frozenset({"userpassword"})


class Operation(Protocol):
    kind: str
    dn: str
    detail: Any


def _norm(values: Iterable[Any]) -> set[str]:
    out = set()
    for value in values:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        out.add(text.lower())
    return out


def _read(conn: ldap3.Connection, dn: str, attributes: list[str]) -> dict[str, set[str]] | None:
    """The entry's values (lower-cased) for `attributes`, or None when it does not exist."""
    found = conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=attributes or ["1.1"],
                        dereference_aliases=ldap3.DEREF_NEVER)
    if not found:
        if (conn.result or {}).get("result") == 32:
            return None
        raise ConnectionError(f"reading {dn} back failed: {(conn.result or {}).get('description')}")
    raw = conn.response[0].get("raw_attributes", {}) if conn.response else {}
    return {name.lower(): _norm(values) for name, values in raw.items()}


def _applied(conn: ldap3.Connection, op: Operation) -> bool | None:
    """True if the server holds what `op` wrote, False if not, None if it cannot tell."""
    if op.kind == "add":
        return _read(conn, op.dn, []) is not None
    if op.kind == "delete":
        return _read(conn, op.dn, []) is None
    names = [n for n in op.detail if n.lower() not in UNREADABLE]
    if not names:
        return None
    entry = _read(conn, op.dn, names)
    if entry is None:
        return False
    verdicts = []
    for name in names:
        have = entry.get(name.lower(), set())
        for operation, values in op.detail[name]:
            want = _norm(values)
            if operation == ldap3.MODIFY_REPLACE:
                verdicts.append(have == want)
            elif operation == ldap3.MODIFY_ADD:
                verdicts.append(want <= have)
            elif operation == ldap3.MODIFY_DELETE:
                verdicts.append(not have if not want else not (want & have))
    if verdicts and all(verdicts):
        return True
    return False if verdicts and not any(verdicts) else None


def was_applied(conn: ldap3.Connection, ops: Sequence[Operation]) -> bool | None:
    """True: the transaction was committed; False: it was not; None: cannot tell."""
    count = len(ops)
    picked = [ops[i] for i in sorted({*range(min(SAMPLE, count)),
                                      *range(max(0, count - SAMPLE), count)})]
    verdicts = [v for op in picked if (v := _applied(conn, op)) is not None]
    if not verdicts:
        return None
    if all(verdicts):
        return True
    return False if not any(verdicts) else None
