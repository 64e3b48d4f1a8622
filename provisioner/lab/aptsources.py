"""Which Debian mirror the controller uses, read from its own apt sources.

The lab's hosts install packages from the same mirror as the controller, and the lab proxy lets
through only Debian's own hosts found there: third-party repositories configured on a developer's
machine (Google Cloud SDK, NodeSource, ...) are ignored on purpose so that lab hosts cannot reach
them. Both one-line ``.list`` files and deb822 ``.sources`` files are read; files with other
endings (``.disabled``, ``.save``) are skipped, as apt skips them.

Only the mirror's URIs are taken from the controller, never its suites: a Debian 12 controller
serves Debian 13 lab hosts from the same mirror (``host_sources`` names the hosts' own suite,
its updates and its security suite), and the proxy allows the same host names for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

APT_DIR = Path("/etc/apt")
FALLBACK_MIRROR = "http://deb.debian.org/debian"
FALLBACK_SECURITY = "http://deb.debian.org/debian-security"


@dataclass(frozen=True)
class DebianSources:
    """The Debian archive and security URIs, and the host names the proxy may reach."""

    mirror: str
    security: str
    allowed_hosts: tuple[str, ...]


def _entries(apt_dir: Path) -> list[tuple[str, str]]:
    """(uri, suite) pairs of every enabled ``deb`` source."""
    entries: list[tuple[str, str]] = []
    files = [apt_dir / "sources.list"] if (apt_dir / "sources.list").exists() else []
    parts = apt_dir / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" not in fields.get("types", "").split():
                    continue
                for uri in fields.get("uris", "").split():
                    for suite in fields.get("suites", "").split():
                        entries.append((uri, suite))
        else:
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if len(words) < 3 or words[0] != "deb":
                    continue
                words = [w for w in words[1:] if not w.startswith("[")]
                if len(words) >= 2:
                    entries.append((words[0], words[1]))
    return entries


def _is_debian(uri: str) -> bool:
    """Debian's own archive: a path ending in /debian or /debian-security, or a debian.org host."""
    parts = urlsplit(uri)
    path = parts.path.rstrip("/")
    host = parts.hostname or ""
    return path.endswith(("/debian", "/debian-security")) or host.endswith("debian.org")


def debian_sources(apt_dir: Path = APT_DIR) -> DebianSources:
    """The controller's Debian mirror and security URIs (deb.debian.org if none found)."""
    mirror = security = None
    hosts: list[str] = []
    for uri, suite in _entries(apt_dir):
        if not _is_debian(uri) or not uri.startswith("http"):
            continue
        host = urlsplit(uri).hostname
        if host and host not in hosts:
            hosts.append(host)
        if suite.endswith("-security"):
            security = security or uri.rstrip("/")
        else:
            mirror = mirror or uri.rstrip("/")
    mirror = mirror or FALLBACK_MIRROR
    security = security or FALLBACK_SECURITY
    for uri in (mirror, security):
        host = urlsplit(uri).hostname
        if host and host not in hosts:
            hosts.append(host)
    return DebianSources(mirror=mirror, security=security, allowed_hosts=tuple(hosts))


def host_sources(src: DebianSources, suite: str) -> str:
    """apt sources (deb822) of a lab host on ``suite``: the release and its updates from the
    controller's mirror, ``SUITE-security`` from its security archive (all through the lab's
    proxy, which each host's apt configuration names)."""
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    return (
        f"Types: deb\nURIs: {src.mirror}\nSuites: {suite} {suite}-updates\nComponents: main\n"
        f"Signed-By: {keyring}\n\n"
        f"Types: deb\nURIs: {src.security}\nSuites: {suite}-security\nComponents: main\n"
        f"Signed-By: {keyring}\n"
    )
