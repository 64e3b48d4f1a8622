"""Just enough BER to pipeline LDAP write requests (RFC 4511).

ldap3 encodes each request through pyasn1, about 4 ms per add, and waits for
each answer; a 10,000-member import then takes over a minute. Inside an LDAP
transaction the server only queues the requests until EndTxn, so coopctl
encodes them here (a few microseconds each), sends them in batches and reads
the batch of answers: the same protocol, about a hundred times faster.
Only the three request types a transaction carries are encoded, and only
message ids and result codes are decoded from the answers.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MODIFY_OPERATIONS = {"MODIFY_ADD": 0, "MODIFY_DELETE": 1, "MODIFY_REPLACE": 2}


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


_SHORT = [bytes([n]) for n in range(0x80)]  # one-byte lengths, made once


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:  # most values: a name, a mail address (the import's hot path)
        return _SHORT[tag] + _SHORT[n] + content if tag < 0x80 else \
            bytes((tag, n)) + content
    return bytes([tag]) + _length(n) + content


def octets(value: Any) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode("utf-8")
    n = len(data)
    if n < 0x80:
        return b"\x04" + _SHORT[n] + data
    return b"\x04" + _length(n) + data


def integer(value: int, tag: int = 0x02) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)
    return tlv(tag, body)


def _values(values: Any) -> list[Any]:
    return values if isinstance(values, list | tuple) else [values]


def add_request(dn: str, attributes: dict[str, Any]) -> bytes:
    parts = []
    for name, values in attributes.items():
        if isinstance(values, list | tuple):
            encoded = b"".join([octets(v) for v in values])
        else:
            encoded = octets(values)
        parts.append(tlv(0x30, octets(name) + tlv(0x31, encoded)))
    return tlv(0x68, octets(dn) + tlv(0x30, b"".join(parts)))


def modify_request(dn: str, changes: dict[str, list[tuple[str, list[Any]]]]) -> bytes:
    items = []
    for name, operations in changes.items():
        for operation, values in operations:
            code = MODIFY_OPERATIONS[operation]
            partial = tlv(0x30, octets(name) + tlv(0x31, b"".join(octets(v) for v in values)))
            items.append(tlv(0x30, integer(code, 0x0A) + partial))
    return tlv(0x66, octets(dn) + tlv(0x30, b"".join(items)))


def delete_request(dn: str) -> bytes:
    return tlv(0x4A, dn.encode("utf-8"))


def control(oid: str, critical: bool, value: bytes | None) -> bytes:
    body = octets(oid) + (tlv(0x01, b"\xff") if critical else b"")
    if value is not None:
        body += octets(value)
    return tlv(0x30, body)


def message(message_id: int, operation: bytes, controls: Iterable[bytes] = ()) -> bytes:
    ctrl = b"".join(controls)
    return tlv(0x30, integer(message_id) + operation + (tlv(0xA0, ctrl) if ctrl else b""))


EXTENDED_RESPONSE = 0x78
# LDAPResult-shaped answers: bind, search done, modify, add, delete, modDN, compare, extended.
RESULT_TAGS = {0x61, 0x65, 0x67, 0x69, 0x6B, 0x6D, 0x6F, EXTENDED_RESPONSE}


class ProtocolError(ConnectionError):
    """The bytes on the connection are not the LDAP messages expected."""


@dataclass(frozen=True)
class Response:
    message_id: int
    operation_tag: int
    result_code: int
    diagnostic: str
    value: bytes = b""  # an extended response's responseValue


def _read_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the element at `pos`."""
    tag = data[pos]
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    return tag, pos, pos + length


def parse_response(data: bytes) -> Response:
    """Message id, operation, result code and diagnostic of any LDAPResult-shaped answer.

    Anything else the server may send on this connection (a search entry, or the
    Notice of Disconnection, whose message id is 0) is returned with its tag and a
    result code of -1 when it carries none, so that callers can skip it or stop.
    """
    try:
        _tag, start, _end = _read_tlv(data, 0)
        _t, id_start, id_end = _read_tlv(data, start)
        message_id = int.from_bytes(data[id_start:id_end], "big", signed=True)
        op_tag, op_start, op_end = _read_tlv(data, id_end)
        if op_tag not in RESULT_TAGS:
            return Response(message_id, op_tag, -1, "")
        _t, code_start, code_end = _read_tlv(data, op_start)
        code = int.from_bytes(data[code_start:code_end], "big")
        _t, _dn_start, dn_end = _read_tlv(data, code_end)
        _t, msg_start, msg_end = _read_tlv(data, dn_end)
    except IndexError:
        raise ProtocolError("the directory sent a message coopctl cannot read") from None
    value = b""
    if op_tag == EXTENDED_RESPONSE:
        for tag, c_start, c_end in _children(data, msg_end, op_end):
            if tag == 0x8B:  # responseValue [11]
                value = data[c_start:c_end]
    return Response(message_id, op_tag, code, data[msg_start:msg_end].decode("utf-8", "replace"),
                    value)


def extended_request(oid: str, value: bytes | None = None) -> bytes:
    """ExtendedRequest: requestName [0], requestValue [1]."""
    body = tlv(0x80, oid.encode("ascii"))
    if value is not None:
        body += tlv(0x81, value)
    return tlv(0x77, body)


def txn_end_value(identifier: bytes, commit: bool) -> bytes:
    """RFC 5805 txnEndReq: SEQUENCE { commit BOOLEAN DEFAULT TRUE, identifier }."""
    flag = b"" if commit else tlv(0x01, b"\x00")
    return tlv(0x30, flag + octets(identifier))


def txn_end_failed_id(value: bytes) -> int | None:
    """The message id of the update that made a commit fail (RFC 5805 txnEndRes), if given."""
    if not value:
        return None
    try:
        _tag, start, end = _read_tlv(value, 0)
        for tag, c_start, c_end in _children(value, start, end):
            if tag == 0x02:
                return int.from_bytes(value[c_start:c_end], "big", signed=True)
    except IndexError:
        return None
    return None


class MessageReader:
    """Splits a byte stream from the server into whole LDAP messages."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.pos = 0  # start of the unread part; compacted now and then, not per message

    def _need(self, n: int) -> None:
        while len(self.buffer) - self.pos < n:
            chunk = self.sock.recv(262144)
            if not chunk:
                raise ConnectionError("the directory closed the connection")
            if self.pos > 1 << 20:
                del self.buffer[: self.pos]
                self.pos = 0
            self.buffer += chunk

    def read(self) -> bytes:
        self._need(2)
        first = self.buffer[self.pos + 1]
        header = 2 + (first & 0x7F if first >= 0x80 else 0)
        self._need(header)
        length = first if first < 0x80 else int.from_bytes(
            self.buffer[self.pos + 2:self.pos + header], "big")
        self._need(header + length)
        data = bytes(self.buffer[self.pos:self.pos + header + length])
        self.pos += header + length
        return data


# -- searches ------------------------------------------------------------------

PAGED_RESULTS = "1.2.840.113556.1.4.319"
SCOPES = {"BASE": 0, "LEVEL": 1, "SUBTREE": 2}


def search_request(base: str, scope: str, ldap_filter: bytes, attributes: list[str]) -> bytes:
    """SearchRequest with derefAliases never (syncprov refuses anything else)."""
    body = (octets(base) + integer(SCOPES[scope], 0x0A) + integer(0, 0x0A)
            + integer(0) + integer(0) + tlv(0x01, b"\x00") + ldap_filter
            + tlv(0x30, b"".join(octets(a) for a in attributes)))
    return tlv(0x63, body)


def paged_control(size: int, cookie: bytes) -> bytes:
    return control(PAGED_RESULTS, False, tlv(0x30, integer(size) + octets(cookie)))


@dataclass
class SearchPage:
    entries: list[tuple[str, dict[str, list[bytes]]]]
    result_code: int
    diagnostic: str
    cookie: bytes


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    items = []
    pos = start
    while pos < end:
        tag, c_start, c_end = _read_tlv(data, pos)
        items.append((tag, c_start, c_end))
        pos = c_end
    return items


def parse_entry(data: bytes, start: int, end: int) -> tuple[str, dict[str, list[bytes]]]:
    """DN and attributes of a SearchResultEntry; the hot loop of every listing."""
    read = _read_tlv
    _t, dn_s, dn_e = read(data, start)
    _t, pos, attrs_end = read(data, dn_e)
    attributes: dict[str, list[bytes]] = {}
    while pos < attrs_end:
        _t, a_start, a_end = read(data, pos)
        _t, n_s, n_e = read(data, a_start)
        _t, v_pos, v_end = read(data, n_e)
        values = []
        while v_pos < v_end:
            _t, s, e = read(data, v_pos)
            values.append(data[s:e])
            v_pos = e
        attributes[data[n_s:n_e].decode("utf-8")] = values
        pos = a_end
    return data[dn_s:dn_e].decode("utf-8"), attributes


def read_search_page(reader: MessageReader, message_id: int) -> SearchPage:
    """Entries up to and including SearchResultDone, with the paging cookie."""
    entries = []
    while True:
        data = reader.read()
        _tag, start, end = _read_tlv(data, 0)
        parts = _children(data, start, end)
        got_id = int.from_bytes(data[parts[0][1]:parts[0][2]], "big", signed=True)
        if got_id != message_id:
            raise ProtocolError(f"unexpected answer to message {got_id}")
        op_tag, op_start, op_end = parts[1]
        if op_tag == 0x64:
            entries.append(parse_entry(data, op_start, op_end))
        elif op_tag == 0x65:
            result = _children(data, op_start, op_end)
            code = int.from_bytes(data[result[0][1]:result[0][2]], "big")
            diagnostic = data[result[2][1]:result[2][2]].decode("utf-8", "replace")
            cookie = b""
            if len(parts) > 2 and parts[2][0] == 0xA0:
                for _c, c_start, c_end in _children(data, parts[2][1], parts[2][2]):
                    fields = _children(data, c_start, c_end)
                    if data[fields[0][1]:fields[0][2]].decode() == PAGED_RESULTS:
                        value = fields[-1]
                        inner = _children(data, value[1], value[2])[0]
                        cookie_field = _children(data, inner[1], inner[2])[1]
                        cookie = data[cookie_field[1]:cookie_field[2]]
            return SearchPage(entries, code, diagnostic, cookie)
