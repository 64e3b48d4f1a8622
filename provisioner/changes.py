"""A change to the directory: what it will do, shown before it is done.

Like a Terraform plan, a `ChangeSet` is computed from desired vs. observed
state without touching the server; `--dry-run` prints it, `apply` sends it as
one LDAP transaction. An empty change set is how idempotence shows: running
the same command or import again finds nothing to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ldap3

from provisioner.config import DirectoryConfig
from provisioner.ldapconn import Transaction
from provisioner.model import Group

Modifications = dict[str, list[tuple[str, list[Any]]]]


@dataclass(slots=True)
class Change:
    """One line of a plan: '+' create, '~' change, '-' remove."""

    action: str
    kind: str
    name: str
    details: list[str] = field(default_factory=list)

    def render(self) -> str:
        head = f"{self.action} {self.kind} {self.name}"
        return head + "".join(f"\n    {d}" for d in self.details)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "kind": self.kind, "name": self.name,
                "details": self.details}


def attribute_diff(old: dict[str, Any], new: dict[str, Any]) -> Modifications:
    """Replace operations turning `old` attribute values into `new` ones."""
    mods: Modifications = {}
    for name, value in new.items():
        want = _values(value)
        have = _values(old.get(name))
        if sorted(want) != sorted(have):
            mods[name] = [(ldap3.MODIFY_REPLACE, want)]
    return mods


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


@dataclass
class ChangeSet:
    """Entry operations plus group membership deltas, applied together."""

    directory: DirectoryConfig
    changes: list[Change] = field(default_factory=list)
    tx: Transaction = field(default_factory=Transaction)
    group_adds: dict[str, set[str]] = field(default_factory=dict)
    group_removes: dict[str, set[str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.changes)

    def join_group(self, group: str, uid: str) -> None:
        self.group_adds.setdefault(group, set()).add(uid)

    def leave_group(self, group: str, uid: str) -> None:
        self.group_removes.setdefault(group, set()).add(uid)

    def finalize(self, groups: dict[str, Group]) -> None:
        """Turn membership deltas into one modify per group.

        groupOfNames needs at least one member, so a group that becomes empty
        keeps the placeholder, and the placeholder goes when a real member
        arrives.
        """
        names = sorted(set(self.group_adds) | set(self.group_removes))
        placeholder = self.directory.placeholder_dn
        for name in names:
            current = set(groups[name].members)
            adds = self.group_adds.get(name, set()) - current
            removes = self.group_removes.get(name, set()) & current
            if not adds and not removes:
                continue
            mods: list[tuple[str, list[Any]]] = []
            after = (current | adds) - removes
            if adds:
                mods.append((ldap3.MODIFY_ADD, [self._dn(u) for u in sorted(adds)]))
            if removes:
                mods.append((ldap3.MODIFY_DELETE, [self._dn(u) for u in sorted(removes)]))
            if not current and after:
                mods.append((ldap3.MODIFY_DELETE, [placeholder]))
            if current and not after:
                mods.append((ldap3.MODIFY_ADD, [placeholder]))
            self.tx.modify(f"cn={name},{self.directory.groups_dn}", {"member": mods},
                           f"group {name}")
        self.group_adds.clear()
        self.group_removes.clear()

    def _dn(self, uid: str) -> str:
        return f"uid={uid},{self.directory.people_dn}"

    def apply(self, conn: ldap3.Connection) -> None:
        """Commit; a commit cut off by a broken connection is read back and settled."""
        self.tx.commit(conn, settle=self.directory)

    def render(self) -> str:
        return "\n".join(c.render() for c in self.changes) or "No changes."

    def summary(self) -> dict[str, int]:
        counts = {"create": 0, "change": 0, "remove": 0}
        for change in self.changes:
            counts[{"+": "create", "~": "change", "-": "remove"}[change.action]] += 1
        return counts
