"""DokuWiki: members' and groups' namespaces and their access rules, following the directory.

authldap makes DokuWiki read accounts and groups from LDAP, so there is no account to create:
what the sync keeps up is the ACL. Every active member gets a personal namespace ``user:<uid>:*``
that only they may read and write, with a welcome start page; every group of an active member
gets ``group:<cn>:*``, writable by the group's members only. Suspension ends the member's live
sessions; a purge removes their namespace and every ACL line naming them.

acl.auth.php has two owners, each with its own marked block (DokuWiki has no include for ACLs):
the deployment (role ``wiki``: the coop's static rules, ``# BEGIN coopctl deploy (wiki_acl)``)
and this connector (``# BEGIN coopctl sync``). Rules outside both blocks were added by hand (in
DokuWiki's ACL manager, say): they are kept, and reported as findings.

Reads are one SSH command (the ACL file and the namespace directories); changes are one run of
``playbooks/sync.yml`` (``roles/wiki/tasks/sync.yml``) per sync, carrying the whole batch.

A suspended (``DISABLED``) member keeps their personal rule and pages: authldap's user filter
already refuses their login, so the rule grants nothing, and a member who comes back finds
everything as it was. Group rules are only ever added (for groups with an active member among
those synced): a sync narrowed to a few members cannot tell an empty group from one whose
members were not passed, and a rule for a group nobody is in grants nothing.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.errors import CoopError
from provisioner.services.base import (
    Action,
    ChangeResult,
    Connector,
    Desired,
    Finding,
    MemberState,
    Phase,
    PlaybookExport,
    Report,
    ServiceChange,
    ServiceUnavailable,
)

SYNC_BEGIN = "# BEGIN coopctl sync"
SYNC_END = "# END coopctl sync"
DEPLOY_BEGIN = "# BEGIN coopctl deploy (wiki_acl)"
DEPLOY_END = "# END coopctl deploy (wiki_acl)"

#: DokuWiki's permission levels used by the sync's rules.
NONE, UPLOAD, DELETE = 0, 8, 16
#: The member owns their namespace (may delete their own media); a group's members edit,
#: create and upload in theirs, like every member does in the rest of the wiki.
PERSONAL_LEVEL = DELETE
GROUP_LEVEL = UPLOAD

#: What one namespace holds in DokuWiki's data directory (the observe read lists each).
AREAS = ("pages", "media", "attic", "media_attic", "meta", "media_meta")
_AREA_MARK = "@@coopctl-wiki-area "

# One SSH read: the ACL file, then the namespace directories under each area's user/ (``ls -p``
# marks directories with a trailing slash; page files such as user:start are not namespaces).
# Fixed text: the two paths come from the settings as positional arguments, no member data.
_OBSERVE_SCRIPT = (
    'cat -- "$1" && for area in ' + " ".join(AREAS) + "; do "
    f"printf '\\n{_AREA_MARK}%s\\n' \"$area\"; "
    'if [ -d "$2/$area/user" ]; then ls -1Ap -- "$2/$area/user"; fi; done'
)

# auth_nameencode (inc/auth.php): every ASCII character other than letters and digits becomes
# '%' + its code in lower-case hex without padding; non-ASCII characters are left as they are.
_ENCODED = re.compile(r"[\x00-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]")
_RULE = re.compile(r"^(\S+)[ \t]+(\S+)[ \t]+(-?\d+)")


def acl_encode(name: str) -> str:
    """A user or group name as DokuWiki writes and compares it in acl.auth.php."""
    return _ENCODED.sub(lambda m: f"%{ord(m.group(0)):x}", name)


def acl_decode(name: str) -> str:
    """The inverse of acl_encode (DokuWiki documents rawurldecode for it)."""
    return re.sub(r"%([0-9a-fA-F]{1,2})", lambda m: chr(int(m.group(1), 16)), name)


def page_name(name: str) -> str:
    """One namespace level for a uid or group name, as DokuWiki's cleanID would make it.

    Lower case; characters other than letters, digits, '.', '-' and '_' become '_'; no leading
    or trailing separator. Names valid in coopctl (uids, group identifiers) come out unchanged.
    """
    cleaned = re.sub(r"[^a-z0-9._-]", "_", name.lower())
    return re.sub(r"_{2,}", "_", cleaned).strip("._-")


def personal_scope(uid: str) -> str:
    return f"user:{page_name(uid)}:*"


def group_scope(group: str) -> str:
    return f"group:{page_name(group)}:*"


def personal_rules(uid: str) -> list[str]:
    """The member alone (``@ALL 0`` shuts out everyone else, members included)."""
    scope = personal_scope(uid)
    return [f"{scope}\t@ALL\t{NONE}", f"{scope}\t{acl_encode(uid)}\t{PERSONAL_LEVEL}"]


def group_rules(group: str) -> list[str]:
    """The group's members alone."""
    scope = group_scope(group)
    return [f"{scope}\t@ALL\t{NONE}", f"{scope}\t@{acl_encode(group)}\t{GROUP_LEVEL}"]


def _scope_order(scope: str) -> tuple[int, str]:
    kind = 0 if scope.startswith("group:") else 1 if scope.startswith("user:") else 2
    return kind, scope


@dataclass
class SyncBlock:
    """The sync's block of acl.auth.php as rules grouped by scope (page or namespace).

    The sync owns whole scopes: writing a member's or a group's rules replaces every line of
    that scope in the block. Lines that are not rules (comments) are dropped on rewrite.
    """

    scopes: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, lines: Sequence[str]) -> SyncBlock:
        block = cls()
        for line in lines:
            match = _RULE.match(line.strip())
            if match:
                block.scopes.setdefault(match.group(1), []).append(line.strip())
        return block

    def render(self) -> list[str]:
        """Canonical order (groups, then members, each sorted), so a rewrite is stable."""
        return [line for scope in sorted(self.scopes, key=_scope_order)
                for line in self.scopes[scope]]

    def drop_user(self, uid: str) -> None:
        """Every line of the member's namespace, and every line naming them in other scopes."""
        self.scopes.pop(personal_scope(uid), None)
        encoded = acl_encode(uid)
        for scope in list(self.scopes):
            kept = [line for line in self.scopes[scope] if _RULE.match(line).group(2) != encoded]
            if kept:
                self.scopes[scope] = kept
            else:
                del self.scopes[scope]


@dataclass
class AclFile:
    """acl.auth.php split by owner."""

    sync_block: list[str] | None          # None: the file has no sync block yet
    hand_rules: list[str]                 # rules outside both owners' blocks

    @classmethod
    def parse(cls, text: str) -> AclFile:
        sync: list[str] | None = None
        hand: list[str] = []
        owner = None
        for raw in text.splitlines():
            line = raw.strip()
            if line == SYNC_BEGIN:
                owner, sync = "sync", []
            elif line == DEPLOY_BEGIN:
                owner = "deploy"
            elif line in (SYNC_END, DEPLOY_END):
                owner = None
            elif owner == "sync":
                assert sync is not None
                sync.append(line)
            elif owner is None and _RULE.match(line):
                hand.append(line)
        return cls(sync_block=sync, hand_rules=hand)


@dataclass
class WikiObservation:
    """What observe() saw: the sync's block, hand-made rules, namespaces, remembered marks."""

    block: SyncBlock
    has_block: bool
    hand_rules: list[str]
    namespaces: set[str]                  # namespace directories under any area's user/
    created: set[str] = field(default_factory=set)    # uids whose namespace the sync created
    suspended: set[str] = field(default_factory=set)  # uids whose sessions the sync ended
    findings: list[Finding] = field(default_factory=list)

    @property
    def accounts(self) -> Collection[str]:
        """Uids the wiki holds something for: a personal rule or a namespace directory."""
        ruled = {scope.split(":")[1] for scope in self.block.scopes
                 if scope.startswith("user:") and scope.endswith(":*") and scope.count(":") == 2}
        return ruled | self.namespaces

    def hand_users(self) -> set[str]:
        """Users (not groups) named by rules added by hand, decoded."""
        users = set()
        for line in self.hand_rules:
            subject = _RULE.match(line).group(2)
            if not subject.startswith("@"):
                users.add(acl_decode(subject))
        return users


def parse_observation(text: str) -> tuple[str, set[str]]:
    """Split the observe read's output into the ACL file's text and the namespace names."""
    acl, _, rest = text.partition("\n" + _AREA_MARK)
    namespaces = set()
    for line in rest.splitlines():
        if line.endswith("/") and not line.startswith(_AREA_MARK):
            namespaces.add(line.rstrip("/"))
    return acl, namespaces


class WikiConnector(PlaybookExport, Connector):
    """DokuWiki on the host of ``host_group``, changed through playbooks/sync.yml."""

    export_var = "coop_sync_wiki"
    export_file = "wiki.tar"
    name = "wiki"

    @property
    def host_group(self) -> str:
        return str(self.runtime.settings.get("host_group", "wiki_servers"))

    @property
    def data_dir(self) -> str:
        return str(self.runtime.settings.get("data_dir", "/var/lib/dokuwiki/data"))

    @property
    def acl_file(self) -> str:
        return str(self.runtime.settings.get("acl_file", "/var/lib/dokuwiki/acl/acl.auth.php"))

    # -- observe -------------------------------------------------------------------------------

    def observe(self, uids: Collection[str] | None = None) -> WikiObservation:
        """One SSH read (the whole ACL file and namespace listing: narrowing saves nothing)."""
        try:
            out = self.runtime.hosts.read(
                self.host_group, ["sh", "-c", _OBSERVE_SCRIPT, "sh", self.acl_file, self.data_dir])
        except Exception as exc:  # HostError, and whatever the SSH layer raises
            raise ServiceUnavailable(f"wiki host ({self.host_group}) unreadable: {exc}") from None
        acl_text, namespaces = parse_observation(out)
        acl = AclFile.parse(acl_text)
        observation = WikiObservation(
            block=SyncBlock.parse(acl.sync_block or []),
            has_block=acl.sync_block is not None,
            hand_rules=acl.hand_rules,
            namespaces=namespaces,
            created=set(self.runtime.state.marks(self.name, "created")),
            suspended=set(self.runtime.state.marks(self.name, "suspended")),
        )
        observation.findings = self._findings(observation)
        return observation

    def _findings(self, observed: WikiObservation) -> list[Finding]:
        findings = []
        for line in observed.hand_rules:
            subject = _RULE.match(line).group(2)
            uid = "" if subject.startswith("@") else acl_decode(subject)
            findings.append(Finding(
                self.name, uid,
                f"wiki ACL edited by hand: {line.expandtabs(1)!r} is outside coopctl's blocks "
                "(kept; put static rules in wiki_acl)"))
        for scope, lines in observed.block.scopes.items():
            if scope.startswith("user:") and scope.count(":") == 2:
                expected = personal_rules(scope.split(":")[1])
                if lines != expected:
                    findings.append(Finding(
                        self.name, scope.split(":")[1],
                        f"wiki ACL edited by hand: rules of {scope} in coopctl's block are not "
                        "the sync's own (rewritten at the member's next change)"))
        return findings

    # -- plan ----------------------------------------------------------------------------------

    def plan(self, desired: Mapping[str, Desired],
             observed: WikiObservation) -> list[ServiceChange]:
        """Per member present in `desired` only; everyone else's lines are left as they are."""
        changes: list[ServiceChange] = []
        scopes = observed.block.scopes
        hand_users = observed.hand_users()
        for uid in sorted(desired):
            want = desired[uid]
            member = want.member
            scope = personal_scope(uid)
            have = scopes.get(scope)
            has_namespace = page_name(uid) in observed.namespaces
            if want.phase is Phase.ACTIVE:
                if uid in observed.suspended:
                    changes.append(self._change(Action.RESTORE, uid))
                if have is None and uid in observed.created:
                    changes.append(self._change(Action.UPDATE, uid, rule=f"{scope} restored"))
                elif have is None or (uid not in observed.created and not has_namespace):
                    changes.append(self._change(
                        Action.CREATE, uid, namespace=scope[:-2],
                        name=member.display_name or uid, language=member.language))
                elif have != personal_rules(uid):
                    changes.append(self._change(Action.UPDATE, uid, rule=f"{scope} corrected"))
                missing = sorted(g for g in member.groups
                                 if page_name(g) and scopes.get(group_scope(g)) != group_rules(g))
                if missing:
                    changes.append(self._change(Action.GROUPS, uid, add=missing))
            elif want.phase is Phase.DISABLED:
                if uid not in observed.suspended and (have is not None or has_namespace
                                                      or uid in observed.created):
                    changes.append(self._change(Action.SUSPEND, uid))
            elif (have is not None or has_namespace or uid in hand_users
                  or any(_names(line, uid) for lines in scopes.values() for line in lines)):
                changes.append(self._change(Action.PURGE, uid, namespace=scope[:-2]))
        return changes

    def _change(self, action: Action, uid: str, **detail: Any) -> ServiceChange:
        return ServiceChange(self.name, action, uid, detail)

    # -- apply ---------------------------------------------------------------------------------

    def apply(self, changes: Sequence[ServiceChange], report: Report) -> None:
        """One playbook run for the whole batch: the sync's block rewritten, items per member."""
        if not changes:
            return
        try:
            current = self.observe()
        except ServiceUnavailable as exc:
            for change in changes:
                report(ChangeResult(change, ok=False, error=str(exc)))
            return
        block = SyncBlock(scopes={k: list(v) for k, v in current.block.scopes.items()})
        before = block.render()
        items: list[dict[str, Any]] = []
        ready: list[ServiceChange] = []
        for change in changes:
            uid, action = change.uid, change.action
            if action in (Action.CREATE, Action.UPDATE):
                block.scopes[personal_scope(uid)] = personal_rules(uid)
            if action is Action.CREATE:
                items.append({"uid": uid, "action": "create", "ns": page_name(uid),
                              "name": str(change.detail.get("name") or uid),
                              "language": str(change.detail.get("language") or "en")})
            elif action is Action.GROUPS:
                for group in change.detail.get("add", ()):
                    block.scopes[group_scope(group)] = group_rules(group)
            elif action is Action.SUSPEND:
                items.append({"uid": uid, "action": "suspend"})
            elif action is Action.PURGE:
                block.drop_user(uid)
                items.append({"uid": uid, "action": "purge", "ns": page_name(uid),
                              "acl_user": acl_encode(uid)})
            elif action not in (Action.UPDATE, Action.RESTORE):
                report(ChangeResult(change, ok=False,
                                    error=f"the wiki connector does not apply {action}"))
                continue
            ready.append(change)
        batch: dict[str, Any] = {"acl_file": self.acl_file, "data_dir": self.data_dir,
                                 "changes": items}
        rules = block.render()
        if rules != before or (rules and not current.has_block):
            batch["rules"] = rules
        if items or "rules" in batch:
            outcome = self._run(batch)
        else:
            outcome = {"ok": True, "error": None, "failed_items": {}}
        failed: Mapping[str, str] = outcome.get("failed_items") or {}
        for change in ready:
            if not outcome["ok"]:
                report(ChangeResult(change, ok=False, error=outcome["error"]))
            elif change.uid in failed:
                report(ChangeResult(change, ok=False, error=failed[change.uid]))
            else:
                self._remember(change)
                report(ChangeResult(change, ok=True))

    def _run(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        try:
            return self.runtime.hosts.playbook("sync.yml", {"coop_sync_wiki": dict(batch)})
        except CoopError as exc:
            return {"ok": False, "error": f"cannot run the wiki's sync playbook: {exc}",
                    "failed_items": {}}

    def _remember(self, change: ServiceChange) -> None:
        """Marks that make the next plan idempotent (see plan)."""
        state, uid = self.runtime.state, change.uid
        if change.action is Action.CREATE:
            state.mark(self.name, "created", uid)
        elif change.action is Action.SUSPEND:
            state.mark(self.name, "suspended", uid)
        elif change.action is Action.RESTORE:
            state.unmark(self.name, "suspended", uid)
        elif change.action is Action.PURGE:
            state.unmark(self.name, "created", uid)
            state.unmark(self.name, "suspended", uid)

    # -- export --------------------------------------------------------------------------------

    def export_item(self, member: MemberState, dest: Path) -> dict[str, Any]:
        """``dest/wiki.tar``: the member's namespace (pages, media, old revisions, metadata)."""
        return {"uid": member.uid, "action": "export", "ns": page_name(member.uid),
                "dest": str(dest.resolve())}

    def export_vars(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """The wiki's batch is one dict (paths and changes), not a list of items."""
        return {self.export_var: {"acl_file": self.acl_file, "data_dir": self.data_dir,
                                  "changes": items}}


def _names(line: str, uid: str) -> bool:
    """Whether a rule line names the member as its user."""
    match = _RULE.match(line)
    return bool(match) and match.group(2) == acl_encode(uid)
