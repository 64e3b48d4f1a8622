"""HTTP side of the Nextcloud contract double: the OCS Provisioning API.

Semantics follow Nextcloud's provisioning_api app and OCS framework:
- ``/ocs/v1.php/...``: HTTP 200 for everything except 997 (401); success
  statuscode 100. ``/ocs/v2.php/...``: success statuscode 200; 997 -> 401,
  998 -> 404, other codes below 200 -> 400.
- XML unless ``?format=json`` or an ``Accept`` header naming JSON.
- HTTP basic auth of an enabled account; every call also needs the header
  ``OCS-APIRequest: true``, else 997 "Current user is not logged in" (401).
- Only members of group ``admin`` may use the user/group calls (else 403).
- ``GET /cloud/users/details`` lists users with their data in bulk, keyed by uid
  (``UsersController::getUsersDetails``); ``quota.used`` is the size of the files
  under ``<data>/<uid>/files``.
- Auth tokens as Nextcloud's ``Session`` class creates them: a password login from a client
  that keeps cookies (it sent back ``cookie_test``) gets a session token, carried by
  the ``nc_session_id`` cookie; app passwords (``occ-double user:auth-tokens:add``)
  work as basic-auth passwords. A disabled user's session and app passwords are refused
  at once, as Nextcloud's ``Session`` does (``isLoggedIn`` and ``completeLogin`` check
  ``isEnabled()`` at every request). Nextcloud deletes such a token at its next periodic
  check (``checkTokenCredentials``, every 5 minutes); the double deletes it at its first
  refused use (documented difference: its token table empties sooner).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.cookies
import json
import logging
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

from . import DOUBLE_NAME, DOUBLE_VERSION, EMULATED_NEXTCLOUD_VERSION
from .store import (
    ACTIVITY_UPDATE_INTERVAL,
    TEMPORARY_TOKEN,
    Store,
    check_password,
    computer_file_size,
    hash_password,
    human_file_size,
    new_user,
    storage_info,
    valid_uid,
)

LOG = logging.getLogger(DOUBLE_NAME)
SERVER_HEADER = f"{DOUBLE_NAME}/{DOUBLE_VERSION} (contract double, NOT Nextcloud)"

RESPOND_UNAUTHORISED = 997
RESPOND_NOT_FOUND = 998
RESPOND_SERVER_ERROR = 996
RESPOND_UNKNOWN_ERROR = 999
OK = 200
_AUTH_CACHE: dict[tuple, bool] = {}
SESSION_COOKIE = "nc_session_id"
COOKIE_TEST = "cookie_test"


class OCSError(Exception):
    def __init__(self, code: int, message: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message


class MethodNotAllowed(Exception):
    pass


# ----------------------------------------------------------------- rendering
def _xml(value, name: str, indent: int, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, (dict, list)):
        items = value.items() if isinstance(value, dict) else (("element", v) for v in value)
        items = list(items)
        if not items:
            out.append(f"{pad}<{name}/>")
            return
        out.append(f"{pad}<{name}>")
        for k, v in items:
            _xml(v, "element" if isinstance(k, int) else str(k), indent + 1, out)
        out.append(f"{pad}</{name}>")
    elif value is None or value is False or value == "":
        out.append(f"{pad}<{name}/>")
    else:
        text = "1" if value is True else str(value)
        out.append(f"{pad}<{name}>{escape(text)}</{name}>")


def render(version: int, fmt: str, status: int, message: str, data) -> tuple[int, str, bytes]:
    """Build (HTTP status, content type, body) the way V1Response/V2Response do."""
    if version == 1:
        http = 401 if status == RESPOND_UNAUTHORISED else 200
        code = 100 if status == OK else status
        meta = {
            "status": "ok" if code == 100 else "failure",
            "statuscode": code,
            "message": "OK" if code == 100 else message,
            "totalitems": "",
            "itemsperpage": "",
        }
    else:
        if status == RESPOND_UNAUTHORISED:
            http = 401
        elif status == RESPOND_NOT_FOUND:
            http = 404
        elif status in (RESPOND_SERVER_ERROR, RESPOND_UNKNOWN_ERROR):
            http = 500
        elif status < 200 or status > 600:
            http = 400
        else:
            http = status
        meta = {
            "status": "ok" if 200 <= status < 300 else "failure",
            "statuscode": status,
            "message": "OK" if status == OK else message,
        }
    if data is None:
        data = []
    if fmt == "json":
        body = json.dumps({"ocs": {"meta": meta, "data": data}}, separators=(",", ":"))
        return http, "application/json; charset=utf-8", body.encode()
    out = ['<?xml version="1.0"?>', "<ocs>"]
    _xml(meta, "meta", 1, out)
    _xml(data, "data", 1, out)
    out.append("</ocs>")
    return http, "application/xml; charset=utf-8", ("\n".join(out) + "\n").encode()


# ----------------------------------------------------------------- the API
def user_data(user: dict, store: Store) -> dict:
    """``AUserData::getUserData`` for an admin caller (quota from the user's files)."""
    return {
        "enabled": bool(user["enabled"]),
        "storageLocation": str(store.home(user["id"])),
        "id": user["id"],
        "firstLoginTimestamp": -1,
        "lastLoginTimestamp": user.get("lastLogin", 0),
        "lastLogin": user.get("lastLogin", 0) * 1000,
        "backend": "Database",
        "subadmin": [],
        "quota": storage_info(user, store.used_bytes(user["id"])),
        "manager": "",
        "email": user.get("email"),
        "additional_mail": [],
        "displayname": user.get("displayname") or user["id"],
        "display-name": user.get("displayname") or user["id"],
        "phone": "",
        "address": "",
        "website": "",
        "twitter": "",
        "fediverse": "",
        "organisation": "",
        "role": "",
        "headline": "",
        "biography": "",
        "profile_enabled": "1",
        "groups": list(user.get("groups", [])),
        "language": user.get("settings", {}).get("core", {}).get("lang", ""),
        "locale": "",
        "notify_email": None,
        "backendCapabilities": {"setDisplayName": True, "setPassword": True},
    }


def _page(items: list[str], params: dict) -> list[str]:
    try:
        offset = int(params.get("offset") or 0)
        limit = params.get("limit")
        limit = int(limit) if limit not in (None, "") else None
    except ValueError as e:
        raise OCSError(101, "Invalid limit or offset") from e
    offset = max(offset, 0)
    return items[offset : offset + limit] if limit is not None and limit >= 0 else items[offset:]


def set_quota(user: dict, value: str) -> None:
    quota = value
    if quota not in ("none", "default"):
        size = computer_file_size(quota)
        if size is None:
            raise OCSError(102, f"Invalid quota value {value}")
        quota = "none" if size == -1 else human_file_size(size)
    user["quota"] = quota


def edit_user(store: Store, uid: str, key: str, value: str) -> None:
    """``editUser`` of one key on the stored user `uid` (998 when there is none)."""
    user = store.get_user(uid)
    if user is None:
        raise OCSError(RESPOND_NOT_FOUND)
    apply_edit(user, key, value)
    store.save_user(user)


def apply_edit(user: dict, key: str, value: str) -> None:
    """Set `key` of the user dict `user` as ``editUser`` does, or raise its OCSError."""
    if key in ("display", "displayname"):
        if len(value) > 64:
            raise OCSError(101, "Invalid display name")
        user["displayname"] = value
    elif key == "quota":
        set_quota(user, value)
    elif key == "email":
        if value and (
            "@" not in value or value.startswith("@") or value.endswith("@") or " " in value
        ):
            raise OCSError(101)
        user["email"] = value or None
    elif key == "password":
        if len(value) > 469:
            raise OCSError(102, "Invalid password value")
        user["password"] = hash_password(value)
    elif key == "language":
        user.setdefault("settings", {}).setdefault("core", {})["lang"] = value
    else:
        raise OCSError(113)


class API:
    """Routing and the calls; each returns (status, message, data)."""

    def __init__(self, store: Store):
        self.store = store

    def route(self, method: str, parts: list[str], params: dict, caller: str):
        if parts[:1] != ["cloud"] or len(parts) < 2:
            raise KeyError
        p = parts[1:]
        if p == ["users", "details"]:
            return self._dispatch(method, {"GET": self.list_users_details}, params)
        if p == ["users"]:
            return self._dispatch(method, {"GET": self.list_users, "POST": self.add_user}, params)
        if p == ["user"]:
            return self._dispatch(method, {"GET": lambda prm: self.get_user(caller)}, params)
        if p == ["groups"]:
            return self._dispatch(method, {"GET": self.list_groups, "POST": self.add_group}, params)
        if len(p) == 2 and p[0] == "users":
            uid = p[1]
            return self._dispatch(
                method,
                {
                    "GET": lambda prm: self.get_user(uid),
                    "PUT": lambda prm: self.put_user(uid, prm),
                    "DELETE": lambda prm: self.delete_user(uid, caller),
                },
                params,
            )
        if len(p) == 3 and p[0] == "users" and p[2] in ("enable", "disable"):
            uid, enable = p[1], p[2] == "enable"
            return self._dispatch(
                method, {"PUT": lambda prm: self.set_enabled(uid, enable, caller)}, params
            )
        if len(p) == 3 and p[0] == "users" and p[2] == "groups":
            uid = p[1]
            return self._dispatch(
                method,
                {
                    "GET": lambda prm: self.user_groups(uid),
                    "POST": lambda prm: self.add_to_group(uid, prm),
                    "DELETE": lambda prm: self.remove_from_group(uid, prm, caller),
                },
                params,
            )
        if len(p) in (2, 3) and p[0] == "groups" and (len(p) == 2 or p[2] == "users"):
            gid = p[1]
            handlers = {"GET": lambda prm: self.group_users(gid)}
            if len(p) == 2:
                handlers["DELETE"] = lambda prm: self.delete_group(gid)
            return self._dispatch(method, handlers, params)
        raise KeyError

    @staticmethod
    def _dispatch(method, handlers, params):
        if method not in handlers:
            raise MethodNotAllowed
        return handlers[method](params)

    # users
    def list_users(self, params):
        return OK, "", {"users": list(self._search(params))}

    def _search(self, params: dict) -> dict[str, dict | None]:
        """The page of matching uids, in order, each with its user when already read."""
        search = (params.get("search") or "").lower()
        if search:
            users = {u["id"]: u for u in self.store.users()}
            uids = [
                u
                for u in sorted(users, key=str.lower)
                if search in u.lower()
                or search in (users[u].get("displayname") or "").lower()
                or search in (users[u].get("email") or "").lower()
            ]
            return {u: users[u] for u in _page(uids, params)}
        return dict.fromkeys(_page(sorted(self.store.uids(), key=str.lower), params))

    def list_users_details(self, params):
        """``getUsersDetails``: {"users": {uid: user data}}; an empty PHP array is ``[]``."""
        details = {}
        for uid, user in self._search(params).items():
            user = user if user is not None else self.store.get_user(uid)
            if user is not None:
                details[uid] = user_data(user, self.store)
        return OK, "", {"users": details or []}

    def add_user(self, params):
        uid = params.get("userid") or ""
        password = params.get("password") or ""
        email = params.get("email") or ""
        groups = params.get("groups") or []
        with self.store.transaction():
            if self.store.has_user(uid):
                raise OCSError(102, "User already exists")
            for g in groups:
                if not self.store.has_group(g):
                    raise OCSError(104, f"group {g} does not exist")
            if len(password) > 469:
                raise OCSError(101, "Invalid password value")
            if password == "" and email == "":
                raise OCSError(
                    108, "To send a password link to the user an email address is required."
                )
            if not valid_uid(uid):
                raise OCSError(
                    101,
                    "Only the following characters are allowed in a username: "
                    '"a-z", "A-Z", "0-9", spaces and "_.@-\'"',
                )
            user = new_user(uid, password or None)
            user["groups"] = list(dict.fromkeys(groups))
            if params.get("displayName"):
                apply_edit(user, "displayname", params["displayName"])
            if params.get("quota"):
                apply_edit(user, "quota", params["quota"])
            if params.get("language"):
                apply_edit(user, "language", params["language"])
            if email:
                apply_edit(user, "email", email)
            self.store.save_user(user)
        self.store.make_home(uid)
        LOG.info("created user %s", uid)
        return OK, "", {"id": uid}

    def get_user(self, uid):
        user = self.store.get_user(uid)
        if user is None:
            raise OCSError(404, "User does not exist")
        return OK, "", user_data(user, self.store)

    def put_user(self, uid, params):
        key = params.get("key")
        value = params.get("value")
        if key is None or value is None:
            raise OCSError(400, "Missing key or value")  # Nextcloud: missing controller argument
        edit_user(self.store, uid, key, value)
        return OK, "", None

    def delete_user(self, uid, caller):
        if not self.store.has_user(uid):
            raise OCSError(RESPOND_NOT_FOUND)
        if uid == caller:
            raise OCSError(101)
        self.store.delete_user(uid)
        self.store.remove_home(uid)
        LOG.info("deleted user %s", uid)
        return OK, "", None

    def set_enabled(self, uid, enabled, caller):
        user = self.store.get_user(uid)
        if user is None or uid == caller:
            raise OCSError(101)
        user["enabled"] = enabled
        self.store.save_user(user)
        return OK, "", None

    def user_groups(self, uid):
        user = self.store.get_user(uid)
        if user is None:
            raise OCSError(RESPOND_NOT_FOUND)
        return OK, "", {"groups": list(user["groups"])}

    def add_to_group(self, uid, params):
        gid = params.get("groupid") or ""
        if gid == "":
            raise OCSError(101)
        if not self.store.has_group(gid):
            raise OCSError(102)
        user = self.store.get_user(uid)
        if user is None:
            raise OCSError(103)
        if gid not in user["groups"]:
            user["groups"].append(gid)
            self.store.save_user(user)
        return OK, "", None

    def remove_from_group(self, uid, params, caller):
        gid = (params.get("groupid") or "").strip()
        if gid == "":
            raise OCSError(101)
        if not self.store.has_group(gid):
            raise OCSError(102)
        user = self.store.get_user(uid)
        if user is None:
            raise OCSError(103)
        if uid == caller and gid == "admin":
            raise OCSError(105, "Cannot remove yourself from the admin group")
        if gid in user["groups"]:
            user["groups"].remove(gid)
            self.store.save_user(user)
        return OK, "", None

    # groups
    def list_groups(self, params):
        search = (params.get("search") or "").lower()
        gids = sorted(self.store.gids(), key=str.lower)
        if search:
            gids = [g for g in gids if search in g.lower()]
        return OK, "", {"groups": _page(gids, params)}

    def add_group(self, params):
        gid = params.get("groupid") or ""
        if not gid.strip():
            raise OCSError(101, "Invalid group name")
        with self.store.transaction():
            if self.store.has_group(gid):
                raise OCSError(102, "group exists")
            self.store.add_group(gid, params.get("displayname") or gid)
        return OK, "", None

    def group_users(self, gid):
        if not self.store.has_group(gid):
            raise OCSError(404, "The requested group could not be found")
        return OK, "", {"users": sorted(self.store.members(gid))}

    def delete_group(self, gid):
        if not self.store.has_group(gid) or gid == "admin":
            raise OCSError(101)
        self.store.delete_group(gid)
        return OK, "", None


# ----------------------------------------------------------------- HTTP glue
def parse_params(query: str, body: bytes, content_type: str) -> dict:
    """Query string and body merged; ``groups[]``/``groups[0]`` become a list."""
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    ctype = (content_type or "").split(";")[0].strip().lower()
    extra: dict = {}
    if body:
        if ctype == "application/json":
            try:
                loaded = json.loads(body)
            except ValueError as e:
                raise OCSError(101, "Invalid JSON body") from e
            if isinstance(loaded, dict):
                extra = loaded
        else:
            pairs += urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    params: dict = {}
    for key, value in pairs:
        if "[" in key and key.endswith("]"):
            name = key[: key.index("[")]
            params.setdefault(name, [])
            if isinstance(params[name], list):
                params[name].append(value)
        else:
            params[key] = value
    for key, value in extra.items():
        params[key] = (
            value if not isinstance(value, (int, float)) or isinstance(value, bool) else str(value)
        )
    if "groups" in params and not isinstance(params["groups"], list):
        params["groups"] = [params["groups"]] if params["groups"] else []
    return params


def response_format(params: dict, accept: str | None) -> str:
    fmt = params.get("format")
    if fmt in ("json", "xml"):
        return fmt
    for part in (accept or "").split(","):
        mime = part.split(";")[0].strip()
        if "/" in mime:
            sub = mime.split("/", 1)[1]
            if sub in ("json", "xml"):
                return sub
    return "xml"


class Handler(BaseHTTPRequestHandler):
    server_version = SERVER_HEADER
    sys_version = ""
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: headers and body go out in two writes, and with Nagle's algorithm and
    # the client's delayed ACK every keep-alive request would wait ~40 ms for nothing
    disable_nagle_algorithm = True
    api: API
    store: Store

    def version_string(self) -> str:
        return SERVER_HEADER

    def log_message(self, format, *args):
        LOG.info("%s %s", self.address_string(), format % args)

    def _send(self, http: int, ctype: str, body: bytes) -> None:
        """Keep the answer: it goes out once the request's transaction is committed."""
        self._answer = (http, ctype, body)

    def _write(self, http: int, ctype: str, body: bytes) -> None:
        self.send_response(http)
        for cookie in getattr(self, "_set_cookies", []):
            self.send_header("Set-Cookie", cookie)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Nextcloud-Double", "this is a contract double, not Nextcloud")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _password_ok(self, user: dict, password: str) -> bool:
        # PBKDF2 costs ~50 ms: remember successful checks (hash of the attempt only)
        key = (user["id"], user.get("password"), hashlib.sha256(password.encode()).hexdigest())
        if key in _AUTH_CACHE:
            return True
        if check_password(password, user.get("password")):
            _AUTH_CACHE[key] = True
            return True
        return False

    def _cookies(self) -> dict[str, str]:
        jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie") or "")
        except http.cookies.CookieError:
            return {}
        return {name: morsel.value for name, morsel in jar.items()}

    def _token_login(self, secret: str, login: str | None = None) -> str | None:
        """The uid a token authenticates, or None.

        The token of a disabled or deleted user is refused, as ``Session::completeLogin``
        refuses it in Nextcloud at every request, and deleted at once (Nextcloud:
        ``checkTokenCredentials``, at most every 5 minutes). ``lastActivity`` is updated at
        most once a minute.
        """
        token = self.store.find_token(secret)
        if token is None or (login is not None and token["uid"] != login):
            return None
        user = self.store.get_user(token["uid"])
        now = int(time.time())
        if user is None or not user.get("enabled"):
            self.store.delete_token(token["id"])
            LOG.info("token %s of disabled user %s invalidated", token["id"], token["uid"])
            return None
        if now - int(token.get("lastActivity", 0)) >= ACTIVITY_UPDATE_INTERVAL:
            self.store.touch_token(token["id"], now)
        return token["uid"]

    def _caller(self) -> str | None:
        cookies = self._cookies()
        session = cookies.get(SESSION_COOKIE)
        if session:
            uid = self._token_login(session)
            if uid is not None:
                return uid
        header = self.headers.get("Authorization") or ""
        if not header.lower().startswith("basic "):
            return None
        try:
            raw = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        uid, sep, password = raw.partition(":")
        if not sep:
            return None
        # an app password (or any token of this login) in place of the password
        if self._token_login(password, login=uid) is not None:
            return uid
        user = self.store.get_user(uid)
        if user is None or not user.get("enabled") or not self._password_ok(user, password):
            time.sleep(0.05)
            return None
        # Session::logClientIn: a password login creates a session token only for a client
        # that keeps cookies (it sent back the cookie_test cookie set on an earlier answer).
        if COOKIE_TEST in cookies:
            agent = self.headers.get("User-Agent") or "unknown client"
            secret = self.store.add_token(uid, agent, TEMPORARY_TOKEN)
            self._set_cookies.append(f"{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Lax")
        else:
            self._set_cookies.append(f"{COOKIE_TEST}=test; Path=/; Max-Age=3600")
        return uid

    def _handle(self, url: urllib.parse.SplitResult, body: bytes) -> None:
        if url.path == "/status.php" and self.command in ("GET", "HEAD"):
            data = {
                "installed": True,
                "maintenance": False,
                "needsDbUpgrade": False,
                "version": EMULATED_NEXTCLOUD_VERSION,
                "versionstring": "contract double",
                "edition": "",
                "productname": "Nextcloud contract double (not Nextcloud)",
                "extendedSupport": False,
            }
            return self._send(200, "application/json; charset=utf-8", json.dumps(data).encode())
        version = (
            1
            if url.path.startswith("/ocs/v1.php/")
            else 2
            if url.path.startswith("/ocs/v2.php/")
            else 0
        )
        if version == 0:
            return self._send(
                404, "text/plain; charset=utf-8", b"Not found (Nextcloud contract double)\n"
            )
        try:
            params = parse_params(url.query, body, self.headers.get("Content-Type") or "")
        except OCSError as e:
            return self._send(*render(version, "xml", e.code, e.message, None))
        fmt = response_format(params, self.headers.get("Accept"))
        parts = [
            urllib.parse.unquote(p) for p in url.path[len("/ocs/v1.php/") :].split("/") if p != ""
        ]
        try:
            probe = self.api.route("__PROBE__", parts, params, "")
        except KeyError:
            text = (
                "Invalid query, please check the syntax. API specifications are here: "
                "http://www.freedesktop.org/wiki/Specifications/open-collaboration-services.\n"
            )
            return self._send(*render(version, fmt, RESPOND_NOT_FOUND, text, None))
        except MethodNotAllowed:
            probe = None
        del probe
        caller = self._caller()
        if caller is None or (self.headers.get("OCS-APIRequest") or "").lower() != "true":
            return self._send(
                *render(version, fmt, RESPOND_UNAUTHORISED, "Current user is not logged in", None)
            )
        user = self.store.get_user(caller) or {}
        if parts != ["cloud", "user"] and "admin" not in user.get("groups", []):
            return self._send(
                *render(version, fmt, 403, "Logged in account must be an admin", None)
            )
        try:
            with self.store.transaction():  # a failing call undoes its own changes only
                status, message, data = self.api.route(self.command, parts, params, caller)
        except MethodNotAllowed:
            return self._send(405, "text/plain; charset=utf-8", b"")
        except OCSError as e:
            status, message, data = e.code, e.message, None
        except Exception:
            LOG.exception("unexpected error")
            status, message, data = RESPOND_UNKNOWN_ERROR, "Internal error", None
        return self._send(*render(version, fmt, status, message, data))

    def _guarded(self) -> None:
        self._set_cookies: list[str] = []
        self._answer: tuple[int, str, bytes] | None = None
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        # one request, one transaction (the occ double waits for it, and it for occ)
        with self.server.request_lock, self.store.transaction():  # type: ignore[attr-defined]
            self._handle(url, body)
        if self._answer is not None:
            self._write(*self._answer)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _guarded


def make_server(host: str, port: int, store: Store) -> ThreadingHTTPServer:
    api = API(store)
    handler = type("BoundHandler", (Handler,), {"api": api, "store": store})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.request_lock = threading.Lock()  # type: ignore[attr-defined]
    return server


def serve(host: str, port: int, store: Store) -> None:
    server = make_server(host, port, store)
    LOG.warning(
        "%s: a CONTRACT DOUBLE of Nextcloud's OCS provisioning API, NOT Nextcloud; "
        "listening on %s:%d, store %s",
        DOUBLE_NAME,
        host,
        server.server_address[1],
        store.path,
    )
    try:
        server.serve_forever()
    finally:
        server.server_close()


def configure_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(name)s %(levelname)s %(message)s"
    )
