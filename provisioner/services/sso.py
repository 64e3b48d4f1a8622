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

For the audit, the observation also lists the realm's administrators (`administrators()`):
who holds the `realm-management` roles that reach members' accounts (ADMIN_ROLES), directly,
through a group or through a composite realm role. It is fetched lazily, the first time the
audit asks, so that `coopctl sync`, which observes SSO on every run, never pays for it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
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
# Roles of the realm's `realm-management` client whose holders can change members' accounts,
# or become someone who can. realm-admin is the composite of every realm-management role, so
# an entry says which role it holds directly. Left out, because they change no account:
# view-realm, view-users, view-events, query-* (read), manage-events, manage-authorization
# (clients' own authorization services), manage-identity-providers (an identity provider is
# linked to an existing account only through the first-login flow, which is manage-realm's),
# create-client (a new client holds no role until someone with manage-users grants one).
ADMIN_ROLES: dict[str, str] = {
    "realm-admin": "every admin right in the realm",
    "manage-users": "creates, changes, disables and deletes users, sets passwords, grants roles",
    "manage-realm": "changes the realm and its LDAP federation, i.e. who may log in",
    "manage-clients": "changes any client's secret or key, e.g. coopctl's (whose account has "
                      "manage-users)",
    "impersonation": "logs in as any member",
    "view-clients": "reads the secret of every client that has one (Keycloak serves it to "
                    "view-clients): the services' login clients, and coopctl's own unless it "
                    "signs with a key (sso role: sso_service_clients[].key)",
}
SERVICE_ACCOUNT = "service-account-"
# Members of a group holding an admin role named at most (an admin group is small).
GROUP_MEMBERS_SHOWN = 50
MASTER_NOTE = ("not listed: the master realm's administrators (its `admin` role), who can "
               "change every account of every realm; the coop realm's audit client cannot see "
               "the master realm, so check them with Keycloak's admin console")


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
    # Lists the realm's administrators when first asked (the audit), never during a sync.
    fetch_administrators: Callable[[], list[str]] | None = field(default=None, repr=False)
    _administrators: list[str] | None = field(default=None, repr=False)

    def administrators(self) -> list[str]:
        """Who can change members' accounts in the coop's realm, one labelled entry each,
        ending with what the list cannot show (the master realm's admins). Fetched once."""
        if self._administrators is None:
            self._administrators = (self.fetch_administrators() if self.fetch_administrators
                                    else [])
        return self._administrators

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
        view-users and manage-users), so coopctl never holds the master realm's admin. It
        proves itself with a JWT signed by its private key (client_key_file), which nothing
        in Keycloak reveals, or else with a shared secret (client_secret_file).
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
                if s.get("client_id") and s.get("client_key_file"):
                    from provisioner.services.keycloak_jwt import SignedJwtConnection

                    connection = SignedJwtConnection(
                        key_pem=self.runtime.secret("client_key_file"),
                        server_url=url,
                        realm_name=s["realm"],
                        user_realm_name=s["realm"],
                        client_id=s["client_id"],
                        verify=verify,
                        timeout=30,
                    )
                    self._admin = KeycloakAdmin(connection=connection)
                elif s.get("client_id"):
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
        seen.fetch_administrators = self.administrators
        self._observed = seen
        return seen

    def administrators(self) -> list[str]:
        """The realm's administrators (see ADMIN_ROLES), labelled; read-only calls only.

        Needs view-clients (the realm-management client and its roles' members) and
        view-users/view-realm (groups, realm roles), which the audit client holds. A refusal
        becomes an entry saying so rather than an error: the rest of the audit stands.
        """
        from keycloak.exceptions import KeycloakError

        s = self.runtime.settings
        own = {str(s["sync_client_id"]).lower(): "coopctl's own client (coopctl sync)"} \
            if s.get("sync_client_id") else {}
        if s.get("client_id"):
            own.setdefault(str(s["client_id"]).lower(),
                           "coopctl's audit client" if own else "coopctl's own client")
        try:
            entries = _read_administrators(self.admin(), s["realm"], own)
        except (KeycloakError, OSError, ValueError, ServiceUnavailable) as exc:
            entries = [f"? the realm's administrators could not be listed: {_short(exc)} "
                       "(the audit client needs view-clients, view-users and view-realm)"]
        return [*entries, MASTER_NOTE]

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


@dataclass
class Holder:
    """A user or group holding admin roles; `roles` says which and how ("manage-users",
    "manage-users via realm role ops"); `members`: a group's usernames, None if not read."""

    kind: str  # "user" | "group"
    name: str  # username, or the group's path
    roles: set[str] = field(default_factory=set)
    members: list[str] | None = None
    more: bool = False  # a group with more than GROUP_MEMBERS_SHOWN members


def admin_realm_roles(composites: Mapping[str, Iterable[tuple[bool, str]]]) -> dict[str, set[str]]:
    """Realm roles that contain an admin role, even through other realm roles: name -> the
    admin roles they contain. `composites` maps each composite realm role to its direct
    composites as (is a realm-management role, name); other clients' roles are ignored."""
    reach: dict[str, set[str]] = {
        role: {name for client, name in parts if client and name in ADMIN_ROLES}
        for role, parts in composites.items()}
    nested = {role: {name for client, name in parts if not client and name in composites}
              for role, parts in composites.items()}
    changed = True
    while changed:  # a fixpoint: composites of composites
        changed = False
        for role, inner in nested.items():
            for other in inner:
                if not reach[other] <= reach[role]:
                    reach[role] |= reach[other]
                    changed = True
    return {role: admin for role, admin in reach.items() if admin}


def admin_entries(holders: Iterable[Holder], own_clients: Mapping[str, str],
                  everyone: Iterable[str] = ()) -> list[str]:
    """One line per holder, sorted: service accounts name their client (coopctl's own ones
    said so), groups their members. `everyone`: admin roles in the realm's default roles."""
    out = []
    for h in holders:
        roles = ", ".join(sorted(h.roles))
        if h.kind == "group":
            names = ", ".join(h.members or []) + (", ..." if h.more else "")
            who = f"members: {names}" if h.members else (
                "no members" if h.members is not None else "members not read")
            out.append(f"group {h.name} ({roles}; {who})")
        elif h.name.startswith(SERVICE_ACCOUNT):
            client = h.name.removeprefix(SERVICE_ACCOUNT)
            label = own_clients.get(client.lower())
            out.append(f"{h.name} (service account of client {client}"
                       f"{': ' + label if label else ''}; {roles})")
        else:
            out.append(f"{h.name} (user; {roles})")
    out.sort()
    for via in sorted(everyone):
        out.insert(0, f"every user of the realm ({via}: in the realm's default roles)")
    return out


def _read_administrators(admin: Any, realm: str, own_clients: Mapping[str, str]) -> list[str]:
    """Holders of ADMIN_ROLES: users and groups, directly and through composite realm roles."""
    holders: dict[tuple[str, str], Holder] = {}
    groups: dict[str, str] = {}  # path -> id

    def hold(kind: str, name: str, how: str) -> None:
        holders.setdefault((kind, name), Holder(kind, name)).roles.add(how)

    def take(users: list[dict[str, Any]], found: list[dict[str, Any]], how: str) -> None:
        for u in users:
            hold("user", u["username"], how)
        for g in found:
            groups[g.get("path") or g["name"]] = g["id"]
            hold("group", g.get("path") or g["name"], how)

    management = admin.get_client_id("realm-management")
    if management is None:
        raise ValueError("the realm has no realm-management client")
    for role in ADMIN_ROLES:
        take(admin.get_client_role_members(management, role),
             admin.get_client_role_groups(management, role), role)
    composites = {}
    for role in admin.get_realm_roles():
        if role.get("composite"):
            parts = _json(admin.connection.raw_get(
                f"admin/realms/{realm}/roles-by-id/{role['id']}/composites"))
            composites[role["name"]] = [(p.get("containerId") == management, p["name"])
                                        for p in parts if p.get("clientRole") is False
                                        or p.get("containerId") == management]
    everyone = []
    default = f"default-roles-{realm}".lower()
    for role, reached in sorted(admin_realm_roles(composites).items()):
        how = f"{', '.join(sorted(reached))} via realm role {role}"
        if role == default:
            everyone.append(how)
            continue
        take(admin.get_realm_role_members(role), admin.get_realm_role_groups(role), how)
    for path, group_id in groups.items():
        members = admin.get_group_members(group_id, {"first": 0, "max": GROUP_MEMBERS_SHOWN + 1,
                                                     "briefRepresentation": True})
        h = holders[("group", path)]
        h.members = sorted(m["username"] for m in members[:GROUP_MEMBERS_SHOWN])
        h.more = len(members) > GROUP_MEMBERS_SHOWN
    return admin_entries(holders.values(), own_clients, everyone)


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
