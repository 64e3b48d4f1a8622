"""Single sign-on (Keycloak) connector: ends the live sessions of members who lost access.

Keycloak federates the directory with import off, so it holds no account to create, change
or delete: who may log in, their groups and their names are read from LDAP at each login, and
the realm's LDAP filter refuses anyone not active. What Keycloak does keep is *sessions*: an
SSO cookie session and refresh (and offline) tokens that outlive a suspension until they
expire. This connector observes every session of the realm in bulk (session counts per client,
then the sessions of the clients that have any) and deletes the sessions of members who are
suspended, departed or purged. A deleted session makes its refresh token fail at once.

It uses Keycloak's admin REST API through python-keycloak (network API: cheap, and the only
way to reach sessions); endpoints python-keycloak does not wrap (offline sessions of a client,
deleting one session) go through the same authenticated connection.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provisioner.services.base import (
    Action,
    ChangeResult,
    Connector,
    Desired,
    Finding,
    Phase,
    Report,
    ServiceChange,
    ServiceUnavailable,
)

PAGE = 1000


@dataclass
class UserSessions:
    user_id: str
    online: set[str] = field(default_factory=set)
    offline: set[str] = field(default_factory=set)

    def count(self) -> int:
        return len(self.online) + len(self.offline)


@dataclass
class SsoObservation:
    sessions: dict[str, UserSessions] = field(default_factory=dict)  # username -> sessions
    findings: list[Finding] = field(default_factory=list)

    @property
    def accounts(self) -> Collection[str]:
        """Keycloak holds no accounts (import off): the users with a live session."""
        return self.sessions.keys()

    def access(self, uid: str) -> str:
        """For the audit's access matrix: "yes" for a live session; otherwise "?", since who
        may log in is decided by the directory's filter at each login, not held by Keycloak."""
        return "yes" if uid in self.sessions else "?"


class SsoConnector(Connector):
    name = "sso"

    def __init__(self, runtime: Any) -> None:
        super().__init__(runtime)
        self._admin: Any = None
        # Session ids stay here, not in the change's detail: the journal needs no ids.
        self._observed = SsoObservation()

    def admin(self) -> Any:
        """A python-keycloak admin client, logged in once per run.

        Preferred: the sso role's confidential client `coopctl` of the coop's realm
        (client-credentials grant; its service account holds only view-realm, view-clients,
        view-users and manage-users), so coopctl never holds the master realm's admin.
        Fallback, for configurations written before that client existed: an admin of the
        master realm with a password (admin_user + admin_secret_file).
        """
        if self._admin is None:
            from keycloak import KeycloakAdmin, KeycloakOpenIDConnection
            from keycloak.exceptions import KeycloakError

            s = self.runtime.settings
            url = s["url"].rstrip("/") + "/"
            verify = self.runtime.ca_file or True
            try:
                if s.get("client_id"):
                    connection = KeycloakOpenIDConnection(
                        server_url=url,
                        realm_name=s["realm"],
                        user_realm_name=s["realm"],
                        client_id=s["client_id"],
                        client_secret_key=self.runtime.secret("client_secret_file"),
                        verify=verify,
                        timeout=30,
                    )
                    self._admin = KeycloakAdmin(connection=connection)
                else:
                    self._admin = KeycloakAdmin(
                        server_url=url,
                        username=s["admin_user"],
                        password=self.runtime.secret("admin_secret_file"),
                        realm_name=s["realm"],
                        user_realm_name=s.get("admin_realm", "master"),
                        client_id=s.get("admin_client_id", "admin-cli"),
                        verify=verify,
                        timeout=30,
                    )
                self._admin.get_realm(s["realm"])
            except (KeycloakError, OSError) as exc:
                self._admin = None
                who = (f"client {s['client_id']}" if s.get("client_id")
                       else f"admin {s.get('admin_user')}")
                raise ServiceUnavailable(
                    f"Keycloak's admin API at {s['url']} refused {who} or did not answer "
                    f"({type(exc).__name__}: {_short(exc)})") from None
        return self._admin

    def observe(self, uids: Collection[str] | None = None) -> SsoObservation:
        from keycloak.exceptions import KeycloakError

        admin = self.admin()
        realm = self.runtime.settings["realm"]
        seen = SsoObservation()
        try:
            for stats in admin.get_client_sessions_stats():
                client = stats["id"]
                if int(stats.get("active", 0)):
                    for s in _pages(lambda q, c=client: admin.get_client_all_sessions(c, q)):
                        self._add(seen, s, offline=False)
                if int(stats.get("offline", 0)):
                    url = f"admin/realms/{realm}/clients/{client}/offline-sessions"
                    for s in _pages(lambda q, u=url: _json(admin.connection.raw_get(u, **q))):
                        self._add(seen, s, offline=True)
        except (KeycloakError, OSError, ValueError) as exc:
            raise ServiceUnavailable(f"cannot list Keycloak's sessions: {_short(exc)}") from None
        if uids:
            seen.sessions = {u: s for u, s in seen.sessions.items() if u in uids}
        self._observed = seen
        return seen

    @staticmethod
    def _add(seen: SsoObservation, session: Mapping[str, Any], offline: bool) -> None:
        user = seen.sessions.setdefault(session["username"], UserSessions(session["userId"]))
        (user.offline if offline else user.online).add(session["id"])

    def plan(self, desired: Mapping[str, Desired], observed: Any) -> list[ServiceChange]:
        assert isinstance(observed, SsoObservation)
        changes = []
        for uid, want in desired.items():
            sessions = observed.sessions.get(uid)
            if sessions is None or want.phase is Phase.ACTIVE:
                continue
            changes.append(ServiceChange(self.name, Action.SUSPEND, uid, {
                "sessions": len(sessions.online), "offline": len(sessions.offline)}))
        return changes

    def apply(self, changes: Sequence[ServiceChange], report: Report) -> None:
        from keycloak.exceptions import KeycloakError

        admin = self.admin()
        realm = self.runtime.settings["realm"]
        for change in changes:
            sessions = self._observed.sessions.get(change.uid, UserSessions(""))
            try:
                for sid in sorted(sessions.online):
                    _ok(admin.connection.raw_delete(f"admin/realms/{realm}/sessions/{sid}"))
                for sid in sorted(sessions.offline):
                    _ok(admin.connection.raw_delete(
                        f"admin/realms/{realm}/sessions/{sid}?isOffline=true"))
            except (KeycloakError, OSError, ValueError) as exc:
                report(ChangeResult(change, False, f"Keycloak: {_short(exc)}"))
                continue
            report(ChangeResult(change, True))


def _pages(fetch: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    first = 0
    while True:
        page = fetch({"first": first, "max": PAGE})
        out += page
        if len(page) < PAGE:
            return out
        first += PAGE


def _json(response: Any) -> Any:
    _ok(response)
    return response.json()


def _ok(response: Any) -> None:
    """Raise for an HTTP error; 404 on delete means the session is already gone."""
    if response.status_code >= 400 and response.status_code != 404:
        raise ValueError(f"HTTP {response.status_code} on {response.request.method} "
                         f"{response.request.path_url.split('?')[0]}")


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
