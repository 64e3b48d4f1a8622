"""The coopctl configuration file.

It is checked against `schemas/coopctl-config.schema.json` before anything
connects anywhere, so a typo is reported with its path in the file rather
than as an LDAP error later. Secrets are never in the file: it names a file
or an environment variable that holds them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from provisioner.errors import ConfigError
from provisioner.resources import schemas_dir

SCHEMA_FILE = schemas_dir() / "coopctl-config.schema.json"
DEFAULT_PATHS = (Path("coopctl.yaml"), Path("/etc/coopctl/coopctl.yaml"))


def read_secret_file(path: Path, what: str) -> str:
    """A secret from a file that only its owner may read; never logged or kept."""
    try:
        mode = path.stat().st_mode
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}",
                          "create it with the secret, mode 0600") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{what} {path} is readable by others", f"run: chmod 600 {path}")
    return secret


@dataclass(frozen=True)
class DirectoryConfig:
    uri: str
    base_dn: str
    bind_dn: str
    tls: str
    ca_file: str | None = None
    bind_secret_file: str | None = None
    bind_secret_env: str = "COOPCTL_BIND_SECRET"
    admin_uri: str | None = None
    timeout: float = 10.0
    # How long a server that refuses connections (slapd restarting) is tried again.
    retry_seconds: float = 10.0

    @property
    def people_dn(self) -> str:
        return f"ou=people,{self.base_dn}"

    @property
    def groups_dn(self) -> str:
        return f"ou=groups,{self.base_dn}"

    @property
    def plans_dn(self) -> str:
        return f"ou=plans,{self.base_dn}"

    @property
    def services_dn(self) -> str:
        return f"ou=services,{self.base_dn}"

    @property
    def placeholder_dn(self) -> str:
        """The member an otherwise empty groupOfNames holds (the schema needs one)."""
        return f"cn=nobody,{self.base_dn}"

    def bind_secret(self) -> str:
        """The service account's password, read when needed and never kept."""
        if self.bind_secret_file:
            secret = read_secret_file(Path(self.bind_secret_file), "the bind secret file")
        else:
            secret = os.environ.get(self.bind_secret_env, "")
        if not secret:
            raise ConfigError(
                "no password for the directory's coopctl account",
                f"set directory.bind_secret_file in the config or ${self.bind_secret_env}",
            )
        return secret


@dataclass(frozen=True)
class SyncSettings:
    """How `coopctl sync` runs (the `sync` section); every path has a default."""

    state_dir: Path
    journal: Path
    archive_dir: Path
    ca_file: str | None = None
    grace_days: int = 30
    max_destructive_share: float = 0.1
    min_destructive_count: int = 5
    min_member_ratio: float = 0.5
    default_language: str = "en"


@dataclass(frozen=True)
class AuditCredentials:
    """The `audit` section: read-only accounts the audit uses instead of coopctl's own.

    `directory` is a DirectoryConfig of the read-only account (same server and TLS settings);
    `services` holds, per service, settings that replace the service's own during an audit.
    """

    directory: DirectoryConfig | None = None
    services: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    directory: DirectoryConfig
    mail_domain: str
    coop: str = "coop"
    min_password_length: int = 10
    default_plan: str | None = None
    source: Path | None = field(default=None, compare=False)
    inventory: Path | None = None
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    sync: SyncSettings | None = None
    audit: AuditCredentials | None = None


def _is_loopback(uri: str) -> bool:
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme == "ldapi":
        return True
    host = parsed.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def parse(data: Any, source: Path | None = None) -> Config:
    """Build a Config from already-loaded YAML, or explain what is wrong."""
    import jsonschema  # 100 ms of imports: only when a configuration is read

    where = f" in {source}" if source else ""
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors:
            path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
            lines.append(f"  {path}: {error.message}")
        raise ConfigError(
            f"the configuration{where} is not valid:\n" + "\n".join(lines),
            f"see {SCHEMA_FILE.name} for every setting",
        )
    d = data["directory"]
    uri: str = d["uri"]
    tls = d.get("tls") or ("ldaps" if uri.startswith("ldaps://") else "none"
                           if uri.startswith("ldapi://") else "starttls")
    if tls == "ldaps" and not uri.startswith("ldaps://"):
        raise ConfigError(f"directory.tls is ldaps but the uri{where} is {uri}",
                          "use an ldaps:// uri, or tls: starttls")
    if tls == "none" and not _is_loopback(uri) and not d.get("allow_insecure", False):
        raise ConfigError(
            f"directory.tls is none{where} but {uri} is not on this machine: "
            "the password would cross the network in clear",
            "use tls: starttls (or ldaps://); set allow_insecure: true only in a throwaway lab",
        )
    _check_ca_file(d.get("ca_file"), "directory.ca_file", where)
    _check_ca_file(data.get("sync", {}).get("ca_file"), "sync.ca_file", where)
    directory = DirectoryConfig(
        uri=uri,
        base_dn=d["base_dn"],
        bind_dn=d["bind_dn"],
        tls=tls,
        ca_file=d.get("ca_file"),
        bind_secret_file=d.get("bind_secret_file"),
        bind_secret_env=d.get("bind_secret_env", "COOPCTL_BIND_SECRET"),
        admin_uri=d.get("admin_uri"),
        timeout=float(d.get("timeout", 10)),
        retry_seconds=float(d.get("retry_seconds", 10)),
    )
    policy = data.get("policy", {})
    return Config(
        inventory=_path(data.get("inventory"), source),
        services=data.get("services", {}),
        sync=_sync_settings(data.get("sync", {}), data.get("coop", "coop"), directory, source),
        directory=directory,
        audit=_audit_credentials(data.get("audit"), directory),
        mail_domain=data["mail"]["domain"],
        coop=data.get("coop", "coop"),
        min_password_length=policy.get("min_password_length", 10),
        default_plan=policy.get("default_plan"),
        source=source,
    )


def _audit_credentials(a: dict[str, Any] | None,
                       directory: DirectoryConfig) -> AuditCredentials | None:
    if not a:
        return None
    d = a.get("directory")
    reader = None if not d else replace(
        directory, bind_dn=d["bind_dn"], bind_secret_file=d.get("bind_secret_file"),
        bind_secret_env=d.get("bind_secret_env", "COOPCTL_AUDIT_BIND_SECRET"))
    return AuditCredentials(directory=reader, services=a.get("services", {}))


def _check_ca_file(value: str | None, setting: str, where: str) -> None:
    """A CA file that is named must be there: found missing at the first TLS handshake, it
    would surface as a library error after the command had started its work."""
    if not value:
        return
    path = Path(value).expanduser()
    try:
        with path.open("rb") as handle:
            head = handle.read(1 << 20)
    except OSError as exc:
        raise ConfigError(
            f"{setting}{where} names {value}, which cannot be read: {exc.strerror}",
            "give the PEM file of the CA that signed the server's certificate "
            "(the lab's is STATE/pki/ca.crt), or leave the setting out to use the system's CAs",
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise ConfigError(f"{setting}{where} names {value}, which is not a PEM certificate",
                          "give the CA certificate in PEM form (it starts with "
                          "-----BEGIN CERTIFICATE-----)")


def _path(value: str | None, source: Path | None) -> Path | None:
    """A path from the file, relative to the file's own directory when not absolute."""
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() or source is None else source.parent / path


def _sync_settings(s: dict[str, Any], coop: str, directory: DirectoryConfig,
                   source: Path | None) -> SyncSettings:
    state = _path(s.get("state_dir"), source) or Path("/var/lib/coopctl") / coop
    return SyncSettings(
        state_dir=state,
        journal=_path(s.get("journal"), source) or state / "journal.sqlite",
        archive_dir=_path(s.get("archive_dir"), source) or state / "archives",
        ca_file=s.get("ca_file") or directory.ca_file,
        grace_days=s.get("grace_days", 30),
        max_destructive_share=s.get("max_destructive_share", 0.1),
        min_destructive_count=s.get("min_destructive_count", 5),
        min_member_ratio=s.get("min_member_ratio", 0.5),
        default_language=s.get("default_language", "en"),
    )


def load(path: Path | None = None) -> Config:
    """Read the configuration from `path`, $COOPCTL_CONFIG or the default places."""
    if path is None and os.environ.get("COOPCTL_CONFIG"):
        path = Path(os.environ["COOPCTL_CONFIG"])
    if path is None:
        path = next((p for p in DEFAULT_PATHS if p.exists()), None)
        if path is None:
            raise ConfigError(
                "no configuration file found "
                "(looked at ./coopctl.yaml and /etc/coopctl/coopctl.yaml)",
                "pass --config FILE or set $COOPCTL_CONFIG; `coopctl demo` writes an example",
            )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration {path}: {exc.strerror}",
                          "pass --config FILE or set $COOPCTL_CONFIG to a readable file; "
                          "`coopctl demo` writes an example") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"the configuration {path} is not valid YAML: {exc}",
                          "fix the line shown (indentation, a missing colon or quote)") from None
    return parse(data, path)
