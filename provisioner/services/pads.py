"""Pads: Etherpad (1.8.14, HTTP API 1.2.15) kept in line with the directory.

Etherpad has no accounts and no group membership: it has *authors*, *groups* (a space of group
pads) and *sessions* (a grant of one author to one group until a date, handed to the browser as
the ``sessionID`` cookie). coopctl maps the directory onto that:

- each member is an author, ``createAuthorIfNotExistsFor(authorMapper=<uid>)``, and owns a
  personal group, ``createGroupIfNotExistsFor("user:<uid>")``, for the pads they create (so that
  "the pads they created" can be exported and removed when they leave);
- each directory group is an Etherpad group, ``createGroupIfNotExistsFor("group:<cn>")``.
  No pad is created in it: the group space exists, its members create the pads (a welcome pad
  would be content coopctl then owns and must never overwrite);
- access to group pads is by sessions, which a portal (the SSO) creates at login. coopctl only
  takes them away: suspending a member deletes every session of their author, and leaving a
  directory group deletes their sessions in that group's Etherpad group.

Every call is a form-encoded POST to ``/api/<version>/<method>`` with the API key **in the body**:
a key in the URL would land in nginx's access log. Etherpad has no reverse listings (no "all
authors", no mapper of a group), so the IDs Etherpad hands out are remembered in the state
store (see ``_IdBook``) and re-derived with the idempotent ``create...IfNotExistsFor`` calls when
they are missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar
from urllib.parse import quote

import requests

from provisioner.services.base import (
    SUSPEND_PARALLEL,
    Action,
    ChangeResult,
    Connector,
    Desired,
    Finding,
    MemberState,
    Observation,
    Phase,
    Report,
    Runtime,
    ServiceChange,
    ServiceUnavailable,
    StateStore,
    in_parts,
)

SERVICE = "pads"
DEFAULT_API_VERSION = "1.2.15"
TIMEOUT = 20.0
#: How long the throw-away session used to export a member's group pads lives (seconds).
EXPORT_SESSION_SECONDS = 600
#: The name a purged member's author keeps (Etherpad 1.8 cannot delete authors).
FORMER_MEMBER = "former member"
#: Etherpad's codes (doc/api/http_api.md): 0 ok, 1 wrong parameters, 2 internal error,
#: 3 no such function, 4 no or wrong API key.
CODE_OK, CODE_BAD_PARAMS, CODE_INTERNAL, CODE_NO_FUNCTION, CODE_BAD_KEY = 0, 1, 2, 3, 4


class EtherpadError(Exception):
    """Etherpad refused one call (code 1 or 2): one member's change fails, not the service."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"Etherpad {method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message


def _missing(exc: EtherpadError) -> bool:
    """True for Etherpad's "...ID does not exist" answers (stale IDs, vanished sessions)."""
    return exc.code == CODE_BAD_PARAMS and exc.message.endswith("does not exist")


def group_mapper(cn: str) -> str:
    """Etherpad's mapper of a directory group (one Etherpad group per directory group)."""
    return f"group:{cn}"


def personal_mapper(uid: str) -> str:
    """Etherpad's mapper of a member's personal group (the pads they create)."""
    return f"user:{uid}"


class _IdBook:
    """The IDs Etherpad handed out, remembered in the state store between runs.

    ``StateStore`` keeps sets of strings per (service, kind). Existence uses plain uids, as
    everywhere else: ``pads/author`` (an author and personal group were created) and
    ``pads/suspended``. The IDs themselves are kept as ``<key>=<ID>`` strings in
    ``pads/author-id`` (key: uid) and ``pads/group-id`` (key: the mapper, ``group:<cn>`` or
    ``user:<uid>``); Etherpad's IDs (``a.xxx``, ``g.xxx``) never contain ``=``, so the last
    ``=`` splits. Etherpad 1.8 cannot list authors nor tell a group's mapper: the remembered
    author IDs are what lets observe() attribute the sessions of ``listSessionsOfGroup`` to
    members, and the remembered personal groups what tells, from ``listAllGroups`` alone,
    which members Etherpad still has (no call per member).
    """

    AUTHOR, SUSPENDED = "author", "suspended"
    AUTHOR_ID, GROUP_ID = "author-id", "group-id"

    def __init__(self, state: StateStore) -> None:
        self.state = state
        # Each ID book read once from the store, then kept in step with every write: reading
        # the whole book again per member made a first sync quadratic in the coop's size.
        self._books: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def _book(self, kind: str) -> dict[str, str]:
        book = self._books.get(kind)
        if book is None:
            book, doubtful = {}, set()
            for entry in self.state.marks(SERVICE, kind):
                key, sep, value = entry.rpartition("=")
                if sep and key and value:
                    if key in book:
                        doubtful.add(key)
                    book[key] = value
            for key in doubtful:  # two IDs for one key (an older version's leftover): forget
                for entry in self.state.marks(SERVICE, kind):  # both; Etherpad derives it again
                    if entry.rpartition("=")[0] == key:
                        self.state.unmark(SERVICE, kind, entry)
                del book[key]
            self._books[kind] = book
        return book

    def _read(self, kind: str) -> Mapping[str, str]:
        with self._lock:
            return MappingProxyType(self._book(kind))

    def _write(self, kind: str, key: str, value: str | None) -> None:
        with self._lock:
            book = self._book(kind)
            old = book.get(key)
            if old == value:
                return
            # The old ID goes first: a crash in between forgets the key, and Etherpad derives
            # the same ID again from its mapper; never two IDs for one key.
            if old is not None:
                self.state.unmark(SERVICE, kind, f"{key}={old}")
                del book[key]
            if value is not None:
                self.state.mark(SERVICE, kind, f"{key}={value}")
                book[key] = value

    def reload(self) -> None:
        """Read the books from the store again at the next use."""
        with self._lock:
            self._books.clear()

    def authors(self) -> Mapping[str, str]:
        return self._read(self.AUTHOR_ID)

    def groups(self) -> Mapping[str, str]:
        return self._read(self.GROUP_ID)

    def created(self) -> set[str]:
        return set(self.state.marks(SERVICE, self.AUTHOR))

    def suspended(self) -> set[str]:
        return set(self.state.marks(SERVICE, self.SUSPENDED))

    def set_author(self, uid: str, author_id: str) -> None:
        self._write(self.AUTHOR_ID, uid, author_id)

    def set_group(self, mapper: str, group_id: str | None) -> None:
        self._write(self.GROUP_ID, mapper, group_id)

    def mark_created(self, uid: str) -> None:
        self.state.mark(SERVICE, self.AUTHOR, uid)

    def set_suspended(self, uid: str, suspended: bool) -> None:
        if suspended:
            self.state.mark(SERVICE, self.SUSPENDED, uid)
        else:
            self.state.unmark(SERVICE, self.SUSPENDED, uid)

    def forget(self, uid: str) -> None:
        """Everything coopctl remembers of a member (after a purge)."""
        self.state.unmark(SERVICE, self.AUTHOR, uid)
        self.state.unmark(SERVICE, self.SUSPENDED, uid)
        self._write(self.AUTHOR_ID, uid, None)
        self._write(self.GROUP_ID, personal_mapper(uid), None)

    def known(self) -> set[str]:
        """Uids of which coopctl remembers anything (a purge must clean all of it)."""
        personal = {key.removeprefix("user:") for key in self.groups() if key.startswith("user:")}
        return self.created() | self.suspended() | set(self.authors()) | personal


@dataclass(frozen=True)
class Session:
    """One Etherpad session of an author (its ID is a bearer secret and is not kept)."""

    group_id: str
    valid_until: int


@dataclass
class PadsObservation:
    """What observe() saw: the authors and groups coopctl made, and the authors' sessions.

    ``sessions`` holds, for each present author, their sessions in directory groups; for
    members marked suspended, every session (personal group included).
    """

    authors: dict[str, str]                  # uid -> author ID, present in Etherpad
    personal_groups: dict[str, str]          # uid -> group ID of "user:<uid>", existing
    groups: dict[str, str]                   # cn -> group ID of "group:<cn>", existing
    sessions: dict[str, list[Session]]       # uid -> sessions of their author (see above)
    suspended: set[str]                      # uids marked suspended
    known: set[str]                          # uids of which the state remembers anything
    all_groups: frozenset[str] = frozenset()  # every group ID in Etherpad
    findings: list[Finding] = field(default_factory=list)

    @property
    def accounts(self) -> Collection[str]:
        return self.authors.keys()


class PadsConnector(Connector):
    """Etherpad through its HTTP API (key in the POST body, TLS checked against the coop CA)."""

    name: ClassVar[str] = SERVICE

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        settings = runtime.settings
        # Checked at the first call, so that a bad pads section stops only this service.
        self.url = str(settings.get("url") or "").rstrip("/")
        self.api_version = str(settings.get("api_version") or DEFAULT_API_VERSION)
        self.timeout = float(settings.get("timeout") or TIMEOUT)
        self._headers: dict[str, str] = {}
        if settings.get("host_header"):
            self._headers["Host"] = str(settings["host_header"])
        self._verify: bool | str = runtime.ca_file or True
        self._http = requests.Session()
        # coopctl talks to the coop's own hosts: no proxy or netrc from the environment.
        self._http.trust_env = False
        self._key: str | None = None
        self.ids = _IdBook(runtime.state)
        self._fresh_groups: set[str] = set()  # group mappers asked of Etherpad in this run

    # -- HTTP API ---------------------------------------------------------------------------

    def _api_key(self) -> str:
        if self._key is None:
            try:
                key = self.runtime.secret("api_key_file")
            except Exception as exc:  # the reader's own message names the file, not its content
                raise ServiceUnavailable(f"pads: cannot read the API key: {exc}") from None
            key = (key or "").strip()
            if not key:
                raise ServiceUnavailable(
                    "pads: no API key (set services.pads.api_key_file to a non-empty file)")
            self._key = key
        return self._key

    def _clean(self, text: str) -> str:
        """`text` without the API key (defence in depth: Etherpad never echoes it)."""
        return text.replace(self._key, "***") if self._key else text

    def call(self, method: str, **params: Any) -> Any:
        """One API call; returns Etherpad's ``data``.

        Raises ServiceUnavailable when Etherpad cannot be used at all (no answer, not
        Etherpad's JSON, key refused, unknown API version) and EtherpadError when it refused
        this one call.
        """
        if not self.url:
            raise ServiceUnavailable("pads: no `url` in services.pads of the configuration")
        body = {k: str(v) for k, v in params.items() if v is not None}
        body["apikey"] = self._api_key()
        where = f"{self.url}/api/{self.api_version}/{method}"
        try:
            answer = self._http.post(where, data=body, headers=self._headers,
                                     timeout=self.timeout, verify=self._verify,
                                     allow_redirects=False)
        except requests.RequestException as exc:
            raise ServiceUnavailable(
                self._clean(f"pads: Etherpad at {self.url} does not answer: {_reason(exc)}")
            ) from None
        try:
            reply = answer.json()
            code, message = int(reply["code"]), str(reply.get("message") or "")
        except (ValueError, KeyError, TypeError):
            raise ServiceUnavailable(
                f"pads: {self.url} answered {method} with HTTP {answer.status_code}, "
                "not Etherpad's JSON (wrong url, or a proxy in front refused it)"
            ) from None
        if code == CODE_OK:
            return reply.get("data")
        message = self._clean(message)
        if code == CODE_BAD_KEY:
            raise ServiceUnavailable(
                f"pads: Etherpad refused coopctl's API key ({message}); check "
                "services.pads.api_key_file against the host's APIKEY.txt")
        if code == CODE_NO_FUNCTION:
            raise ServiceUnavailable(
                f"pads: Etherpad does not know {method} in API {self.api_version} ({message})")
        raise EtherpadError(method, code, message)

    # -- IDs --------------------------------------------------------------------------------

    def author_id(self, uid: str, name: str | None = None) -> str:
        """The member's author ID: remembered, else derived (idempotent) and remembered.

        With `name`, the call always goes to Etherpad, which also sets the author's name.
        """
        known = self.ids.authors().get(uid)
        if known and name is None:
            return known
        data = self.call("createAuthorIfNotExistsFor", authorMapper=uid, name=name)
        author = str(data["authorID"])
        if author != known:
            self.ids.set_author(uid, author)
        return author

    def group_id(self, mapper: str, *, derive: bool = True, fresh: bool = False) -> str | None:
        """The group ID of `mapper`: remembered, else (with `derive`) created and remembered.

        `fresh` asks Etherpad even when an ID is remembered (it may have lost the group).
        """
        known = self.ids.groups().get(mapper)
        if (known and not fresh) or not derive:
            return known
        group = str(self.call("createGroupIfNotExistsFor", groupMapper=mapper)["groupID"])
        if group != known:
            self.ids.set_group(mapper, group)
        return group

    def _session_list(self, method: str, **params: str) -> dict[str, tuple[str, Session]]:
        """Session ID -> (author ID, session) from ``listSessionsOf{Group,Author}``.

        Etherpad answers null when there is none, and null for a broken entry (skipped).
        """
        data = self.call(method, **params) or {}
        out: dict[str, tuple[str, Session]] = {}
        for sid, info in data.items():
            if isinstance(info, Mapping):
                out[sid] = (str(info.get("authorID")),
                            Session(str(info.get("groupID")), int(info.get("validUntil") or 0)))
        return out

    def _sessions(self, author: str) -> dict[str, Session]:
        """Session ID -> session of `author`, listed now (apply does not rely on observe)."""
        listed = self._session_list("listSessionsOfAuthor", authorID=author)
        return {sid: session for sid, (_, session) in listed.items()}

    def _end_sessions(self, author: str, groups: Collection[str] | None = None) -> int:
        """Delete the author's sessions (only in `groups` when given); how many went."""
        ended = 0
        for sid, session in self._sessions(author).items():
            if groups is not None and session.group_id not in groups:
                continue
            try:
                self.call("deleteSession", sessionID=sid)
            except EtherpadError as exc:
                if not _missing(exc):  # gone meanwhile (expired, deleted by the portal)
                    raise
            ended += 1
        return ended

    # -- observe / plan ---------------------------------------------------------------------

    def observe(self, uids: Collection[str] | None = None) -> PadsObservation:
        """One ``listAllGroups``, one ``listSessionsOfGroup`` per directory group, and one
        ``listSessionsOfAuthor`` per member marked suspended: O(groups + suspended members).

        - Existence, without a call per member: a member's author counts as present when
          their personal group ``user:<uid>`` is in ``listAllGroups`` (coopctl creates both
          together, and Etherpad loses both together when its database is reset) or when a
          session of that author is seen. A created member whose personal group is gone
          counts as absent, with a Finding, so the plan creates author and group again; a
          directory group not in ``listAllGroups`` counts as absent likewise.
        - Sessions in directory groups (the ``groups`` rule of plan) come from
          ``listSessionsOfGroup``, attributed to members through the remembered author IDs.
        - Members marked suspended get ``listSessionsOfAuthor`` (every session, personal
          group included: a session handed out after the suspension is ended at the next
          sync). An active member's sessions in their personal group are not observed (no
          plan rule needs them); a member newly disabled still gets ``suspend`` (not yet
          marked), and apply lists the author's sessions itself before ending them.
        """
        wanted = None if uids is None else set(uids)

        def keep(uid: str) -> bool:
            return wanted is None or uid in wanted

        self.ids.reload()  # another process (a sync beside the watcher) may have written
        all_groups = frozenset(self.call("listAllGroups")["groupIDs"] or ())
        groups, personal = {}, {}
        for mapper, gid in dict(self.ids.groups()).items():
            if gid not in all_groups:
                continue
            kind, _, key = mapper.partition(":")
            if kind == "group":
                groups[key] = gid
            elif kind == "user":
                personal[key] = gid
        remembered = {uid: a for uid, a in dict(self.ids.authors()).items() if keep(uid)}
        uid_of = {author: uid for uid, author in remembered.items()}
        found: dict[str, dict[str, Session]] = {}  # uid -> session ID -> session
        for cn in sorted(groups):
            try:
                listed = self._session_list("listSessionsOfGroup", groupID=groups[cn])
            except EtherpadError as exc:
                if not _missing(exc):
                    raise
                del groups[cn]  # deleted since listAllGroups: absent
                continue
            for sid, (author, session) in listed.items():
                if author in uid_of:
                    found.setdefault(uid_of[author], {})[sid] = session
        authors = {uid: a for uid, a in remembered.items() if uid in personal or uid in found}
        findings: list[Finding] = []
        created, suspended = self.ids.created(), self.ids.suspended()
        for uid in sorted(suspended & remembered.keys()):
            author = remembered[uid]
            try:
                listed = self._session_list("listSessionsOfAuthor", authorID=author)
            except EtherpadError as exc:
                if not _missing(exc):
                    raise
                authors.pop(uid, None)
                found.pop(uid, None)
                if uid in created:
                    findings.append(Finding(SERVICE, uid, f"author {author} is no longer in "
                                            "Etherpad (database reset?); it will be re-created"))
                continue
            authors[uid] = author
            found[uid] = {sid: session for sid, (_, session) in listed.items()}
        reported = {f.uid for f in findings}
        for uid in sorted(created - personal.keys() - reported):
            if keep(uid):
                findings.append(Finding(SERVICE, uid, f"the personal group user:{uid} is no "
                                        "longer in Etherpad (database reset?); author and "
                                        "group will be re-created"))
        sessions = {uid: sorted(found.get(uid, {}).values(),
                                key=lambda s: (s.group_id, s.valid_until)) for uid in authors}
        known = self.ids.known()
        if wanted is not None:
            known &= wanted
            personal = {uid: gid for uid, gid in personal.items() if uid in wanted}
        return PadsObservation(authors=authors, personal_groups=personal, groups=groups,
                               sessions=sessions, suspended=suspended, known=known,
                               all_groups=all_groups, findings=findings)

    def plan(self, desired: Mapping[str, Desired], observed: Observation) -> list[ServiceChange]:
        """Compare each member's phase with what Etherpad shows (pure).

        The ``sessions`` count of ``suspend`` and ``purge`` is what observe saw: for a member
        not yet marked suspended, their sessions in directory groups only. Apply lists the
        author's sessions itself and ends every one.
        """
        if not isinstance(observed, PadsObservation):
            raise TypeError(f"pads cannot plan from {type(observed).__name__}")
        obs = observed
        by_group_id = {gid: cn for cn, gid in obs.groups.items()}
        changes: list[ServiceChange] = []
        for uid in sorted(desired):
            want = desired[uid]
            member = want.member
            sessions = obs.sessions.get(uid, [])
            if want.phase is Phase.ACTIVE:
                if uid not in obs.authors or uid not in obs.personal_groups:
                    changes.append(self._change(Action.CREATE, uid, name=member.display_name))
                if uid in obs.suspended:
                    changes.append(self._change(Action.RESTORE, uid))
                add = sorted(cn for cn in member.groups if cn not in obs.groups)
                left = sorted({by_group_id[s.group_id] for s in sessions
                               if s.group_id in by_group_id} - set(member.groups))
                if add or left:
                    changes.append(self._change(Action.GROUPS, uid, add=add, remove=left))
            elif want.phase is Phase.DISABLED:
                if uid in obs.authors and (sessions or uid not in obs.suspended):
                    changes.append(self._change(Action.SUSPEND, uid, sessions=len(sessions)))
            elif uid in obs.known or uid in obs.authors:  # PURGE or GONE
                changes.append(self._change(Action.PURGE, uid, sessions=len(sessions),
                                            personal_group=uid in obs.personal_groups))
        return changes

    def _change(self, action: Action, uid: str, **detail: Any) -> ServiceChange:
        return ServiceChange(SERVICE, action, uid, detail)

    # -- apply ------------------------------------------------------------------------------

    def apply(self, changes: Sequence[ServiceChange], report: Report) -> None:
        """Apply each change; one member's failure is reported and the others go on.

        Suspensions first, SUSPEND_PARALLEL at a time: a burst of them must end sessions
        within seconds, and each is a few API calls that wait for Etherpad. When Etherpad
        cannot be used at all (ServiceUnavailable), the change at hand and every remaining
        one are reported as failed, then ServiceUnavailable is raised for the sync.
        """
        self._fresh_groups = set()
        down: list[str] = []

        def one(change: ServiceChange) -> None:
            if down:
                report(ChangeResult(change, ok=False, error=f"not attempted: {down[0]}"))
                return
            try:
                self._apply_one(change)
            except ServiceUnavailable as exc:
                down.append(self._clean(str(exc)))
                report(ChangeResult(change, ok=False, error=self._clean(str(exc))))
            except EtherpadError as exc:
                report(ChangeResult(change, ok=False, error=self._clean(str(exc))))
            except Exception as exc:  # a bug must not stop the other members either
                report(ChangeResult(change, ok=False,
                                    error=self._clean(f"{type(exc).__name__}: {exc}")))
            else:
                report(ChangeResult(change, ok=True))

        def part(_: int, part_changes: Sequence[ServiceChange]) -> None:
            for change in part_changes:
                one(change)

        suspends = [c for c in changes if c.action is Action.SUSPEND]
        if suspends:
            in_parts(suspends, min(SUSPEND_PARALLEL, len(suspends)), part)
        for change in changes:
            if change.action is not Action.SUSPEND:
                one(change)
        if down:
            raise ServiceUnavailable(down[0])

    def _apply_one(self, change: ServiceChange) -> None:
        uid, detail = change.uid, change.detail
        if change.action is Action.CREATE:
            # Always through Etherpad (not from memory): sets the display name, and re-creates
            # an author or group that Etherpad lost.
            self.author_id(uid, name=str(detail.get("name") or uid))
            self.group_id(personal_mapper(uid), fresh=True)
            self.ids.mark_created(uid)
        elif change.action is Action.RESTORE:
            # Nothing to undo in Etherpad: the portal hands out sessions again at next login.
            self.ids.set_suspended(uid, False)
        elif change.action is Action.GROUPS:
            for cn in detail.get("add", ()):
                mapper = group_mapper(cn)
                if mapper not in self._fresh_groups:  # once per run, not once per member
                    self.group_id(mapper, fresh=True)  # a stale ID is replaced
                    self._fresh_groups.add(mapper)
            left = {gid for cn in detail.get("remove", ())
                    if (gid := self.group_id(group_mapper(cn), derive=False))}
            if left:
                self._end_sessions(self.author_id(uid), left)
        elif change.action is Action.SUSPEND:
            self._end_sessions(self.author_id(uid))
            self.ids.set_suspended(uid, True)
        elif change.action is Action.PURGE:
            self._purge(uid)
        else:
            raise ValueError(f"pads does not handle {change.action}")

    def _purge(self, uid: str) -> None:
        """End the sessions, delete the personal group (Etherpad deletes its pads with it).

        Etherpad 1.8 cannot delete an author (API 1.2.15 has no such call; anonymizeAuthor
        arrives with API 1.3.1): the record stays, its name replaced by FORMER_MEMBER so that
        shared pads no longer show the member's name (an empty name is ignored by Etherpad).
        Pads the member edited in shared groups stay (they are the group's).
        """
        author = self.ids.authors().get(uid)
        if author is not None:
            try:
                self._end_sessions(author)
                # API 1.2.15 has no setAuthorName; this sets the name of the uid's author.
                self.call("createAuthorIfNotExistsFor", authorMapper=uid, name=FORMER_MEMBER)
            except EtherpadError as exc:
                if not _missing(exc):
                    raise
        group = self.group_id(personal_mapper(uid), derive=False)
        if group is not None:
            try:
                self.call("deleteGroup", groupID=group)
            except EtherpadError as exc:
                if not _missing(exc):
                    raise
        self.ids.forget(uid)

    # -- export -----------------------------------------------------------------------------

    def export(self, member: MemberState, dest: Path) -> list[Path]:
        """Every pad of the member's personal group and every pad they edited.

        Each pad is written as ``<padID>.txt`` and ``<padID>.html`` (``getText``/``getHTML``,
        always available through the API) and, when Etherpad lets it, as ``<padID>.etherpad``:
        Etherpad's full JSON export (revisions, authors, chat; it can be imported again),
        fetched from ``/p/<padID>/export/etherpad``. That endpoint takes no API key; group pads
        need a session, so a throw-away one (10 minutes, deleted at the end) is made for the
        member's author in each group concerned. Etherpad limits exports to 10 per 90 s per
        address (``importExportRateLimiting``): past that, the remaining pads get .txt and
        .html only. Any other refusal raises ServiceUnavailable: the archive would be
        incomplete, and the sync must not purge.
        """
        dest.mkdir(parents=True, exist_ok=True)
        if member.uid not in self.ids.known():
            return []
        try:
            return self._export(member.uid, dest)
        except EtherpadError as exc:
            # The sync purges only after a complete archive: an incomplete export must stop it.
            raise ServiceUnavailable(
                self._clean(f"pads: cannot export {member.uid}'s pads: {exc}")) from None

    def _export(self, uid: str, dest: Path) -> list[Path]:
        author = self.author_id(uid)
        pads: set[str] = set()
        group = self.group_id(personal_mapper(uid))
        if group is not None:
            try:
                pads.update(self.call("listPads", groupID=group)["padIDs"] or ())
            except EtherpadError as exc:
                if not _missing(exc):
                    raise
        pads.update(self.call("listPadsOfAuthor", authorID=author)["padIDs"] or ())
        written: list[Path] = []
        sessions: dict[str, str] = {}
        full_export = True
        try:
            for pad in sorted(pads):
                stem = _file_stem(pad)
                text = self.call("getText", padID=pad)["text"]
                html = self.call("getHTML", padID=pad)["html"]
                for suffix, content in ((".txt", text), (".html", html)):
                    path = dest / f"{stem}{suffix}"
                    path.write_text(content, encoding="utf-8")
                    written.append(path)
                if full_export:
                    raw = self._export_raw(pad, author, sessions)
                    if raw is None:
                        full_export = False
                    else:
                        path = dest / f"{stem}.etherpad"
                        path.write_bytes(raw)
                        written.append(path)
        finally:
            for sid in sessions.values():
                # one that cannot be deleted expires within EXPORT_SESSION_SECONDS
                with contextlib.suppress(EtherpadError):
                    self.call("deleteSession", sessionID=sid)
        return written

    def _export_raw(self, pad: str, author: str, sessions: dict[str, str]) -> bytes | None:
        """Etherpad's JSON export of `pad`, or None when the rate limit is reached."""
        headers = dict(self._headers)
        if "$" in pad:
            group = pad.split("$", 1)[0]
            if group not in sessions:
                until = int(time.time()) + EXPORT_SESSION_SECONDS
                sessions[group] = str(self.call("createSession", groupID=group,
                                                authorID=author, validUntil=until)["sessionID"])
            headers["Cookie"] = f"sessionID={sessions[group]}"
        where = f"{self.url}/p/{quote(pad, safe='')}/export/etherpad"
        try:
            answer = self._http.get(where, headers=headers, timeout=self.timeout,
                                    verify=self._verify, allow_redirects=False)
        except requests.RequestException as exc:
            raise ServiceUnavailable(
                f"pads: Etherpad at {self.url} does not answer: {_reason(exc)}") from None
        if answer.status_code == 429:
            return None
        if answer.status_code != 200:
            raise EtherpadError("export", answer.status_code,
                                f"GET /p/{pad}/export/etherpad answered HTTP {answer.status_code}")
        json.loads(answer.content)  # a truncated or HTML answer must not pass for an export
        return answer.content


def _file_stem(pad: str) -> str:
    """A file name for a pad ID: kept when harmless, else made safe plus a short hash."""
    safe = re.sub(r"[^A-Za-z0-9._$-]", "_", pad)
    if safe != pad or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha256(pad.encode()).hexdigest()[:8]}"
    return safe


def _reason(exc: requests.RequestException) -> str:
    """The kind of network failure and its root cause (``[Errno 111] Connection refused``,
    ``certificate verify failed``...), never the request, whose body holds the key."""
    seen: set[int] = set()
    cause: BaseException = exc
    while id(cause) not in seen:
        seen.add(id(cause))
        nxt = (getattr(cause, "reason", None) or cause.__cause__ or cause.__context__
               or next((a for a in cause.args if isinstance(a, BaseException)), None))
        if not isinstance(nxt, BaseException):
            break
        cause = nxt
    if cause is exc:
        return type(exc).__name__
    return f"{type(exc).__name__}: {cause}"
