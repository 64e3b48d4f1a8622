"""A private OpenLDAP server (Debian's slapd) in a directory of its own.

The test suite, the benchmark and `coopctl directory up` use it: a real slapd
with the project's schema, loopback-only, administered over its own ldapi
socket with SASL EXTERNAL, so no admin password exists at all. It leaves the
coop's data tree empty: `coopctl init` fills it, exactly as on a real server.
As on the coop's servers, the ppolicy overlay runs (default policy
`cn=default,ou=policies,SUFFIX`, which nobody creates here: a test that needs a
policy adds it), so `pwdReset`, which coopctl sets on passwords it gives out,
exists and means what it means there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from provisioner.resources import schemas_dir

SCHEMA_DIR = schemas_dir()
SYSTEM_SCHEMAS = ("core", "cosine", "inetorgperson", "nis", "dyngroup")
SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"


class LocalDirectoryError(RuntimeError):
    """The private slapd could not be built or started."""


def peercred_dn() -> str:
    """The identity slapd gives this process over ldapi with SASL EXTERNAL."""
    return f"gidNumber={os.getgid()}+uidNumber={os.getuid()},cn=peercred,cn=external,cn=auth"


def schema_path() -> Path:
    if "COOPCTL_SCHEMA_DIR" in os.environ:
        return Path(os.environ["COOPCTL_SCHEMA_DIR"])
    return SCHEMA_DIR


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalDirectory:
    """One private slapd instance rooted at `workdir`.

    `durable=False` turns off fsync (olcDbNoSync); the default keeps the
    server's durability exactly as in production, which the benchmark needs.
    """

    workdir: Path
    suffix: str = "dc=demo,dc=coop"
    port: int = 0
    durable: bool = True
    tls_dir: Path | None = None  # holds ca.crt, server.crt, server.key: enables StartTLS

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        state = self.workdir / "port"
        if not self.port:
            self.port = int(state.read_text()) if state.exists() else _free_port()

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldapi_uri(self) -> str:
        return "ldapi://" + urllib.parse.quote(str(self.workdir / "ldapi"), safe="")

    @property
    def pidfile(self) -> Path:
        return self.workdir / "slapd.pid"

    def _config_ldif(self) -> str:
        schemas = "\n".join(
            f"include: file:///etc/ldap/schema/{name}.ldif" for name in SYSTEM_SCHEMAS
        )
        admin = peercred_dn()
        nosync = "" if self.durable else "olcDbNoSync: TRUE\n"
        tls = ""
        if self.tls_dir:
            tls = (f"olcTLSCACertificateFile: {self.tls_dir / 'ca.crt'}\n"
                   f"olcTLSCertificateFile: {self.tls_dir / 'server.crt'}\n"
                   f"olcTLSCertificateKeyFile: {self.tls_dir / 'server.key'}\n")
        return f"""dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {self.pidfile}
olcArgsFile: {self.workdir / "slapd.args"}
olcLogLevel: none
{tls}olcAuthzRegexp: {{0}}"{admin}" "{admin}"

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: {{0}}back_mdb
olcModuleLoad: {{1}}syncprov
olcModuleLoad: {{2}}dynlist
olcModuleLoad: {{3}}refint
olcModuleLoad: {{4}}ppolicy

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schemas}

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend
olcSizeLimit: 500

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by dn.exact="{admin}" manage by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {self.suffix}
olcRootDN: {admin}
olcDbDirectory: {self.workdir / "data"}
olcDbMaxSize: 1073741824
{nosync}olcDbIndex: objectClass eq
olcDbIndex: uid,mail,cn eq
olcDbIndex: member eq
olcDbIndex: entryCSN,entryUUID eq
olcLimits: dn.exact="{admin}" size=unlimited time=unlimited
olcLimits: dn.onelevel="ou=services,{self.suffix}" size=unlimited time=unlimited
olcAccess: {{0}}to * by dn.exact="{admin}" manage by * none

dn: olcOverlay={{0}}syncprov,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcSyncProvConfig
olcOverlay: {{0}}syncprov
olcSpCheckpoint: 100 10
olcSpSessionLog: 1000

dn: olcOverlay={{1}}dynlist,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcDynListConfig
olcOverlay: {{1}}dynlist
olcDynListAttrSet: {{0}}groupOfURLs memberURL member+memberOf@groupOfNames

dn: olcOverlay={{2}}refint,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcRefintConfig
olcOverlay: {{2}}refint
olcRefintAttribute: member
olcRefintNothing: cn=nobody,{self.suffix}

dn: olcOverlay={{3}}ppolicy,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcPPolicyConfig
olcOverlay: {{3}}ppolicy
olcPPolicyDefault: cn=default,ou=policies,{self.suffix}
olcPPolicyHashCleartext: TRUE
"""

    def build(self) -> None:
        """Create cn=config from scratch (wipes any earlier instance)."""
        self.stop()
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        (self.workdir / "slapd.d").mkdir(parents=True)
        (self.workdir / "data").mkdir()
        (self.workdir / "port").write_text(str(self.port))
        ldif = self.workdir / "config.ldif"
        ldif.write_text(self._config_ldif())
        self._slapadd(ldif)

    def _slapadd(self, ldif: Path) -> None:
        result = subprocess.run(
            [SLAPADD, "-n0", "-F", str(self.workdir / "slapd.d"), "-l", str(ldif)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise LocalDirectoryError(f"slapadd of cn=config failed: {result.stderr.strip()}")

    def running(self) -> bool:
        try:
            pid = int(self.pidfile.read_text())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return False
        return True

    def start(self, timeout: float = 10.0) -> None:
        if self.running():
            return
        if not (self.workdir / "slapd.d").exists():
            self.build()
        urls = f"{self.uri}/ {self.ldapi_uri}/"
        result = subprocess.run(
            [SLAPD, "-F", str(self.workdir / "slapd.d"), "-h", urls],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise LocalDirectoryError(f"slapd did not start: {result.stderr.strip()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise LocalDirectoryError(f"slapd did not listen on {self.uri} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        if not self.running():
            return
        pid = int(self.pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
