"""The cloud (Nextcloud) connector: accounts, quotas and groups follow the directory.

Accounts are read and changed through Nextcloud's OCS provisioning API, a network API that
answers in bulk (``users/details``: every user with quota, usage, groups, enabled) and costs
one HTTP request per change. A suspension is the OCS disable, which Nextcloud checks at every
request, so every session ends with it; deleting the member's auth tokens (``occ
user:auth-tokens:delete``, one SSH command for the batch) is its follow-up, which the watcher
does not wait for (see ``follow_up``). What only the cloud host can do and changes data goes
through Ansible, batched: removing a purged member's leftover files, and copying a departing
member's files into the archive (``playbooks/roles/cloud/tasks/sync.yml``, items of
``coop_sync_cloud``).

Settings (``services.cloud`` in the configuration):

- ``url``: the cloud's base URL, e.g. ``https://10.77.0.12`` (TLS verified against the
  runtime's CA, so the certificate must name what the URL names);
- ``host_header``: sent as ``Host`` when ``url`` is an address (``cloud.demo.coop``);
- ``admin_user`` and ``admin_secret_file`` (the admin's password, read through
  ``runtime.secret``; it is sent only as basic auth, never logged or put in a message);
- ``host_group`` (default ``cloud_servers``): the inventory group of the cloud host, named in
  messages (``playbooks/sync.yml`` runs the cloud's items on that group);
- ``data_dir``: Nextcloud's data directory on the host, when it differs from the role's
  (the task file otherwise knows it from the flavour: the double's
  ``/var/lib/nextcloud-double/data``, Nextcloud's ``cloud_nextcloud_data_dir``);
- ``page_size`` (default 500): users per ``users/details`` page.

Groups: a member's cloud groups mirror their directory groups. coopctl manages only groups
that come from the directory (some desired member is in it, or coopctl has put members in it
before: remembered in the state store), so groups made by hand in the cloud are left alone.
Nextcloud's ``admin`` group is never granted nor removed by a sync.
"""

from __future__ import annotations

import secrets
import threading
import urllib.parse
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, ClassVar

import requests

from provisioner.hosts import parse_results
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
    PlaybookExport,
    Report,
    ServiceChange,
    ServiceUnavailable,
    in_parts,
)
from provisioner.validate import format_quota
from provisioner.validate import quota as parse_quota

MIB = 1024 * 1024
DEFAULT_PAGE_SIZE = 500
DEFAULT_HOST_GROUP = "cloud_servers"
TIMEOUT = 30
# Nextcloud's own administrators' group: a sync neither grants nor removes it.
UNMANAGED_GROUPS = frozenset({"admin"})
# State-store kind of the groups coopctl has put members in (so it may also take them out).
GROUP_MARK = "managed-group"
# State-store kind of the suspended members whose auth tokens are not known to be deleted: set
# before the account is disabled, cleared once the cloud host deleted their tokens. A run that
# failed (or died) in between leaves it, and the next run deletes them then.
SESSIONS_MARK = "sessions-to-end"
_ACTION_ORDER = {action: index for index, action in enumerate(Action)}
# OCS v2 success status; "already exists" answers of addUser and addGroup.
_OK = 200
_EXISTS = 102


@dataclass(frozen=True)
class CloudAccount:
    """One Nextcloud user, as ``users/details`` shows it."""

    uid: str
    enabled: bool
    quota: int | None      # bytes; None: no limit
    used: int              # bytes in the user's files
    groups: frozenset[str]


@dataclass
class CloudObservation:
    """The cloud's users and groups, plus what coopctl remembers managing."""

    users: dict[str, CloudAccount]
    groups: frozenset[str]
    managed_groups: frozenset[str] = frozenset()
    findings: list[Finding] = field(default_factory=list)
    sessions_to_end: frozenset[str] = frozenset()  # SESSIONS_MARK

    @property
    def accounts(self) -> frozenset[str]:
        return frozenset(self.users)

    def access(self, uid: str) -> str:
        """For the audit's access matrix: "yes", "disabled" (kept, locked) or "no"."""
        account = self.users.get(uid)
        if account is None:
            return "no"
        return "yes" if account.enabled else "disabled"

    def administrators(self) -> list[str]:
        """Members of Nextcloud's ``admin`` group (they can reach every account)."""
        return sorted(uid for uid, a in self.users.items() if "admin" in a.groups)


@dataclass
class _Client:
    """An OCS session and the base URL it talks to."""

    session: requests.Session
    base: str


class _Failed(Exception):
    """One OCS call failed for one member (the message never holds a secret)."""


class _Down(_Failed):
    """The service as a whole does not answer or refuses the admin: stop trying."""


def _php_round(value: Decimal, places: int) -> Decimal:
    """PHP's round(): half away from zero (Python's round() rounds half to even)."""
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def nextcloud_stored_quota(size: int) -> int:
    """The quota in bytes Nextcloud keeps for ``size`` bytes.

    Nextcloud stores a quota as ``Util::humanFileSize`` text (one decimal from MB on), so
    "1500 MB" comes back as "1.5 GB" = 1536 MiB. Comparing with this, not with the raw
    value, keeps a second plan empty after a quota that is not a round number was set.
    """
    if size < 1024:
        return size
    value = _php_round(Decimal(size) / 1024, 0)
    factor = 1024
    if value >= 1024:
        for _unit in ("MB", "GB", "TB", "PB"):
            value = _php_round(value / 1024, 1)
            factor *= 1024
            if value < 1024:
                break
    return int(_php_round(value * factor, 0))


def human_size(size: int) -> str:
    """Bytes for a person: exact MiB amounts as the directory writes them, else one decimal."""
    if size % MIB == 0:
        return format_quota(size // MIB) if size else "0 MB"
    if size >= 1024 * MIB:
        return f"{size / (1024 * MIB):.1f} GB"
    return f"{size / MIB:.1f} MB"


def _quota_bytes(quota: Any) -> int | None:
    """``quota.quota`` of OCS: bytes, or a negative number / "none" for no limit."""
    if isinstance(quota, bool) or quota in (None, "", "none", "default"):
        return None
    try:
        value = int(float(quota))
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def _account(uid: str, data: Mapping[str, Any]) -> CloudAccount:
    quota = data.get("quota") if isinstance(data.get("quota"), Mapping) else {}
    try:
        used = max(int(float(quota.get("used") or 0)), 0)
    except (TypeError, ValueError):
        used = 0
    return CloudAccount(
        uid=uid,
        enabled=bool(data.get("enabled", True)),
        quota=_quota_bytes(quota.get("quota")),
        used=used,
        groups=frozenset(str(g) for g in data.get("groups") or ()),
    )


#: Up to this many members, a narrowed observe searches for each instead of listing all.
NARROW_SEARCH_MAX = 20


class CloudConnector(PlaybookExport, Connector):
    """Nextcloud through its OCS provisioning API, host work through the sync playbook."""

    export_var = "coop_sync_cloud"
    export_file = "files.tar"

    name: ClassVar[str] = "cloud"

    # ------------------------------------------------------------------ settings
    @property
    def _settings(self) -> Mapping[str, Any]:
        return self.runtime.settings

    @property
    def _base(self) -> str:
        url = str(self._settings.get("url") or "").rstrip("/")
        if not url:
            raise ServiceUnavailable("cloud: no `url` in services.cloud of the configuration")
        return url

    @property
    def _admin(self) -> str:
        return str(self._settings.get("admin_user") or "admin")

    @property
    def _page_size(self) -> int:
        return max(int(self._settings.get("page_size") or DEFAULT_PAGE_SIZE), 1)

    @property
    def _host_group(self) -> str:
        return str(self._settings.get("host_group") or DEFAULT_HOST_GROUP)

    def _client(self) -> _Client:
        """An OCS session: basic auth of the admin, OCS-APIRequest, TLS against our CA."""
        base = self._base
        try:
            password = self.runtime.secret("admin_secret_file").strip()
        except OSError as exc:
            raise ServiceUnavailable(
                f"cloud: cannot read the admin's secret (admin_secret_file): "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        if not password:
            raise ServiceUnavailable("cloud: the admin's secret (admin_secret_file) is empty")
        session = requests.Session()
        session.auth = (self._admin, password)
        session.headers.update({"OCS-APIRequest": "true", "Accept": "application/json"})
        if self._settings.get("host_header"):
            session.headers["Host"] = str(self._settings["host_header"])
        session.verify = self.runtime.ca_file or True
        # Neither proxies nor a CA bundle from the environment: $REQUESTS_CA_BUNDLE would
        # otherwise win over the session's own CA (requests merges the environment first).
        session.trust_env = False
        return _Client(session, base)

    # ------------------------------------------------------------------ OCS
    def _ocs(
        self,
        client: _Client,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        accept: Collection[int] = (_OK,),
    ) -> tuple[int, Any]:
        """One OCS v2 call; (statuscode, data). Raises _Down or _Failed (no secret inside)."""
        url = f"{client.base}/ocs/v2.php/cloud/{path}"
        query = {"format": "json", **(params or {})}
        try:
            answer = client.session.request(method, url, params=query, data=data,
                                            timeout=TIMEOUT)
        except requests.exceptions.SSLError:
            raise _Down(f"cloud: TLS to {client.base} failed (check the CA and the "
                        "certificate's names)") from None
        except requests.RequestException as exc:
            raise _Down(f"cloud: cannot reach {client.base}: {type(exc).__name__}") from None
        try:
            meta = answer.json()["ocs"]["meta"]
            payload = answer.json()["ocs"].get("data")
            code = int(meta["statuscode"])
        except (ValueError, KeyError, TypeError):
            raise _Down(f"cloud: {client.base} answered HTTP {answer.status_code} "
                        "without an OCS body (is it Nextcloud?)") from None
        if code == 997 or answer.status_code == 401:
            raise _Down(f"cloud: {client.base} refused the admin account {self._admin!r} "
                        "(check the password in admin_secret_file)")
        if code == 403:
            raise _Down(f"cloud: the account {self._admin!r} is not an admin of the cloud")
        if code not in accept:
            message = str(meta.get("message") or "").strip()
            suffix = f" ({message[:200]})" if message else ""
            raise _Failed(f"{method} {path}: OCS {code}{suffix}")
        return code, payload

    def _pages(self, client: _Client, path: str, key: str,
               search: str | None = None) -> Iterable[Any]:
        """Page through a listing (``limit``/``offset``) until a short page."""
        offset, size = 0, self._page_size
        while True:
            params: dict[str, Any] = {"limit": size, "offset": offset}
            if search is not None:
                params["search"] = search
            _, payload = self._ocs(client, "GET", path, params=params)
            page = (payload or {}).get(key) if isinstance(payload, Mapping) else None
            # PHP serialises an empty array as [], a uid-keyed one as an object
            items = list(page.items()) if isinstance(page, Mapping) else list(page or [])
            yield from items
            if len(items) < size:
                return
            offset += size

    # ------------------------------------------------------------------ observe
    def observe(self, uids: Collection[str] | None = None) -> CloudObservation:
        """Every user in bulk (``users/details``, paged) and every group."""
        client = self._client()
        wanted = set(uids) if uids is not None else None
        users: dict[str, CloudAccount] = {}
        # A sync narrowed to a few members searches for each of them (Nextcloud's search
        # matches the uid; exact matches are kept) instead of listing every account.
        searches: list[str | None] = (sorted(wanted) if wanted is not None
                                      and len(wanted) <= NARROW_SEARCH_MAX else [None])
        try:
            for search in searches:
                for key, data in self._pages(client, "users/details", "users", search):
                    if not isinstance(data, Mapping):
                        continue
                    uid = str(data.get("id") or key)
                    if wanted is None or uid in wanted:
                        users[uid] = _account(uid, data)
            groups = frozenset(str(g) for g in self._pages(client, "groups", "groups"))
        except _Failed as exc:
            raise ServiceUnavailable(str(exc) if isinstance(exc, _Down)
                                     else f"cloud: listing failed: {exc}") from None
        finally:
            client.session.close()
        state = self.runtime.state
        return CloudObservation(users=users, groups=groups,
                                managed_groups=frozenset(state.marks(self.name, GROUP_MARK)),
                                sessions_to_end=frozenset(state.marks(self.name, SESSIONS_MARK)))

    # ------------------------------------------------------------------ plan
    def plan(self, desired: Mapping[str, Desired], observed: Observation) -> list[ServiceChange]:
        """Compare the directory with the cloud (pure).

        Findings (orphans, usage above the quota) replace ``observed.findings``, so that
        planning twice on one observation reports each fact once.
        """
        if not isinstance(observed, CloudObservation):
            raise TypeError("CloudConnector.plan needs the CloudObservation of its observe()")
        changes: list[ServiceChange] = []
        findings: list[Finding] = []
        managed = (
            observed.managed_groups
            | frozenset(g for d in desired.values() for g in d.member.groups)
        ) - UNMANAGED_GROUPS
        for uid in sorted(desired):
            want = desired[uid]
            account = observed.users.get(uid)
            changes += self._plan_member(want, account, managed, findings,
                                         uid in observed.sessions_to_end)
        for uid in sorted(observed.users.keys() - desired.keys() - {self._admin}):
            findings.append(Finding(self.name, uid,
                                    "account in the cloud that the directory does not know "
                                    "(orphan): left alone"))
        observed.findings = findings
        return changes

    def _change(self, action: Action, uid: str, **detail: Any) -> ServiceChange:
        return ServiceChange(self.name, action, uid, detail)

    def _plan_member(self, want: Desired, account: CloudAccount | None,
                     managed: frozenset[str], findings: list[Finding],
                     sessions_to_end: bool = False) -> list[ServiceChange]:
        member, uid = want.member, want.uid
        if want.phase in (Phase.PURGE, Phase.GONE):
            if account is None:
                return []
            if want.phase is Phase.PURGE:
                return [self._change(Action.PURGE, uid, account="delete", files="delete")]
            return [self._change(Action.PURGE, uid, account="delete", remnant="yes")]
        if want.phase is Phase.DISABLED:
            if account is not None and account.enabled:
                return [self._change(Action.SUSPEND, uid, login="disable", sessions="revoke")]
            if account is not None and sessions_to_end:
                # disabled by an earlier run whose token deletion failed or never ran
                return [self._change(Action.SUSPEND, uid, login="already disabled",
                                     sessions="revoke")]
            return []
        groups = sorted(member.groups - UNMANAGED_GROUPS)
        if account is None:
            detail: dict[str, Any] = {"email": member.mail, "display_name": member.display_name}
            if member.cloud_quota is not None:
                detail["quota"] = format_quota(member.cloud_quota)
            if groups:
                detail["groups"] = groups
            return [self._change(Action.CREATE, uid, **detail)]
        out: list[ServiceChange] = []
        if not account.enabled:
            out.append(self._change(Action.RESTORE, uid, login="enable"))
        if member.cloud_quota is not None:
            target = member.cloud_quota * MIB
            over = account.used - target
            if account.quota != nextcloud_stored_quota(target):
                detail = {"from": "none" if account.quota is None else human_size(account.quota),
                          "to": format_quota(member.cloud_quota)}
                if over > 0:
                    detail["over_by"] = human_size(over)
                    findings.append(Finding(self.name, uid, (
                        f"{member.display_name} ({uid}) already uses {human_size(account.used)}, "
                        f"more than the new quota {format_quota(member.cloud_quota)} (over by "
                        f"{human_size(over)}): the quota is lowered anyway, so they cannot add "
                        "files until they free space")))
                out.append(self._change(Action.QUOTA, uid, **detail))
            elif over > 0:
                findings.append(Finding(self.name, uid, (
                    f"{member.display_name} ({uid}) uses {human_size(account.used)}, more than "
                    f"their quota {format_quota(member.cloud_quota)} (over by {human_size(over)})"
                )))
        add = sorted(set(groups) - account.groups)
        remove = sorted((account.groups & managed) - member.groups)
        if add or remove:
            out.append(self._change(Action.GROUPS, uid, add=add, remove=remove))
        return out

    # ------------------------------------------------------------------ apply
    def apply(self, changes: Sequence[ServiceChange], report: Report) -> None:
        """Apply through OCS; then one playbook run for the host side of the whole batch.

        Suspensions first, SUSPEND_PARALLEL at a time (each its own OCS session): a burst of
        suspensions must end sessions within seconds, and each disable mostly waits for the
        cloud. The other changes follow one by one (creations share the groups they make)."""
        ordered = sorted(changes, key=lambda c: (_ACTION_ORDER[c.action], c.uid))
        try:
            clients = [self._client()]
        except ServiceUnavailable as exc:
            for change in ordered:
                report(ChangeResult(change, False, str(exc)))
            return
        down: list[str] = []  # the first outage: every later change fails with it
        waiting: list[tuple[ServiceChange, dict[str, Any]]] = []
        known_groups: set[str] = set()
        lock = threading.Lock()

        def one(client: _Client, change: ServiceChange) -> None:
            if down:
                report(ChangeResult(change, False, down[0]))
                return
            try:
                item = self._apply_one(client, change, known_groups)
            except _Down as exc:
                with lock:
                    down.append(str(exc))
                report(ChangeResult(change, False, str(exc)))
                return
            except _Failed as exc:
                report(ChangeResult(change, False, f"cloud: {change.uid}: {exc}"))
                return
            if item is None:
                report(ChangeResult(change, True))
            elif item["action"] == "revoke":
                # Disabled: from now on Nextcloud refuses every session and app password of
                # the account (Session::isLoggedIn and completeLogin check isEnabled() at
                # each request); deleting its tokens is the follow-up (see follow_up).
                report(ChangeResult(change, True, follow_up=True))
            else:
                with lock:
                    waiting.append((change, item))

        def part(index: int, changes: Sequence[ServiceChange]) -> None:
            for change in changes:
                one(clients[index], change)

        suspends = [c for c in ordered if c.action is Action.SUSPEND]
        try:
            if suspends:
                clients += [self._client()
                            for _ in range(min(SUSPEND_PARALLEL, len(suspends)) - 1)]
                in_parts(suspends, len(clients), part)
            part(0, [c for c in ordered if c.action is not Action.SUSPEND])
        finally:
            for client in clients:
                client.session.close()
        if waiting:
            self._run_host_items(waiting, report)

    def follow_up(self, changes: Sequence[ServiceChange], report: Report) -> None:
        """Delete the auth tokens of the suspended members, after the disable.

        One SSH command for all of them, running the role's ``coop-cloud-end-sessions`` (one
        ``occ user:auth-tokens:delete UID --last-used-before`` per member, a few at a time;
        about 0.1-0.4 s of occ per member), not an Ansible run. The disable already refused
        every session: Nextcloud checks that the account is enabled at each request
        (lib/private/User/Session.php: isLoggedIn(), and completeLogin() for app passwords
        and tokens) and deletes a disabled account's token only at its next periodic check
        (checkTokenCredentials, every 5 minutes). Deleting them now means a restored member
        starts with fresh logins, and no old device or stolen app password comes back with
        the account. Every file is kept. Until it succeeds the member stays marked
        `sessions-to-end` and the next run plans it again; the watcher does not wait for it
        (a burst of suspensions is not held up by occ's start-up per member)."""
        if changes:
            self._end_sessions(changes, report)

    def _end_sessions(self, changes: Sequence[ServiceChange], report: Report) -> None:
        changes = [ServiceChange(self.name, Action.SUSPEND, uid,
                                 {"sessions": "auth tokens deleted"})
                   for uid in sorted({c.uid for c in changes})]
        uids = [c.uid for c in changes]
        try:
            out = self.runtime.hosts.signal(self._host_group,
                                            ["coop-cloud-end-sessions", *uids], timeout=600)
        except Exception as exc:  # HostError, and whatever the SSH layer raises
            message = getattr(exc, "message", None) or str(exc)
            for change in changes:
                report(ChangeResult(change, False, f"cloud: {change.uid}: disabled, but deleting "
                                                   f"its auth tokens failed: {message}"))
            return
        results = parse_results(out)
        for change in changes:
            code, text = results.get(change.uid, (1, "the cloud host gave no answer"))
            if code == 0:
                self.runtime.state.unmark(self.name, SESSIONS_MARK, change.uid)
                report(ChangeResult(change, True))
            else:
                report(ChangeResult(change, False, f"cloud: {change.uid}: disabled, but deleting "
                                                   f"its auth tokens failed: {text}"))

    def _item(self, uid: str, action: str, **extra: Any) -> dict[str, Any]:
        item: dict[str, Any] = {"uid": uid, "action": action, **extra}
        if self._settings.get("data_dir"):
            item["data_dir"] = str(self._settings["data_dir"])
        return item

    def _apply_one(self, client: _Client, change: ServiceChange,
                   known_groups: set[str]) -> dict[str, Any] | None:
        """One change through OCS; returns the host item still to run, if any."""
        uid, detail = change.uid, change.detail
        user_path = f"users/{urllib.parse.quote(uid, safe='')}"
        if change.action is Action.CREATE:
            groups = list(detail.get("groups") or [])
            self._ensure_groups(client, groups, known_groups)
            # A random password nobody ever learns (members log in through SSO). The
            # e-mail is set afterwards: given to addUser, Nextcloud would mail an invitation.
            form: dict[str, Any] = {
                "userid": uid,
                "password": secrets.token_urlsafe(32) + "-aA1",
                "displayName": detail.get("display_name") or uid,
                "groups[]": groups,
            }
            if detail.get("quota"):
                form["quota"] = self._quota_value(detail["quota"])
            code, _ = self._ocs(client, "POST", "users", data=form, accept=(_OK, _EXISTS))
            if code == _EXISTS:  # mapped from LDAP meanwhile, or a half-done earlier run
                if detail.get("quota"):
                    self._put(client, user_path, "quota", self._quota_value(detail["quota"]))
                for group in groups:
                    self._ocs(client, "POST", f"{user_path}/groups", data={"groupid": group})
                self._put(client, user_path, "displayname", detail.get("display_name") or uid)
            if detail.get("email"):
                self._put(client, user_path, "email", str(detail["email"]))
            self._mark_groups(groups)
            return None
        if change.action is Action.RESTORE:
            self._ocs(client, "PUT", f"{user_path}/enable")
            self.runtime.state.unmark(self.name, SESSIONS_MARK, uid)
            return None
        if change.action is Action.QUOTA:
            self._put(client, user_path, "quota", self._quota_value(str(detail["to"])))
            return None
        if change.action is Action.GROUPS:
            add = list(detail.get("add") or [])
            self._ensure_groups(client, add, known_groups)
            for group in add:
                self._ocs(client, "POST", f"{user_path}/groups", data={"groupid": group})
            for group in detail.get("remove") or []:
                self._ocs(client, "DELETE", f"{user_path}/groups", data={"groupid": group})
            self._mark_groups(add)
            return None
        if change.action is Action.SUSPEND:
            # Marked first: if this run dies after the disable, the next one still ends them.
            self.runtime.state.mark(self.name, SESSIONS_MARK, uid)
            if detail.get("login") == "disable":
                self._ocs(client, "PUT", f"{user_path}/disable")
            return {"uid": uid, "action": "revoke"}  # tokens deleted by follow_up
        if change.action is Action.PURGE:
            # 998: already deleted (a run interrupted after the delete): still clean files up
            self._ocs(client, "DELETE", user_path, accept=(_OK, 998))
            self.runtime.state.unmark(self.name, SESSIONS_MARK, uid)  # its tokens went with it
            return self._item(uid, "purge_files")
        raise _Failed(f"the cloud connector does not apply {change.action}")

    @staticmethod
    def _quota_value(text: str) -> str:
        """"5 GB" (format_quota) -> "5120 MB": Nextcloud reads MB as MiB, as the directory."""
        return f"{parse_quota(text)} MB"

    def _put(self, client: _Client, path: str, key: str, value: str) -> None:
        self._ocs(client, "PUT", path, data={"key": key, "value": value})

    def _ensure_groups(self, client: _Client, groups: Iterable[str],
                       known: set[str]) -> None:
        """Create the groups the cloud lacks (102: it exists already)."""
        for group in groups:
            if group not in known:
                self._ocs(client, "POST", "groups", data={"groupid": group},
                          accept=(_OK, _EXISTS))
                known.add(group)

    def _mark_groups(self, groups: Iterable[str]) -> None:
        for group in groups:
            self.runtime.state.mark(self.name, GROUP_MARK, group)

    def _run_host_items(self, waiting: list[tuple[ServiceChange, dict[str, Any]]],
                        report: Report) -> None:
        """One run of the sync playbook for every host item of this batch."""
        items = [item for _, item in waiting]
        try:
            result = self.runtime.hosts.playbook("sync.yml", {"coop_sync_cloud": items})
        except Exception as exc:  # HostError, AnsibleError...: report per member, go on
            message = getattr(exc, "message", None) or type(exc).__name__
            result = {"ok": False, "error": str(message), "failed_items": {}}
        failed: Mapping[str, str] = result.get("failed_items") or {}
        error = None if result.get("ok", False) else (result.get("error") or "failed")
        what = "deleted, but removing its files on the cloud host failed"
        for change, _item in waiting:
            if change.uid in failed:
                report(ChangeResult(change, False,
                                    f"cloud: {change.uid}: {what}: {failed[change.uid]}"))
            elif error is not None:
                report(ChangeResult(change, False, f"cloud: {change.uid}: {what} "
                                                   f"({self._host_group}): {error}"))
            else:
                report(ChangeResult(change, True))

    # ------------------------------------------------------------------ export
    def export_item(self, member: MemberState, dest: Path) -> dict[str, Any]:
        """The member's files, archived on the cloud host, as ``dest/files.tar``."""
        return self._item(member.uid, "export", dest=str(dest.resolve()))
