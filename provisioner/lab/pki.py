"""The lab's certificate authority and one TLS certificate per host.

Services in the lab speak TLS exactly as in production (StartTLS to LDAP, IMAPS, HTTPS), so
each host gets a certificate whose SANs are its FQDN, short name and IP, signed by a lab CA
that tests and ``coopctl`` trust through ``pki/ca.crt``. Files are created once and kept, so a
resumed ``up`` does not change certificates under running services.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.lab.config import LabConfig

VALIDITY = dt.timedelta(days=825)


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
    pki: Path, ca: x509.Certificate, ca_key: rsa.RSAPrivateKey, short: str, fqdn: str, ip: str
) -> None:
    crt_path, key_path = pki / f"{short}.crt", pki / f"{short}.key"
    if crt_path.exists() and key_path.exists():
        return
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
                [
                    x509.DNSName(fqdn),
                    x509.DNSName(short),
                    x509.IPAddress(ipaddress.ip_address(ip)),
                ]
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


def ensure_pki(cfg: LabConfig) -> None:
    """CA plus HOST.crt / HOST.key for every host of the lab."""
    ca, ca_key = ensure_ca(cfg.pki_dir)
    for host in cfg.hosts:
        ensure_host_cert(cfg.pki_dir, ca, ca_key, host, cfg.fqdn(host), cfg.address(host))
