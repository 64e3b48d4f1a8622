"""Connections to the directory, and all-or-nothing writes.

Every change coopctl makes goes through an LDAP transaction (RFC 5805, which
OpenLDAP's back-mdb implements): either the whole change lands or none of it
does, so an interrupted import or a refused operation never leaves a member
half-created. Connection failures are turned into errors that say what to
check; the bind password never appears in any of them.
"""

from __future__ import annotations

import ssl
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import ldap3
from ldap3.core import exceptions as ldap_exc
from ldap3.core.results import RESULT_CODES as RESULT_NAMES
from pyasn1.codec.ber import encoder
from pyasn1.type import namedtype, univ

from provisioner import ber
from provisioner.config import DirectoryConfig
from provisioner.errors import ConfigError, Conflict, CoopError, DirectoryUnavailable, NotFound

START_TXN = "1.3.6.1.1.21.1"
TXN_SPEC = "1.3.6.1.1.21.2"
END_TXN = "1.3.6.1.1.21.3"
BATCH = 500


class _TxnEndRequest(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.DefaultedNamedType("commit", univ.Boolean(True)),
        namedtype.NamedType("identifier", univ.OctetString()),
    )


def _tls(cfg: DirectoryConfig) -> ldap3.Tls | None:
    if cfg.tls == "none":
        return None
    return ldap3.Tls(
        validate=ssl.CERT_REQUIRED,
        version=ssl.PROTOCOL_TLS_CLIENT,
        ca_certs_file=cfg.ca_file,
    )


def _server(uri: str, cfg: DirectoryConfig) -> ldap3.Server:
    return ldap3.Server(
        uri,
        use_ssl=uri.startswith("ldaps://"),
        tls=_tls(cfg) if not uri.startswith("ldapi://") else None,
        connect_timeout=int(cfg.timeout),
        get_info=ldap3.NONE,
    )


def _unreachable(cfg: DirectoryConfig, exc: Exception) -> CoopError:
    text = str(exc)
    if "certificate" in text.lower() or isinstance(exc, ldap_exc.LDAPStartTLSError):
        return DirectoryUnavailable(
            f"TLS with the directory at {cfg.uri} failed: {text}",
            "check directory.ca_file (the CA that signed the server's certificate) "
            "and that the uri's host name matches the certificate",
        )
    return DirectoryUnavailable(
        f"cannot reach the directory at {cfg.uri}: {text}",
        "check directory.uri, that slapd runs, and the firewall",
    )


def _close_quietly(conn: ldap3.Connection) -> None:
    """Drop a connection that already failed; a second error would hide the first."""
    with suppress(ldap_exc.LDAPException, OSError):
        conn.unbind()


def connect(cfg: DirectoryConfig, check_base: bool = True) -> ldap3.Connection:
    """A bound connection as the coopctl service account."""
    server = _server(cfg.uri, cfg)
    secret = cfg.bind_secret()
    conn = ldap3.Connection(
        server,
        user=cfg.bind_dn,
        password=secret,
        raise_exceptions=False,
        receive_timeout=int(cfg.timeout),
        auto_referrals=False,
    )
    del secret
    try:
        conn.open()
        if cfg.tls == "starttls" and not conn.start_tls():
            raise DirectoryUnavailable(
                f"the directory at {cfg.uri} refused StartTLS: {conn.result.get('message')}",
                "enable TLS on the server, or use an ldaps:// uri",
            )
        if not conn.bind():
            result = conn.result or {}
            code = result.get("result")
            if code == 49:
                raise DirectoryUnavailable(
                    f"the directory refused the credentials of {cfg.bind_dn}",
                    "check directory.bind_dn and the password in the bind secret file",
                )
            raise DirectoryUnavailable(
                f"binding to {cfg.uri} as {cfg.bind_dn} failed: {result.get('description')} "
                f"{result.get('message') or ''}".strip(),
                "check that the server requires no stronger security than configured",
            )
    except (ldap_exc.LDAPSocketOpenError, ldap_exc.LDAPSocketReceiveError,
            ldap_exc.LDAPStartTLSError, ldap_exc.LDAPSocketSendError, ssl.SSLError,
            OSError) as exc:
        _close_quietly(conn)
        raise _unreachable(cfg, exc) from None
    if check_base:
        ok = conn.search(cfg.base_dn, "(objectClass=*)", ldap3.BASE, attributes=["1.1"],
                         dereference_aliases=ldap3.DEREF_NEVER)
        if not ok and (conn.result or {}).get("result") == 32:
            conn.unbind()
            raise ConfigError(
                f"the base DN {cfg.base_dn} does not exist in the directory at {cfg.uri}",
                "fix directory.base_dn, or create the tree with `coopctl init`",
            )
    return conn


def connect_admin(cfg: DirectoryConfig) -> ldap3.Connection:
    """SASL EXTERNAL over ldapi: how `coopctl init` administers its own server."""
    if not cfg.admin_uri:
        raise ConfigError(
            "directory.admin_uri is not set",
            "`coopctl init` needs the server's ldapi:// socket, e.g. ldapi://%2Frun%2Fslapd%2Fldapi",
        )
    conn = ldap3.Connection(
        _server(cfg.admin_uri, cfg),
        authentication=ldap3.SASL,
        sasl_mechanism=ldap3.EXTERNAL,
        sasl_credentials="",
        raise_exceptions=False,
        receive_timeout=int(cfg.timeout),
        fast_decoder=False,
    )
    try:
        if not conn.bind():
            raise DirectoryUnavailable(
                f"SASL EXTERNAL bind on {cfg.admin_uri} failed: {conn.result.get('description')}",
                "run `coopctl init` as the user slapd maps to its manager (usually root)",
            )
    except (ldap_exc.LDAPSocketOpenError, OSError) as exc:
        raise _unreachable(cfg, exc) from None
    return conn


def result_error(conn: ldap3.Connection, doing: str) -> CoopError:
    """Turn a failed operation's result into an error the user can act on."""
    result = conn.result or {}
    code = result.get("result")
    text = f"{doing} failed: {result.get('description')} {result.get('message') or ''}".strip()
    if code == 32:
        return NotFound(text, "run `coopctl init` if the tree was never created")
    if code in (20, 68):
        return Conflict(text)
    if code == 50:
        return ConfigError(text, "the coopctl account lacks a right: see schemas/acl.j2")
    if code in (51, 52, 81):
        return DirectoryUnavailable(text, "the server is busy or refusing work; try again later")
    return CoopError(text)


@dataclass
class _Op:
    kind: str
    dn: str
    detail: Any = None


@dataclass
class Transaction:
    """Collects writes, then sends them in one RFC 5805 transaction.

    Nothing reaches the server before `commit`, so building a transaction is
    free to fail half-way. `commit` sends every operation with the
    transaction control and ends the transaction; the server applies all of
    them or none.
    """

    ops: list[_Op] = field(default_factory=list)

    def add(self, dn: str, attributes: dict[str, Any]) -> None:
        self.ops.append(_Op("add", dn, attributes))

    def modify(self, dn: str, changes: dict[str, list[tuple[str, list[Any]]]]) -> None:
        self.ops.append(_Op("modify", dn, changes))

    def delete(self, dn: str) -> None:
        self.ops.append(_Op("delete", dn))

    def __len__(self) -> int:
        return len(self.ops)

    def commit(self, conn: ldap3.Connection) -> None:
        if not self.ops:
            return
        if not conn.extended(START_TXN):
            raise CoopError(
                "the directory does not support LDAP transactions "
                f"({(conn.result or {}).get('description')})",
                "coopctl needs OpenLDAP 2.5 or later with the mdb backend",
            )
        txn_id = conn.result["responseValue"]
        try:
            self._send_all(conn, txn_id)
        except BaseException:
            self._end(conn, txn_id, commit=False)
            raise
        self._end(conn, txn_id, commit=True)

    def _send_all(self, conn: ldap3.Connection, txn_id: bytes) -> None:
        """Pipeline the operations in batches and check every answer.

        The server only queues them until EndTxn, so their answers come back
        at once; batches keep both sides' socket buffers from filling up.
        """
        spec = ber.control(TXN_SPEC, True, txn_id)
        sock = conn.socket
        reader = ber.MessageReader(sock)
        for start in range(0, len(self.ops), BATCH):
            batch = self.ops[start:start + BATCH]
            ids: dict[int, _Op] = {}
            payload = []
            for op in batch:
                message_id = conn.server.next_message_id()
                ids[message_id] = op
                if op.kind == "add":
                    request = ber.add_request(op.dn, op.detail)
                elif op.kind == "modify":
                    request = ber.modify_request(op.dn, op.detail)
                else:
                    request = ber.delete_request(op.dn)
                payload.append(ber.message(message_id, request, [spec]))
            sock.sendall(b"".join(payload))
            for _ in batch:
                response = ber.parse_response(reader.read())
                op = ids.get(response.message_id)
                if response.result_code != 0:
                    where = f"{op.kind} of {op.dn}" if op else "an operation"
                    conn.result = {"result": response.result_code,
                                   "description": RESULT_NAMES.get(response.result_code,
                                                                   str(response.result_code)),
                                   "message": response.diagnostic}
                    raise result_error(conn, where)

    def _end(self, conn: ldap3.Connection, txn_id: bytes, commit: bool) -> None:
        request = _TxnEndRequest()
        request["commit"] = commit
        request["identifier"] = txn_id
        # The server applies every queued operation now: allow it time in
        # proportion (mdb writes thousands of entries per second).
        previous = conn.socket.gettimeout()
        conn.socket.settimeout(max(previous or 0, 30 + len(self.ops) / 100))
        try:
            ok = conn.extended(END_TXN, encoder.encode(request))
        finally:
            conn.socket.settimeout(previous)
        if commit and not ok:
            error = result_error(conn, f"a change of {len(self.ops)} operations")
            error.message += "; the directory applied none of them"
            raise error


def set_password(conn: ldap3.Connection, dn: str, password: str) -> None:
    """RFC 3062 password modify: the server hashes; coopctl never sees a hash."""
    ok = conn.extend.standard.modify_password(user=dn, new_password=password)
    if not ok:
        result = conn.result or {}
        # The message may quote a policy, never the password itself.
        raise CoopError(
            f"the directory refused the new password of {dn}: "
            f"{result.get('description')} {result.get('message') or ''}".strip(),
            "choose a longer password, or check the password policy",
        )
