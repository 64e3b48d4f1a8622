"""Helpers shared by the lab tests."""

from __future__ import annotations

import ssl

import ldap3

BASE = "dc=demo,dc=coop"


def coopctl_connection(lab) -> ldap3.Connection:
    """The lab directory as coopctl's service account, over StartTLS with the lab CA."""
    tls = ldap3.Tls(ca_certs_file=str(lab.ca_file), validate=ssl.CERT_REQUIRED)
    server = ldap3.Server(lab.addresses["dir"], port=389, tls=tls, connect_timeout=5)
    conn = ldap3.Connection(
        server,
        user=f"cn=coopctl,ou=services,{BASE}",
        password=lab.secret("ldap_coopctl"),
        raise_exceptions=False,
    )
    conn.open()
    assert conn.start_tls(), conn.result
    assert conn.bind(), conn.result
    return conn
