"""Network probes the infrastructure checks use from the machine running the audit.

Plain sockets and the standard library's ssl module: a TLS handshake as a named site (to check
the certificate a client would see) and one limited to TLS 1.0/1.1 (to check they are
refused), with just enough SMTP and LDAP to reach STARTTLS. Nothing here writes anywhere.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import Any

# Reason of a check's skip on a host it does not concern: the audit leaves these out.
NOT_APPLICABLE = "not applicable"


def address(hostvars: dict[str, Any]) -> str:
    return str(hostvars.get("ansible_host") or hostvars["inventory_hostname"])


def site_name(hostvars: dict[str, Any], key: str, prefix: str) -> str:
    """A site's public name: the inventory's `<role>_fqdn` or the role's default pattern."""
    domain = hostvars.get("coop_domain", "")
    return str(hostvars.get(key) or f"{prefix}.{domain}")


def tls_probe(addr: str, port: int, name: str, ca: str | None,
              starttls: bytes | None = None) -> dict[str, Any]:
    """Handshake with `addr:port` as `name`; returns the peer certificate or the error."""
    context = ssl.create_default_context(cafile=ca)
    sock = socket.create_connection((addr, port), timeout=10)
    try:
        if starttls is not None:
            _starttls(sock, starttls)
        with context.wrap_socket(sock, server_hostname=name) as tls:
            return {"cert": tls.getpeercert(), "version": tls.version()}
    finally:
        sock.close()


def old_protocol_accepted(addr: str, port: int, name: str,
                          starttls: bytes | None = None) -> str | None:
    """The protocol name if TLS 1.0 or 1.1 completes a handshake, else None."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with contextlib.suppress(ssl.SSLError):
        context.set_ciphers("ALL:@SECLEVEL=0")
    sock = socket.create_connection((addr, port), timeout=10)
    try:
        if starttls is not None:
            _starttls(sock, starttls)
        with context.wrap_socket(sock, server_hostname=name) as tls:
            return tls.version()
    except (ssl.SSLError, OSError):
        return None
    finally:
        sock.close()


def _starttls(sock: socket.socket, protocol: bytes) -> None:
    """Enough of SMTP or LDAP to switch to TLS."""
    if protocol == b"smtp":
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"EHLO audit.invalid\r\n")
        while (line := reader.readline()) and line[3:4] == b"-":
            pass
        sock.sendall(b"STARTTLS\r\n")
        reply = reader.readline()
        if not reply.startswith(b"220"):
            raise ssl.SSLError(f"STARTTLS refused: {reply!r}")
    elif protocol == b"ldap":
        # ExtendedRequest 1.3.6.1.4.1.1466.20037 (StartTLS), message id 1.
        oid = b"1.3.6.1.4.1.1466.20037"
        req = b"\x77" + bytes([len(oid) + 2]) + b"\x80" + bytes([len(oid)]) + oid
        msg = b"\x02\x01\x01" + req
        sock.sendall(b"\x30" + bytes([len(msg)]) + msg)
        answer = sock.recv(4096)
        if b"\x0a\x01\x00" not in answer:
            raise ssl.SSLError("StartTLS refused by the LDAP server")
