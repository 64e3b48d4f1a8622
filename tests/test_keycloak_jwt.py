"""The signed client assertion coopctl sends Keycloak instead of a secret (RFC 7523).

Keycloak's acceptance of it is tested on the lab (tests/lab/test_security_sso.py); here, what
the assertion says and that a bad key file is an error with a hint, checked with jwcrypto
against the certificate openssl made, as the sso role makes it.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from jwcrypto import jwk, jwt
from jwcrypto.jws import InvalidJWSSignature

from provisioner.errors import ConfigError
from provisioner.services.keycloak_jwt import client_assertion, load_key

ISSUER = "https://sso.demo.coop:8443/realms/demo"


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """What the sso role's task runs: a private key and its self-signed certificate."""
    d = tmp_path_factory.mktemp("key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
                    "-days", "1", "-subj", "/CN=coopctl", "-keyout", str(d / "k.pem"),
                    "-out", str(d / "k.pem.crt")], check=True, capture_output=True)
    return (d / "k.pem").read_text(), (d / "k.pem.crt").read_text()


def test_the_assertion_is_signed_by_the_key_and_names_client_and_issuer(key_pair) -> None:
    private, certificate = key_pair
    signed = client_assertion(load_key(private), "coopctl", ISSUER, now=1_000_000)
    public = jwk.JWK.from_pem(certificate.encode())
    checked = jwt.JWT(jwt=signed, key=public, check_claims=False)
    claims = json.loads(checked.claims)
    assert claims["iss"] == claims["sub"] == "coopctl"
    assert claims["aud"] == ISSUER
    assert claims["exp"] - claims["iat"] == 60 and claims["iat"] == 1_000_000
    assert json.loads(checked.header)["alg"] == "RS256"
    other = client_assertion(load_key(private), "coopctl", ISSUER, now=1_000_000)
    assert json.loads(jwt.JWT(jwt=other, key=public, check_claims=False).claims)["jti"] \
        != claims["jti"]  # Keycloak accepts each assertion once


def test_another_key_does_not_verify(key_pair) -> None:
    private, _ = key_pair
    stranger = jwk.JWK.generate(kty="RSA", size=2048)
    signed = client_assertion(load_key(private), "coopctl", ISSUER)
    with pytest.raises(InvalidJWSSignature):
        jwt.JWT(jwt=signed, key=stranger, check_claims=False)


@pytest.mark.parametrize("content", ["not a key", "certificate"])
def test_a_wrong_key_file_is_an_error_with_a_hint(key_pair, content: str) -> None:
    text = key_pair[1] if content == "certificate" else content
    with pytest.raises(ConfigError) as caught:
        load_key(text)
    assert "client_key_file" in caught.value.message and caught.value.hint
