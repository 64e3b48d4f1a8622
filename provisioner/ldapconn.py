"""Connections to the directory, and all-or-nothing writes.

Every change coopctl makes goes through an LDAP transaction (RFC 5805, which
OpenLDAP's back-mdb implements): either the whole change lands or none of it
does, so an interrupted command or a refused operation never leaves a member
half-created (a large import is several transactions: see `provisioner.imports`).
Connection failures are turned into errors that say what to check, and whether
a commit was under way; a refusal names the operation and what the user knows
it by (the CSV line). The bind password never appears in any of them.
"""

from __future__ import annotations

import ssl
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import ldap3
from ldap3.core import exceptions as ldap_exc
from ldap3.core.results import RESULT_CODES as RESULT_NAMES

from provisioner import ber
from provisioner.config import DirectoryConfig
from provisioner.errors import ConfigError, Conflict, CoopError, DirectoryUnavailable, NotFound
from provisioner.indoubt import was_applied

START_TXN = "1.3.6.1.1.21.1"
TXN_SPEC = "1.3.6.1.1.21.2"
END_TXN = "1.3.6.1.1.21.3"
BATCH = 500


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


def close_quietly(conn: ldap3.Connection) -> None:
    """Drop a connection that already failed; a second error would hide the first."""
    with suppress(ldap_exc.LDAPException, OSError):
        conn.unbind()


# Errors that mean "nobody listens yet": worth waiting for, unlike a TLS or credentials error.
_NOT_LISTENING = ("connection refused", "connection reset", "errno 111", "errno 104")


def _not_listening(exc: BaseException) -> bool:
    return any(marker in str(exc).lower() for marker in _NOT_LISTENING)


def _establish(conn: ldap3.Connection, cfg: DirectoryConfig) -> None:
    """Open, StartTLS and bind `conn` once."""
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


def reopen(conn: ldap3.Connection, cfg: DirectoryConfig) -> None:
    """(Re)open and bind `conn`, waiting up to ``cfg.retry_seconds`` while nobody listens.

    The same Connection object is reused, so that whoever holds it goes on with it after a
    broken connection was settled (see `Transaction.commit`).
    """
    deadline = time.monotonic() + cfg.retry_seconds
    pause = 0.2
    told = False
    while True:
        close_quietly(conn)
        try:
            _establish(conn, cfg)
            return
        except (ldap_exc.LDAPSocketOpenError, ldap_exc.LDAPSocketReceiveError,
                ldap_exc.LDAPStartTLSError, ldap_exc.LDAPSocketSendError, ssl.SSLError,
                OSError) as exc:
            close_quietly(conn)
            if not _not_listening(exc) or time.monotonic() + pause > deadline:
                raise _unreachable(cfg, exc) from None
            if not told:
                sys.stderr.write(f"coopctl: the directory at {cfg.uri} does not answer yet "
                                 f"({exc}); trying again for up to {cfg.retry_seconds:g} s\n")
                told = True
        except CoopError:
            close_quietly(conn)
            raise
        time.sleep(pause)
        pause = min(pause * 2, 2.0)
        conn.server.reset_availability()  # ldap3 skips an address that failed once


def connect(cfg: DirectoryConfig, check_base: bool = True) -> ldap3.Connection:
    """A bound connection as the coopctl service account.

    A server that refuses connections is tried again for up to ``cfg.retry_seconds``: slapd
    restarting (after a crash, the openldap role has systemd start it again within about two
    seconds, or after an upgrade) does not fail a cron sync or a command.
    """
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
    reopen(conn, cfg)
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


@dataclass(slots=True)
class _Op:
    kind: str
    dn: str
    detail: Any = None
    label: str | None = None  # what the user knows this by: "line 57 (jan.peeters)"

    def describe(self) -> str:
        verb = {"add": "adding", "modify": "changing", "delete": "removing"}[self.kind]
        return f"{self.label}: {verb} {self.dn}" if self.label else f"{verb} {self.dn}"


def broken_connection(exc: BaseException, doing: str,
                      in_doubt: bool | None = None) -> DirectoryUnavailable:
    """The connection failed: say whether anything may have been written, and what to do.

    in_doubt: True while a commit was under way, False before it, None when the
    failure is outside a transaction (a read, a password change).
    """
    reason = str(exc) or type(exc).__name__
    again = ("check that slapd runs (systemctl status slapd) and the network, then run the "
             "same command again")
    if in_doubt is None:
        return DirectoryUnavailable(
            f"the connection to the directory broke during {doing} ({reason})", again)
    if in_doubt:
        return DirectoryUnavailable(
            f"the connection to the directory broke while it committed {doing} ({reason}); "
            "a transaction is applied whole or not at all",
            again + ": it finds what is left to do",
        )
    return DirectoryUnavailable(
        f"the connection to the directory broke during {doing} ({reason}); "
        "the transaction was not committed: nothing of it was written", again)


def live_socket(conn: ldap3.Connection, doing: str) -> Any:
    """The connection's socket, or an error if ldap3 already closed it after a failure."""
    if conn.socket is None or conn.closed:
        raise broken_connection(ConnectionError("the connection is closed"), doing)
    return conn.socket


# A socket error, or ldap3's reports of one (some of them are not OSErrors).
CONNECTION_ERRORS = (OSError, ldap_exc.LDAPCommunicationError)


class BrokenCommit(Exception):
    """The connection broke during a commit: before EndTransaction (nothing was written) or
    after it (`in_doubt`: the server may or may not have committed)."""

    def __init__(self, error: DirectoryUnavailable, in_doubt: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.in_doubt = in_doubt


@dataclass
class Transaction:
    """Collects writes, then sends them in one RFC 5805 transaction.

    Nothing reaches the server before `commit`, so building a transaction is
    free to fail half-way. `commit` sends every operation with the
    transaction control and ends the transaction; the server applies all of
    them or none. Every failure is a CoopError naming the operation (and the
    CSV line, through its label): a refusal by the server, or a connection
    that broke, in which case the error says whether the commit was under way.
    """

    ops: list[_Op] = field(default_factory=list)

    def add(self, dn: str, attributes: dict[str, Any], label: str | None = None) -> None:
        self.ops.append(_Op("add", dn, attributes, label))

    def modify(self, dn: str, changes: dict[str, list[tuple[str, list[Any]]]],
               label: str | None = None) -> None:
        self.ops.append(_Op("modify", dn, changes, label))

    def delete(self, dn: str, label: str | None = None) -> None:
        self.ops.append(_Op("delete", dn, None, label))

    def __len__(self) -> int:
        return len(self.ops)

    def commit(self, conn: ldap3.Connection, settle: DirectoryConfig | None = None) -> None:
        """Send every operation and EndTransaction.

        With `settle` (the directory's settings), a connection that breaks is not the user's
        problem: `conn` is opened again (waiting for a restarting slapd), a transaction that
        was cut off while the server committed is read back, and the transaction is sent once
        more unless it was applied. Only when that cannot tell, or fails again, does the error
        reach the user.
        """
        try:
            self._commit(conn)
        except BrokenCommit as broken:
            if settle is None:
                raise broken.error from None
            self._settle(conn, settle, broken)

    def _settle(self, conn: ldap3.Connection, cfg: DirectoryConfig,
                broken: BrokenCommit) -> None:
        try:
            reopen(conn, cfg)
            applied = was_applied(conn, self.ops) if broken.in_doubt else False
        except (CoopError, *CONNECTION_ERRORS, ldap_exc.LDAPException):
            raise broken.error from None
        if applied is None:
            raise broken.error
        if not applied:
            try:
                self._commit(conn)
            except BrokenCommit as again:
                raise again.error from None

    def _commit(self, conn: ldap3.Connection) -> None:
        if not self.ops:
            return
        what = f"a change of {len(self.ops)} operation(s)"
        try:
            started = conn.extended(START_TXN)
        except CONNECTION_ERRORS as exc:
            raise BrokenCommit(broken_connection(exc, what, in_doubt=False), False) from None
        if not started:
            raise CoopError(
                "the directory does not support LDAP transactions "
                f"({(conn.result or {}).get('description')})",
                "coopctl needs OpenLDAP 2.5 or later with the mdb backend",
            )
        txn_id = conn.result["responseValue"]
        reader = ber.MessageReader(live_socket(conn, what))
        sent: dict[int, _Op] = {}
        try:
            refused = self._send_all(conn, reader, txn_id, sent)
        except CONNECTION_ERRORS as exc:
            raise BrokenCommit(broken_connection(exc, what, in_doubt=False), False) from None
        if refused is not None:
            with suppress(*CONNECTION_ERRORS):
                self._end(conn, reader, txn_id, commit=False)
            raise refused
        try:
            response = self._end(conn, reader, txn_id, commit=True)
        except CONNECTION_ERRORS as exc:
            raise BrokenCommit(broken_connection(exc, what, in_doubt=True), True) from None
        if response.result_code != 0:
            failed = sent.get(ber.txn_end_failed_id(response.value) or -1)
            raise _refusal(response, failed, f"the directory refused {what}",
                           f"none of the {len(self.ops)} operation(s) was applied")

    def _send_all(self, conn: ldap3.Connection, reader: ber.MessageReader, txn_id: bytes,
                  sent: dict[int, _Op]) -> CoopError | None:
        """Pipeline the operations in batches and check every answer.

        The server queues them until EndTxn and acknowledges each at once, or refuses
        one straight away (a DN it cannot parse, a naming context it does not hold).
        Every answer of a batch is read before anything else is sent, so that the
        connection stays in step; the first refusal stops the sending and is returned.
        """
        spec = ber.control(TXN_SPEC, True, txn_id)
        sock = conn.socket
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
            sent.update(ids)
            refused: CoopError | None = None
            pending = set(ids)
            while pending:
                response = ber.parse_response(reader.read())
                if response.message_id == 0:
                    raise ConnectionError(f"the server ended the session: {response.diagnostic}")
                if response.message_id not in pending:
                    continue  # not ours (nothing else runs on this connection meanwhile)
                pending.discard(response.message_id)
                if response.result_code != 0 and refused is None:
                    refused = _refusal(response, ids[response.message_id],
                                       "the directory refused an operation",
                                       "the transaction was abandoned: nothing was written")
            if refused is not None:
                return refused
        return None

    def _end(self, conn: ldap3.Connection, reader: ber.MessageReader, txn_id: bytes,
             commit: bool) -> ber.Response:
        """Send EndTxn and wait for its answer (skipping any stray one before it)."""
        message_id = conn.server.next_message_id()
        request = ber.extended_request(END_TXN, ber.txn_end_value(txn_id, commit))
        # The server applies every queued operation now: allow it time in
        # proportion (mdb writes thousands of entries per second).
        previous = conn.socket.gettimeout()
        conn.socket.settimeout(max(previous or 0, 30 + len(self.ops) / 100))
        try:
            conn.socket.sendall(ber.message(message_id, request))
            while True:
                response = ber.parse_response(reader.read())
                if response.message_id == message_id:
                    return response
                if response.message_id == 0:
                    raise ConnectionError(f"the server ended the session: {response.diagnostic}")
        finally:
            with suppress(OSError):
                conn.socket.settimeout(previous)


def _refusal(response: ber.Response, op: _Op | None, doing: str, outcome: str) -> CoopError:
    """The server's refusal of one operation, named as the user knows it."""
    name = RESULT_NAMES.get(response.result_code, str(response.result_code))
    reason = f"{name}{': ' + response.diagnostic if response.diagnostic else ''}"
    where = op.describe() if op is not None else doing
    message = f"{where}: the directory refused it ({reason}); {outcome}"
    code = response.result_code
    if code == 68:
        return Conflict(message, "something else created this entry meanwhile: run the "
                        "command again, it reads the directory afresh")
    if code == 32:
        return NotFound(message, "an entry it refers to is gone: run the command again; "
                        "`coopctl init` if the tree itself is missing")
    if code == 50:
        return ConfigError(message, "the coopctl account lacks a right: see schemas/acl.j2 "
                           "and the server's configuration")
    if code in (51, 52, 80, 81):
        return DirectoryUnavailable(message, "the server is busy or refusing work; try again "
                                    "later")
    return CoopError(message, "the directory does not accept this value or entry: correct it "
                     "(or the server's schema) and run the command again")


def set_password(conn: ldap3.Connection, dn: str, password: str, *, reset: bool = False) -> None:
    """RFC 3062 password modify: the server hashes; coopctl never sees a hash.

    `reset`: the password was chosen by someone other than the member (an initial or a
    reset password), so it is marked with ppolicy's `pwdReset`: at their next bind slapd
    allows the member nothing but changing it, and the member's own change clears the mark.
    The mark comes after the password because a password change may clear it.
    """
    try:
        ok = conn.extend.standard.modify_password(user=dn, new_password=password)
    except CONNECTION_ERRORS as exc:
        raise broken_connection(exc, f"setting the password of {dn}") from None
    if not ok:
        result = conn.result or {}
        # The message may quote a policy, never the password itself.
        raise CoopError(
            f"the directory refused the new password of {dn}: "
            f"{result.get('description')} {result.get('message') or ''}".strip(),
            "choose a longer password, or check the password policy",
        )
    if reset:
        _mark_reset(conn, dn)


def _mark_reset(conn: ldap3.Connection, dn: str) -> None:
    """pwdReset: TRUE on dn (the member must change the password at first login)."""
    try:
        ok = conn.modify(dn, {"pwdReset": [(ldap3.MODIFY_REPLACE, ["TRUE"])]})
    except CONNECTION_ERRORS as exc:
        raise broken_connection(exc, f"marking the password of {dn} as one to change") from None
    if not ok:
        result = conn.result or {}
        hint = ("load slapd's ppolicy module and overlay (the openldap role does), then set "
                "the password again" if result.get("result") == 17 else
                "check that coopctl's account may write pwdReset (schemas/acl.j2), then set "
                "the password again")
        raise CoopError(
            f"the password of {dn} was set, but the directory refused to mark it as one the "
            f"member must change: {result.get('description')} "
            f"{result.get('message') or ''}".strip(), hint)
