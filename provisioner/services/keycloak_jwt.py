"""Keycloak's admin API for a client that proves itself with a signed JWT (RFC 7523).

A client with a shared secret hands that secret to every holder of Keycloak's view-clients
role (the admin console shows it, and so does the audit's read-only client). A client that
signs a short-lived assertion with a private key only it holds leaves nothing in Keycloak
that can act as it: Keycloak keeps the certificate. The sso role makes the key pair
(`sso_service_clients[].key`); `services.sso.client_key_file` names the private key.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from jwcrypto import jwk, jwt
from keycloak import KeycloakOpenIDConnection

from provisioner.errors import ConfigError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Seconds an assertion is valid: Keycloak accepts it once (by its jti) within that time.
ASSERTION_LIFETIME = 60


def load_key(key_pem: str) -> jwk.JWK:
    """The client's private key, or an error that says which file to fix."""
    try:
        key = jwk.JWK.from_pem(key_pem.encode("utf-8"))
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"services.sso.client_key_file does not hold a PEM private key ({type(exc).__name__})",
            "name the key the sso role made (sso_secrets_dir/keycloak_coopctl_client.pem)",
        ) from None
    if not key.has_private:
        raise ConfigError("services.sso.client_key_file holds a public key, not the private key",
                          "name the .pem file, not its .crt certificate")
    return key


def client_assertion(key: jwk.JWK, client_id: str, audience: str,
                     now: float | None = None) -> str:
    """A signed assertion that `client_id` is asking the server named `audience` (the
    realm's issuer URL) for a token."""
    issued = int(now if now is not None else time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": audience,
              "jti": secrets.token_urlsafe(16), "iat": issued,
              "exp": issued + ASSERTION_LIFETIME}
    token = jwt.JWT(header={"alg": "RS256", "typ": "JWT"}, claims=json.dumps(claims))
    token.make_signed_token(key)
    return token.serialize()


class SignedJwtConnection(KeycloakOpenIDConnection):
    """python-keycloak's connection, getting each token with a fresh signed assertion.

    Client-credentials tokens carry no refresh token, so python-keycloak asks for a new one
    through `get_token` whenever the current one expires: every request is authenticated by
    the key, never by a secret.
    """

    def __init__(self, key_pem: str, **kwargs: Any) -> None:
        self._key = load_key(key_pem)
        self._audience: str | None = None
        super().__init__(grant_type="client_credentials", **kwargs)

    def get_token(self) -> None:
        if self._audience is None:
            # The realm's issuer, as Keycloak names itself (its configured hostname, which
            # need not be the address coopctl reaches it by): the audience Keycloak checks.
            self._audience = str(self.keycloak_openid.well_known()["issuer"])
        self.token = self.keycloak_openid.token(
            grant_type="client_credentials",
            client_assertion_type=ASSERTION_TYPE,
            client_assertion=client_assertion(self._key, self.client_id, self._audience),
        )
