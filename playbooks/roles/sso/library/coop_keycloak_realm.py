#!/usr/bin/python3
# Role-local module of the sso role: brings one Keycloak realm to a declared state
# through Keycloak's admin REST API, reading before it writes (second run: no change).
# Standard library only, so that it runs on a bare Debian host with python3.
"""Ansible module: coop_keycloak_realm."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: coop_keycloak_realm
short_description: Declare a Keycloak realm, its LDAP user federation and its OIDC clients
description:
  - Talks to Keycloak's admin REST API (C(/admin/realms/...)) with a token of the master realm's
    admin (client C(admin-cli), password grant). Every object is read first and written only when it
    differs from the declaration, so a second run changes nothing.
  - In the master realm, when the permanent admin cannot log in yet, logs in as the bootstrap
    admin, creates the permanent one (password in the request body) with the master realm's admin
    role, then deletes the bootstrap admin. Applies C(master_settings) (brute-force protection) and
    the events configuration to master as to the coop's realm.
  - Service clients are confidential clients with a service account whose roles of the realm's
    C(realm-management) client are exactly the declared ones.
  - Realm: C(POST /admin/realms) when missing, else C(PUT /admin/realms/REALM) with the declared
    attributes when one of them differs.
  - LDAP federation: a component with providerId C(ldap), providerType
    C(org.keycloak.storage.UserStorageProvider) and the realm's id as parentId; its mappers are
    sub-components (providerType C(org.keycloak.storage.ldap.mappers.LDAPStorageMapper), parentId =
    the LDAP component's id), matched by name. Keycloak never returns the bind password (it shows
    C(**********)), so the stored one is checked with C(POST /admin/realms/REALM/testLDAPConnection)
    (action testAuthentication, componentId) and rewritten only when that bind fails.
  - Clients: matched by clientId; the declared keys are compared, the secret through
    C(GET .../client-secret); protocol mappers are matched by name.
options:
  url: {description: Base URL of Keycloak (https://HOST:PORT)., type: str, required: true}
  ca_path: {description: CA file that signed Keycloak's certificate., type: path}
  admin_user: {description: Admin of the master realm., type: str, required: true}
  admin_password: {description: Its password., type: str, required: true, no_log: true}
  bootstrap_user: {description: Temporary bootstrap admin., type: str, default: bootstrap-admin}
  bootstrap_password: {description: Its one-time password (first install)., type: str, no_log: true}
  master_settings: {description: Attributes of the master realm., type: dict, default: {}}
  events:
    description: >-
      Events of both realms: listeners (list) and expiration (seconds). Omit to leave them alone.
    type: dict
  service_clients:
    description: Client representations with serviceAccountsEnabled plus roles (realm-management).
    type: list
    elements: dict
    default: []
  realm: {description: Name of the realm., type: str, required: true}
  realm_settings: {description: Other top-level attributes of the realm., type: dict, default: {}}
  ldap:
    description: >-
      The LDAP federation: name, config (dict of str), bind_credential, mappers (list of dicts
      with name, providerId, config). Omit to leave federation alone.
    type: dict
  clients:
    description: >-
      OIDC clients: each a client representation (clientId, secret, redirectUris, ...) plus
      protocol_mappers (list of protocol mapper representations).
    type: list
    elements: dict
    default: []
  wait_timeout: {description: Seconds to wait for Keycloak to answer., type: int, default: 300}
"""

RETURN = r"""
changes: {description: What was created or updated (no secrets)., type: list, returned: always}
realm_id: {description: Internal id of the realm., type: str, returned: success}
ldap_id: {description: Id of the LDAP component., type: str, returned: when ldap is given}
"""

USER_STORAGE = "org.keycloak.storage.UserStorageProvider"
LDAP_MAPPER = "org.keycloak.storage.ldap.mappers.LDAPStorageMapper"
SECRET_MASK = "**********"
# Keys of a client that hold secrets or are compared by another call.
CLIENT_LOCAL_KEYS = {"secret", "protocol_mappers"}


class KeycloakError(Exception):
    pass


class Api:
    def __init__(self, url, ca_path, timeout=30):
        self.base = url.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=ca_path) if ca_path else None
        self.timeout = timeout
        self.token = None
        self.credentials = None

    def _open(self, method, path, body=None, form=None, query=None):
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Accept": "application/json"}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=self.timeout) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None), resp.headers
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                payload = json.loads(raw) if raw else None
            except ValueError:
                payload = raw.decode(errors="replace")
            return err.code, payload, err.headers

    def call(self, method, path, body=None, query=None, ok=(200, 201, 204)):
        status, payload, headers = self._open(method, path, body=body, query=query)
        if status == 401 and self.credentials:
            # The admin token lives 60 s: on a slow host a run outlives it; log in again.
            self.try_login(*self.credentials)
            status, payload, headers = self._open(method, path, body=body, query=query)
        if status not in ok:
            raise KeycloakError(f"{method} {path}: HTTP {status}: {payload}")
        return status, payload, headers

    def wait(self, wait_timeout):
        """Until the master realm's token endpoint answers at all (Keycloak is up)."""
        deadline = time.monotonic() + wait_timeout
        last = None
        while True:
            try:
                self._open("GET", "/realms/master/.well-known/openid-configuration")
                return
            except (urllib.error.URLError, OSError) as err:
                last = str(err)
            if time.monotonic() > deadline:
                raise KeycloakError(f"Keycloak did not answer at {self.base}: {last}")
            time.sleep(3)

    def try_login(self, user, password):
        """Log in as an admin of the master realm; False if the credentials are refused."""
        status, payload, _ = self._open(
            "POST",
            "/realms/master/protocol/openid-connect/token",
            form={
                "grant_type": "password",
                "client_id": "admin-cli",
                "username": user,
                "password": password,
            },
        )
        if status == 200:
            self.token = payload["access_token"]
            self.credentials = (user, password)
            return True
        if status in (400, 401):
            return False
        raise KeycloakError(f"admin login: HTTP {status}: {payload}")


def _as_list_config(config):
    """Keycloak stores component config as {key: [values]}."""
    out = {}
    for key, value in (config or {}).items():
        if isinstance(value, list):
            out[key] = [str(v) for v in value]
        elif isinstance(value, bool):
            out[key] = ["true" if value else "false"]
        else:
            out[key] = [str(value)]
    return out


def _norm(value):
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sorted(value)
    if isinstance(value, bool):
        return value
    return value


def _differs(current, desired):
    """Keys of desired whose value differs from current (nested dicts compared per key)."""
    diff = []
    for key, want in desired.items():
        have = current.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            if _differs(have, want):
                diff.append(key)
        elif _norm(have) != _norm(want):
            diff.append(key)
    return diff


class Realm:
    def __init__(self, module, api):
        self.module = module
        self.api = api
        self.check = module.check_mode
        self.changes = []
        self.name = module.params["realm"]
        self.path = "/admin/realms/" + urllib.parse.quote(self.name, safe="")
        self.realm_id = None

    def changed(self, what):
        self.changes.append(what)

    # -- realm ---------------------------------------------------------------------------------
    def ensure_realm(self, settings=None):
        if settings is None:
            settings = self.module.params["realm_settings"]
        settings = dict(settings or {})
        settings.setdefault("enabled", True)
        status, current, _ = self.api.call("GET", self.path, ok=(200, 404))
        if status == 404:
            self.changed(f"realm {self.name} created")
            if self.check:
                self.realm_id = None
                return False
            self.api.call("POST", "/admin/realms", body=dict(settings, realm=self.name))
            _, current, _ = self.api.call("GET", self.path)
        else:
            diff = _differs(current, settings)
            if diff:
                self.changed(f"realm {self.name} updated: {', '.join(sorted(diff))}")
                if not self.check:
                    self.api.call("PUT", self.path, body=settings)
        self.realm_id = current["id"]
        return True

    # -- components ----------------------------------------------------------------------------
    def _components(self, parent, ctype):
        _, items, _ = self.api.call(
            "GET", self.path + "/components", query={"parent": parent, "type": ctype}
        )
        return {c["name"]: c for c in items or []}

    def _ensure_component(self, existing, desired, label, secret_keys=()):
        """Create or update one component; returns its id (None in check mode on create)."""
        current = existing.get(desired["name"])
        if current is None:
            self.changed(f"{label} created")
            if self.check:
                return None
            _, _, headers = self.api.call("POST", self.path + "/components", body=desired)
            return headers.get("Location", "").rstrip("/").rsplit("/", 1)[-1]
        want_config = {k: v for k, v in desired["config"].items() if k not in secret_keys}
        diff = _differs(current.get("config", {}), want_config)
        if diff:
            self.changed(f"{label} updated: {', '.join(sorted(diff))}")
            if not self.check:
                body = dict(current)
                config = dict(current.get("config", {}))
                config.update(want_config)
                # Keep the stored secret: sending the mask back leaves it unchanged.
                body["config"] = config
                self.api.call("PUT", self.path + "/components/" + current["id"], body=body)
        return current["id"]

    def _bind_works(self, ldap_id, config):
        body = {
            "action": "testAuthentication",
            "componentId": ldap_id,
            "connectionUrl": config["connectionUrl"][0],
            "bindDn": config["bindDn"][0],
            "bindCredential": SECRET_MASK,
            "useTruststoreSpi": config.get("useTruststoreSpi", ["always"])[0],
            "connectionTimeout": config.get("connectionTimeout", [""])[0],
            "startTls": config.get("startTls", ["false"])[0],
            "authType": config.get("authType", ["simple"])[0],
        }
        status, _, _ = self.api._open("POST", self.path + "/testLDAPConnection", body=body)
        return status in (200, 204)

    def ensure_ldap(self, spec):
        config = _as_list_config(spec.get("config"))
        config["bindCredential"] = [spec["bind_credential"]]
        desired = {
            "name": spec["name"],
            "providerId": "ldap",
            "providerType": USER_STORAGE,
            "parentId": self.realm_id,
            "config": config,
        }
        if self.realm_id is None:  # check mode, realm not there yet
            self.changed(f"ldap {spec['name']} created")
            return None
        existing = self._components(self.realm_id, USER_STORAGE)
        ldap_id = self._ensure_component(
            existing, desired, f"ldap {spec['name']}", secret_keys=("bindCredential",)
        )
        if ldap_id and spec["name"] in existing and not self._bind_works(ldap_id, config):
            self.changed(f"ldap {spec['name']} bind credential updated")
            if not self.check:
                _, current, _ = self.api.call("GET", self.path + "/components/" + ldap_id)
                current["config"]["bindCredential"] = [spec["bind_credential"]]
                self.api.call("PUT", self.path + "/components/" + ldap_id, body=current)
        if ldap_id is None:
            for mapper in spec.get("mappers") or []:
                self.changed(f"ldap mapper {mapper['name']} created")
            return None
        mappers = self._components(ldap_id, LDAP_MAPPER)
        for mapper in spec.get("mappers") or []:
            self._ensure_component(
                mappers,
                {
                    "name": mapper["name"],
                    "providerId": mapper["providerId"],
                    "providerType": LDAP_MAPPER,
                    "parentId": ldap_id,
                    "config": _as_list_config(mapper.get("config")),
                },
                f"ldap mapper {mapper['name']}",
            )
        for name in spec.get("remove_mappers") or []:
            if name in mappers:
                self.changed(f"ldap mapper {name} removed")
                if not self.check:
                    self.api.call("DELETE", self.path + "/components/" + mappers[name]["id"])
        return ldap_id

    # -- clients -------------------------------------------------------------------------------
    def ensure_client(self, spec):
        client_id = spec["clientId"]
        desired = {k: v for k, v in spec.items() if k not in CLIENT_LOCAL_KEYS}
        if self.realm_id is None:
            self.changed(f"client {client_id} created")
            return
        _, found, _ = self.api.call("GET", self.path + "/clients", query={"clientId": client_id})
        if not found:
            self.changed(f"client {client_id} created")
            if self.check:
                return
            body = dict(desired)
            if spec.get("secret"):
                body["secret"] = spec["secret"]
            body["protocolMappers"] = spec.get("protocol_mappers") or []
            self.api.call("POST", self.path + "/clients", body=body)
            _, found, _ = self.api.call(
                "GET", self.path + "/clients", query={"clientId": client_id}
            )
            return found[0]["id"]
        current = found[0]
        cpath = self.path + "/clients/" + current["id"]
        diff = _differs(current, desired)
        if spec.get("secret") and not current.get("publicClient"):
            _, sec, _ = self.api.call("GET", cpath + "/client-secret")
            if (sec or {}).get("value") != spec["secret"]:
                diff.append("secret")
        if diff:
            self.changed(f"client {client_id} updated: {', '.join(sorted(diff))}")
            if not self.check:
                body = dict(current)
                body.update(desired)
                body.pop("protocolMappers", None)
                if spec.get("secret"):
                    body["secret"] = spec["secret"]
                self.api.call("PUT", cpath, body=body)
        existing = {m["name"]: m for m in current.get("protocolMappers") or []}
        for mapper in spec.get("protocol_mappers") or []:
            have = existing.get(mapper["name"])
            if have is None:
                self.changed(f"client {client_id} mapper {mapper['name']} created")
                if not self.check:
                    self.api.call("POST", cpath + "/protocol-mappers/models", body=mapper)
            elif _differs(have, mapper):
                self.changed(f"client {client_id} mapper {mapper['name']} updated")
                if not self.check:
                    body = dict(have)
                    body.update(mapper)
                    self.api.call(
                        "PUT", cpath + "/protocol-mappers/models/" + have["id"], body=body
                    )
        return current["id"]

    def ensure_service_roles(self, client_uuid, client_id, roles):
        """The client's service account holds exactly these roles of realm-management."""
        if client_uuid is None:
            return
        _, user, _ = self.api.call(
            "GET", self.path + "/clients/" + client_uuid + "/service-account-user"
        )
        _, rm, _ = self.api.call(
            "GET", self.path + "/clients", query={"clientId": "realm-management"}
        )
        rm_id = rm[0]["id"]
        mpath = self.path + "/users/" + user["id"] + "/role-mappings/clients/" + rm_id
        _, have, _ = self.api.call("GET", mpath)
        have = {r["name"]: r for r in have or []}
        add = [r for r in roles if r not in have]
        drop = [have[r] for r in sorted(have) if r not in roles]
        if add:
            self.changed(f"client {client_id} service account roles added: {', '.join(add)}")
            if not self.check:
                reps = []
                for name in add:
                    _, rep, _ = self.api.call(
                        "GET", self.path + "/clients/" + rm_id + "/roles/"
                        + urllib.parse.quote(name, safe="")
                    )
                    reps.append(rep)
                self.api.call("POST", mpath, body=reps)
        if drop:
            self.changed(f"client {client_id} service account roles removed: "
                         f"{', '.join(r['name'] for r in drop)}")
            if not self.check:
                self.api.call("DELETE", mpath, body=drop)

    # -- events --------------------------------------------------------------------------------
    def ensure_events(self, events):
        """Login and admin events stored (with a retention) and sent to the listeners."""
        if self.realm_id is None:
            self.changed(f"realm {self.name} events configured")
            return
        desired = {
            "eventsEnabled": True,
            "eventsExpiration": int(events["expiration"]),
            "eventsListeners": list(events["listeners"]),
            "adminEventsEnabled": True,
            # Representations may carry secrets (a client's, an LDAP bind password): off.
            "adminEventsDetailsEnabled": False,
        }
        _, current, _ = self.api.call("GET", self.path + "/events/config")
        diff = _differs(current or {}, desired)
        if diff:
            self.changed(f"realm {self.name} events updated: {', '.join(sorted(diff))}")
            if not self.check:
                body = dict(current or {})
                body.update(desired)
                self.api.call("PUT", self.path + "/events/config", body=body)


class Master(Realm):
    """The master realm: its permanent admin, no bootstrap admin, brute force, events."""

    def __init__(self, module, api):
        super().__init__(module, api)
        self.name = "master"
        self.path = "/admin/realms/master"

    def _user(self, username):
        _, found, _ = self.api.call(
            "GET", self.path + "/users", query={"username": username, "exact": "true"}
        )
        return found[0] if found else None

    def login(self, admin_user, admin_password, bootstrap_user, bootstrap_password):
        """Log in as the permanent admin, creating it first through the bootstrap admin."""
        if self.api.try_login(admin_user, admin_password):
            return
        if not bootstrap_password or not self.api.try_login(bootstrap_user, bootstrap_password):
            raise KeycloakError(
                f"neither the admin {admin_user} nor the bootstrap admin {bootstrap_user} "
                "could log in to the master realm"
            )
        self.changed(f"master admin {admin_user} created")
        if self.check:
            return
        self.api.call("POST", self.path + "/users", body={
            "username": admin_user,
            "enabled": True,
            "credentials": [{"type": "password", "value": admin_password, "temporary": False}],
        })
        user = self._user(admin_user)
        _, role, _ = self.api.call("GET", self.path + "/roles/admin")
        self.api.call(
            "POST", self.path + "/users/" + user["id"] + "/role-mappings/realm", body=[role]
        )
        if not self.api.try_login(admin_user, admin_password):
            raise KeycloakError(f"the new admin {admin_user} cannot log in")

    def ensure_permanent(self, admin_user, bootstrap_user):
        """No temporary admin left: delete the bootstrap one, make ours permanent."""
        if self.check and self.api.token is None:
            return
        bootstrap = self._user(bootstrap_user) if bootstrap_user != admin_user else None
        if bootstrap is not None:
            self.changed(f"bootstrap admin {bootstrap_user} deleted")
            if not self.check:
                self.api.call("DELETE", self.path + "/users/" + bootstrap["id"])
        admin = self._user(admin_user)
        attributes = dict((admin or {}).get("attributes") or {})
        # An admin created as the bootstrap admin by an earlier version of this role.
        if attributes.pop("is_temporary_admin", None) is not None:
            self.changed(f"master admin {admin_user} made permanent")
            if not self.check:
                body = dict(admin)
                body["attributes"] = attributes
                self.api.call("PUT", self.path + "/users/" + admin["id"], body=body)


def main():
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "ca_path": {"type": "path"},
            "admin_user": {"type": "str", "required": True},
            "admin_password": {"type": "str", "required": True, "no_log": True},
            "bootstrap_user": {"type": "str", "default": "bootstrap-admin"},
            "bootstrap_password": {"type": "str", "no_log": True},
            "master_settings": {"type": "dict", "default": {}},
            "events": {"type": "dict"},
            "service_clients": {"type": "list", "elements": "dict", "default": [],
                                "no_log": False},
            "realm": {"type": "str", "required": True},
            "realm_settings": {"type": "dict", "default": {}},
            "ldap": {"type": "dict", "no_log": False},
            "clients": {"type": "list", "elements": "dict", "default": [], "no_log": False},
            "wait_timeout": {"type": "int", "default": 300},
        },
        supports_check_mode=True,
    )
    params = module.params
    secrets = [c.get("secret") for c in params["clients"] + params["service_clients"]
               if c.get("secret")]
    if params["ldap"] and params["ldap"].get("bind_credential"):
        secrets.append(params["ldap"]["bind_credential"])
    module.no_log_values.update(s for s in secrets if s)
    api = None
    realm = None
    result = {"changed": False}
    try:
        api = Api(params["url"], params["ca_path"])
        realm = Realm(module, api)
        master = Master(module, api)
        api.wait(params["wait_timeout"])
        master.login(params["admin_user"], params["admin_password"],
                     params["bootstrap_user"], params["bootstrap_password"])
        master.ensure_permanent(params["admin_user"], params["bootstrap_user"])
        master.ensure_realm(params["master_settings"])
        if params["events"]:
            master.ensure_events(params["events"])
        realm.changes = master.changes  # one list of what changed, master's first
        realm.ensure_realm()
        if params["events"]:
            realm.ensure_events(params["events"])
        if params["ldap"]:
            result["ldap_id"] = realm.ensure_ldap(params["ldap"])
        for client in params["clients"]:
            realm.ensure_client(client)
        for client in params["service_clients"]:
            spec = {k: v for k, v in client.items() if k != "roles"}
            uuid = realm.ensure_client(spec)
            realm.ensure_service_roles(uuid, client["clientId"], client.get("roles") or [])
    except (KeycloakError, OSError, ValueError, KeyError) as err:
        module.fail_json(msg=f"{type(err).__name__}: {err}", changes=realm.changes if realm else [])
    result["changes"] = realm.changes
    result["changed"] = bool(realm.changes)
    result["realm_id"] = realm.realm_id
    module.exit_json(**result)


if __name__ == "__main__":
    main()
