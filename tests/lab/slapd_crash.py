"""A directory client that dies while slapd commits its transaction (run as a child process).

    python -m tests.lab.slapd_crash CONFIG COUNT PREFIX

Binds as coopctl (with the lab's coopctl configuration file CONFIG), queues COUNT adds in one
RFC 5805 transaction as `coopctl member import` does, then sends the EndTransaction request,
prints ``ENDTXN`` and waits for the parent to kill it: slapd is then committing, and sees its
client go away. Debian 12's slapd 2.5.13 frees the transaction's queued operations when the
connection closes while txn_end_extop is still walking them, and dies of a SIGSEGV
(servers/slapd/txn.c against connection_abandon() in connection.c).

The last add repeats the first one's DN, so the server refuses the transaction at its very end
if it survives: whatever happens, nothing of it is written, and no test data is left behind.
The messages are built here with ldap3's own operations (and the two-byte EndTransaction value
by hand) rather than with provisioner.ldapconn, whose internals other work changes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import ldap3

from provisioner.config import load
from provisioner.ldapconn import connect

START_TXN = "1.3.6.1.1.21.1"
TXN_SPEC = "1.3.6.1.1.21.2"
END_TXN = "1.3.6.1.1.21.3"


def _octets(value: bytes) -> bytes:
    """A DER OCTET STRING (the transaction identifiers of slapd are short)."""
    assert len(value) < 128
    return b"\x04" + bytes([len(value)]) + value


def end_request(txn_id: bytes) -> bytes:
    """txnEndReq ::= SEQUENCE { commit BOOLEAN DEFAULT TRUE, identifier OCTET STRING }."""
    body = _octets(txn_id)
    return b"\x30" + bytes([len(body)]) + body


def entry(prefix: str, number: int) -> tuple[str, dict[str, object]]:
    uid = f"{prefix}{number:06d}"
    return f"uid={uid}", {
        "uid": uid, "cn": f"Crash Test {number}", "sn": "Crash Test", "givenName": "Crash",
        "mail": f"{uid}@demo.coop", "employeeNumber": f"{prefix}-{number}",
        "coopMemberStatus": "active", "coopService": ["mail", "cloud"],
    }


def main() -> None:
    config, count, prefix = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    cfg = load(config).directory
    conn = connect(cfg)
    if not conn.extended(START_TXN):
        sys.exit(f"StartTransaction refused: {conn.result}")
    txn_id = conn.result.get("responseValue") or b""
    control = [(TXN_SPEC, True, txn_id)]
    people = f"ou=people,{cfg.base_dn}"
    for number in [*range(count - 1), 0]:  # the last one repeats the first DN
        rdn, attributes = entry(prefix, number)
        if not conn.add(f"{rdn},{people}", ["inetOrgPerson", "coopMember"], attributes,
                        controls=control):
            sys.exit(f"add {number} refused before the commit: {conn.result}")
    print("ENDTXN", flush=True)
    # The request leaves at once; the answer never comes back to this process.
    conn.extended(END_TXN, end_request(txn_id))
    time.sleep(3600)


if __name__ == "__main__":
    ldap3.set_config_parameter("RESTARTABLE_TRIES", 0)
    main()
