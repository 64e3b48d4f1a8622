"""The directory's change stream: an RFC 4533 (syncrepl) consumer over one LDAP connection.

OpenLDAP publishes every change through its syncprov overlay; it ignores the Netscape
persistent-search control that ldap3 offers (see docs/watch.md). ldap3 has no syncrepl helper,
so ldap3 only opens, secures and binds the connection (`provisioner.ldapconn.connect`: TLS,
errors, the secret), and the search and its answers are spoken here with `provisioner.ber`,
as `Directory._search` already does for paged listings. Reading is one blocking socket with a
timeout the caller picks, so batching and the periodic work need no thread.

Only what a consumer needs is decoded: entries with their Sync State control, the Sync Info
intermediate messages (new cookie, end of refresh, sets of deleted entryUUIDs), and the final
SearchResultDone with its Sync Done control.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field

import ldap3
from ldap3.operation.search import compile_filter, parse_filter
from pyasn1.codec.ber import encoder

from provisioner import ber

SYNC_REQUEST = "1.3.6.1.4.1.4203.1.9.1.1"
SYNC_STATE = "1.3.6.1.4.1.4203.1.9.1.2"
SYNC_DONE = "1.3.6.1.4.1.4203.1.9.1.3"
SYNC_INFO = "1.3.6.1.4.1.4203.1.9.1.4"
REFRESH_ONLY, REFRESH_AND_PERSIST = 1, 3
STATES = {0: "present", 1: "add", 2: "modify", 3: "delete"}
# e-syncRefreshRequired: the provider cannot resume from this cookie; start again without one.
REFRESH_REQUIRED = 4096

SEARCH_ENTRY, SEARCH_DONE, INTERMEDIATE = 0x64, 0x65, 0x79


class StreamError(ConnectionError):
    """The stream ended or carried something a consumer cannot go on from."""


class RefreshRequired(StreamError):
    """The provider refused the cookie (e-syncRefreshRequired): a full refresh is needed."""


@dataclass
class EntryChange:
    """One entry as the stream reports it (attributes only for add and modify)."""

    state: str  # present | add | modify | delete
    uuid: str
    dn: str
    attributes: dict[str, list[bytes]] = field(default_factory=dict)
    cookie: bytes | None = None


@dataclass
class SyncInfo:
    """A Sync Info message: a new cookie, the end of a refresh phase, or deleted UUIDs."""

    kind: str  # newcookie | refreshDelete | refreshPresent | syncIdSet
    cookie: bytes | None = None
    refresh_done: bool = True
    refresh_deletes: bool = False
    uuids: list[str] = field(default_factory=list)


@dataclass
class SearchDone:
    """The end of the search: refreshOnly finished, or the server ended a persist."""

    result_code: int
    diagnostic: str
    cookie: bytes | None = None
    refresh_deletes: bool = False


Message = EntryChange | SyncInfo | SearchDone


def request_value(mode: int, cookie: bytes | None) -> bytes:
    """syncRequestValue ::= SEQUENCE { mode ENUMERATED, cookie OCTET STRING OPTIONAL,
    reloadHint BOOLEAN DEFAULT FALSE }"""
    return ber.tlv(0x30, ber.integer(mode, 0x0A) + (ber.octets(cookie) if cookie else b""))


def encode_filter(text: str) -> bytes:
    parsed = parse_filter(text, None, False, True, None, False)
    return encoder.encode(compile_filter(parsed.elements[0]))


def _uuid(raw: bytes) -> str:
    return str(uuid.UUID(bytes=raw)) if len(raw) == 16 else raw.hex()


def _fields(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    return ber._children(data, start, end)


def _bool(data: bytes, start: int, end: int) -> bool:
    return any(data[start:end])


def decode_state(value: bytes) -> tuple[str, str, bytes | None]:
    """syncStateValue ::= SEQUENCE { state ENUMERATED, entryUUID, cookie OPTIONAL }"""
    _t, start, end = ber._read_tlv(value, 0)
    parts = _fields(value, start, end)
    state = STATES.get(int.from_bytes(value[parts[0][1]:parts[0][2]], "big"), "unknown")
    entry_uuid = _uuid(value[parts[1][1]:parts[1][2]])
    cookie = value[parts[2][1]:parts[2][2]] if len(parts) > 2 else None
    return state, entry_uuid, cookie


def decode_info(value: bytes) -> SyncInfo:
    """syncInfoValue ::= CHOICE { newcookie [0], refreshDelete [1], refreshPresent [2],
    syncIdSet [3] } (RFC 4533 section 2.5)."""
    tag, start, end = ber._read_tlv(value, 0)
    if tag == 0x80:
        return SyncInfo("newcookie", cookie=value[start:end], refresh_done=False)
    kind = {0xA1: "refreshDelete", 0xA2: "refreshPresent", 0xA3: "syncIdSet"}.get(tag)
    if kind is None:
        raise StreamError(f"unknown Sync Info choice 0x{tag:02x}")
    info = SyncInfo(kind, refresh_done=kind != "syncIdSet")
    for t, s, e in _fields(value, start, end):
        if t == 0x04:
            info.cookie = value[s:e]
        elif t == 0x01 and kind == "syncIdSet":
            info.refresh_deletes = _bool(value, s, e)
        elif t == 0x01:
            info.refresh_done = _bool(value, s, e)
        elif t == 0x31:
            info.uuids = [_uuid(value[us:ue]) for _u, us, ue in _fields(value, s, e)]
    return info


def _controls(data: bytes, parts: list[tuple[int, int, int]]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for tag, start, end in parts[2:]:
        if tag != 0xA0:
            continue
        for _c, c_start, c_end in _fields(data, start, end):
            items = _fields(data, c_start, c_end)
            oid = data[items[0][1]:items[0][2]].decode("ascii")
            value = items[-1]
            found[oid] = data[value[1]:value[2]] if value[0] == 0x04 and len(items) > 1 else b""
    return found


def decode(data: bytes, message_id: int) -> Message | None:
    """One message of the search `message_id`; None for anything a consumer can skip."""
    _tag, start, end = ber._read_tlv(data, 0)
    parts = _fields(data, start, end)
    got = int.from_bytes(data[parts[0][1]:parts[0][2]], "big", signed=True)
    op_tag, op_start, op_end = parts[1]
    if got == 0 and op_tag == 0x78:  # Notice of Disconnection
        raise StreamError("the directory closed the connection (notice of disconnection)")
    if got != message_id:
        return None
    controls = _controls(data, parts)
    if op_tag == SEARCH_ENTRY:
        dn, attributes = ber.parse_entry(data, op_start, op_end)
        if SYNC_STATE not in controls:
            raise StreamError(f"an entry without a Sync State control: {dn}")
        state, entry_uuid, cookie = decode_state(controls[SYNC_STATE])
        return EntryChange(state, entry_uuid, dn, attributes, cookie)
    if op_tag == INTERMEDIATE:
        name, value = "", b""
        for t, s, e in _fields(data, op_start, op_end):
            if t == 0x80:
                name = data[s:e].decode("ascii")
            elif t == 0x81:
                value = data[s:e]
        return decode_info(value) if name == SYNC_INFO else None
    if op_tag == SEARCH_DONE:
        result = _fields(data, op_start, op_end)
        code = int.from_bytes(data[result[0][1]:result[0][2]], "big")
        diagnostic = data[result[2][1]:result[2][2]].decode("utf-8", "replace")
        done = SearchDone(code, diagnostic)
        if controls.get(SYNC_DONE):
            value = controls[SYNC_DONE]
            _t, s, e = ber._read_tlv(value, 0)
            for t, fs, fe in _fields(value, s, e):
                if t == 0x04:
                    done.cookie = value[fs:fe]
                elif t == 0x01:
                    done.refresh_deletes = _bool(value, fs, fe)
        if code == REFRESH_REQUIRED:
            raise RefreshRequired(f"the directory cannot resume from the stored cookie: "
                                  f"{diagnostic or 'e-syncRefreshRequired'}")
        return done
    return None


class Stream:
    """One syncrepl search on a bound ldap3 connection; `read(timeout)` yields its messages.

    The connection belongs to the stream from `start` on: nothing else may use it.
    """

    def __init__(self, conn: ldap3.Connection, base: str, ldap_filter: str,
                 attributes: list[str]) -> None:
        self.conn = conn
        self.base = base
        self.filter = encode_filter(ldap_filter)
        self.attributes = attributes
        self.message_id = 0
        sock = conn.socket
        if sock is None or conn.closed:
            raise StreamError("the connection to the directory is closed")
        self.sock: socket.socket = sock
        _keepalive(self.sock)
        self.reader = ber.MessageReader(self.sock)

    def start(self, cookie: bytes | None, persist: bool) -> None:
        self.message_id = self.conn.server.next_message_id()
        mode = REFRESH_AND_PERSIST if persist else REFRESH_ONLY
        request = ber.search_request(self.base, "SUBTREE", self.filter, self.attributes)
        control = ber.control(SYNC_REQUEST, True, request_value(mode, cookie))
        try:
            self.sock.settimeout(30)
            self.sock.sendall(ber.message(self.message_id, request, [control]))
        except OSError as exc:
            raise StreamError(f"sending the syncrepl search failed: {exc}") from None

    def read(self, timeout: float | None) -> Message | None:
        """The next message, or None when nothing came within `timeout` seconds (None: wait).
        A message cut by the timeout stays buffered and is completed by the next call."""
        # 0 would make the socket non-blocking (EAGAIN, or SSL's want-read), not "poll once"
        self.sock.settimeout(None if timeout is None else max(timeout, 0.001))
        while True:
            try:
                data = self.reader.read()
            except (TimeoutError, BlockingIOError):
                return None
            except (ConnectionError, OSError) as exc:
                raise StreamError(str(exc) or type(exc).__name__) from None
            message = decode(data, self.message_id)
            if message is not None:
                return message


def _keepalive(sock: socket.socket) -> None:
    """A directory that vanishes without closing the connection is noticed within minutes."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:  # not a TCP socket (ldapi) or an SSL wrapper refusing: nothing to tune
        pass
