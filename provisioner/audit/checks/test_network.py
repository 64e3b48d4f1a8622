"""What the coop's servers show to the network, probed from the machine running the audit.

TLS: each endpoint's certificate is valid for its public name, signed by the coop's CA and not
expiring within 30 days, and TLS 1.0/1.1 are refused. Mail: no open relay, no password without
TLS. LDAP: no anonymous read of member data, no simple bind without TLS.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import time
from typing import Any

import ldap3
import pytest

from provisioner.audit.probes import (
    NOT_APPLICABLE,
    address,
    old_protocol_accepted,
    site_name,
    tls_probe,
)

testinfra_hosts = ["ansible://all"]
EXPIRY_DAYS = 30


def _endpoints(hostvars: dict[str, Any]) -> list[tuple[int, str, bytes | None]]:
    groups = hostvars.get("group_names", [])
    own = f"{hostvars['inventory_hostname']}.{hostvars.get('coop_domain', '')}"
    out: list[tuple[int, str, bytes | None]] = []
    if "ldap_servers" in groups:
        out += [(636, own, None), (389, own, b"ldap")]
    if "sso_servers" in groups:
        out.append((int(hostvars.get("sso_https_port", 8443)), own, None))
    if "mail_servers" in groups:
        out += [(993, own, None), (587, own, b"smtp")]
    for group, key, prefix in (("wiki_servers", "wiki_fqdn", "wiki"),
                               ("pads_servers", "pads_fqdn", "pads"),
                               ("cloud_servers", "cloud_fqdn", "cloud")):
        if group in groups:
            out.append((443, site_name(hostvars, key, prefix), None))
    return out


def _ids(hostvars: dict[str, Any]) -> str:
    return address(hostvars)


@pytest.mark.severity("high")
def test_certificates_valid_for_their_names(hostvars: dict[str, Any], ca_file: str | None) -> None:
    """each TLS endpoint's certificate names the site, is trusted and valid for 30 more days"""
    addr = _ids(hostvars)
    problems = []
    for port, name, starttls in _endpoints(hostvars):
        try:
            peer = tls_probe(addr, port, name, ca_file, starttls)
        except ssl.SSLCertVerificationError as exc:
            problems.append(f"{name}:{port}: {exc.verify_message}")
            continue
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"{name}:{port}: no TLS ({exc})")
            continue
        left = (ssl.cert_time_to_seconds(peer["cert"]["notAfter"]) - time.time()) / 86400
        if left < EXPIRY_DAYS:
            problems.append(f"{name}:{port}: certificate expires in {left:.0f} days")
    assert not problems, "; ".join(problems)


@pytest.mark.severity("high")
def test_old_tls_refused(hostvars: dict[str, Any]) -> None:
    """TLS 1.0 and 1.1 handshakes are refused on every endpoint"""
    addr = _ids(hostvars)
    accepted = []
    for port, name, starttls in _endpoints(hostvars):
        with contextlib.suppress(OSError):
            version = old_protocol_accepted(addr, port, name, starttls)
            if version:
                accepted.append(f"{name}:{port} accepts {version}")
    assert not accepted, "; ".join(accepted)


@pytest.mark.severity("critical")
def test_mail_not_an_open_relay(hostvars: dict[str, Any]) -> None:
    """port 25 refuses mail from outside to an outside address"""
    if "mail_servers" not in hostvars.get("group_names", []):
        pytest.skip(f"{NOT_APPLICABLE}: not a mail host")
    with smtplib.SMTP(_ids(hostvars), 25, timeout=15) as smtp:
        smtp.ehlo("audit.invalid")
        smtp.mail("audit@example.org")
        code, reply = smtp.rcpt("relay-test@example.net")
        smtp.rset()
    assert code >= 400, f"RCPT to an outside address was accepted ({code} {reply!r})"


@pytest.mark.severity("high")
def test_no_password_without_tls(hostvars: dict[str, Any]) -> None:
    """submission offers AUTH only after STARTTLS"""
    if "mail_servers" not in hostvars.get("group_names", []):
        pytest.skip(f"{NOT_APPLICABLE}: not a mail host")
    with smtplib.SMTP(_ids(hostvars), 587, timeout=15) as smtp:
        smtp.ehlo("audit.invalid")
        offers_auth = smtp.has_extn("auth")
    assert not offers_auth, "AUTH is offered before STARTTLS on port 587"


@pytest.mark.severity("critical")
def test_ldap_no_anonymous_read(hostvars: dict[str, Any], coop_config: Any,
                                ca_file: str | None) -> None:
    """an anonymous LDAP client sees no member and no group"""
    if "ldap_servers" not in hostvars.get("group_names", []):
        pytest.skip(f"{NOT_APPLICABLE}: not a directory host")
    base = coop_config.directory.base_dn
    tls = ldap3.Tls(ca_certs_file=ca_file, validate=ssl.CERT_REQUIRED) if ca_file else None
    server = ldap3.Server(_ids(hostvars), port=389, tls=tls, connect_timeout=10)
    conn = ldap3.Connection(server, auto_bind=False, receive_timeout=15)
    conn.open()
    if tls:
        conn.start_tls()
    conn.bind()
    conn.search(base, "(|(objectClass=coopMember)(objectClass=groupOfNames))",
                attributes=["uid", "mail", "member"], size_limit=5)
    seen = [e.entry_dn for e in conn.entries]
    conn.unbind()
    assert not seen, f"anonymous search returned {', '.join(seen)}"


@pytest.mark.severity("high")
def test_ldap_no_simple_bind_in_clear(hostvars: dict[str, Any], coop_config: Any) -> None:
    """a password bind without TLS is refused (confidentiality required)"""
    if "ldap_servers" not in hostvars.get("group_names", []):
        pytest.skip(f"{NOT_APPLICABLE}: not a directory host")
    server = ldap3.Server(_ids(hostvars), port=389, connect_timeout=10)
    # A bind DN that does not exist and a wrong password: nothing real is ever sent in clear.
    conn = ldap3.Connection(server, user=f"uid=audit-probe,ou=people,"
                            f"{coop_config.directory.base_dn}", password="not-a-password",
                            receive_timeout=15)
    conn.open()
    conn.bind()
    code = conn.result.get("result")
    conn.unbind()
    assert code == 13, (f"a simple bind without TLS got result {code} "
                        f"({conn.result.get('description')}), not confidentialityRequired (13)")
