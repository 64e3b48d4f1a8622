"""The lab's certificate authority and one TLS certificate per host.

Services in the lab speak TLS exactly as in production (StartTLS to LDAP, IMAPS, HTTPS), so
each host gets a certificate whose SANs are its FQDN, short name and IP, plus every public name
it serves (``published_names``: the apps host carries ``wiki.``, ``pads.`` and
``cloud.<domain>``, the SSO host ``sso.<domain>``), signed by a lab CA that tests and ``coopctl``
trust through ``pki/ca.crt``. Files are created once and kept, so a resumed ``up`` does not
change certificates under running services; a certificate that lacks a name the lab now needs
(one made before a site was added) is issued again, and the next deploy puts it in place.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.lab.config import GROUPS, LabConfig

VALIDITY = dt.timedelta(days=825)
#: Public sites (first label of their name) of each inventory group: the host that carries the
#: group serves them on its certificate (nginx's virtual hosts, Keycloak's public name).
SITES = {
    "wiki_servers": ("wiki",),
    "pads_servers": ("pads",),
    "cloud_servers": ("cloud",),
    "sso_servers": ("sso",),
}


def published_names(short: str, domain: str) -> list[str]:
    """The public site names host `short` serves, from the lab's groups (``pads.demo.coop``...)."""
    return [
        f"{site}.{domain}"
        for group, host in GROUPS.items()
        if host == short
        for site in SITES.get(group, ())
    ]


def cert_names(cert: x509.Certificate) -> set[str]:
    """Every DNS name and IP address in the certificate's SANs, as text."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {n.lower() for n in san.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key() -> rsa.RSAPrivateKey:
    # RSA rather than ECDSA: every TLS stack in the lab (GnuTLS slapd, Java, PHP) accepts it.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_ca(pki: Path, coop: str = "demo") -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    pki.mkdir(mode=0o700, parents=True, exist_ok=True)
    crt_path, key_path = pki / "ca.crt", pki / "ca.key"
    if crt_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return x509.load_pem_x509_certificate(crt_path.read_bytes()), key
    key = _key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"coop {coop} lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"coop {coop} lab CA"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _pem_key(key))
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def ensure_host_cert(
    pki: Path,
    ca: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    short: str,
    fqdn: str,
    ip: str,
    extra_names: Sequence[str] | None = None,
) -> bool:
    """HOST.crt/.key naming `fqdn`, `short`, `ip` and `extra_names` (default: the sites the
    host serves, ``published_names``). An existing certificate is kept while it names all of
    them and was signed by this CA; otherwise it is issued again. True when (re)issued."""
    domain = fqdn.partition(".")[2]
    extra = list(published_names(short, domain) if extra_names is None else extra_names)
    names = list(dict.fromkeys([fqdn, short, *extra]))
    crt_path, key_path = pki / f"{short}.crt", pki / f"{short}.key"
    if crt_path.exists() and key_path.exists():
        current = x509.load_pem_x509_certificate(crt_path.read_bytes())
        wanted = {n.lower() for n in names} | {str(ipaddress.ip_address(ip))}
        if wanted <= cert_names(current) and current.issuer == ca.subject:
            return False
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, fqdn)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in names]
                + [x509.IPAddress(ipaddress.ip_address(ip))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(key_path, _pem_key(key))
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True


def ensure_pki(cfg: LabConfig) -> None:
    """CA plus HOST.crt / HOST.key for every host of the lab."""
    ca, ca_key = ensure_ca(cfg.pki_dir)
    for host in cfg.hosts:
        ensure_host_cert(cfg.pki_dir, ca, ca_key, host, cfg.fqdn(host), cfg.address(host))
