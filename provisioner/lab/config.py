"""Names, addresses and paths of one lab, derived from its name and subnet index.

Several labs can run at once (one per developer task) as long as their indexes differ: index
``k`` owns the bridge ``coopbr<k>``, the subnet ``10.77.<k>.0/24`` and the namespaces
``coop<k>-NAME`` (``coop-NAME`` for index 0, as the contract fixes). Everything is computed
here so that ``up``, ``status`` and ``down`` agree without asking the kernel.

A lab's hosts run one Debian release (``suite``: bookworm = Debian 12, trixie = Debian 13),
recorded in ``lab.json`` with the rest, so a later ``up`` resumes the same release.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provisioner import resources

# The repository layout (playbooks/, inventories/...): the checkout, or the installed wheel's copy.
REPO_DIR = resources.root()
DEFAULT_NAME = "lab"
DEFAULT_HOSTS = ("dir", "mail", "apps")
DEFAULT_STATE_ROOT = Path("/var/lib/coopctl")
IMAGE_CACHE_DIR = Path(os.environ.get("COOPCTL_IMAGE_DIR", "/var/cache/coopctl/images"))
DOMAIN = "demo.coop"
# Debian releases a lab can boot: suite -> major version (what Ansible's facts report).
SUITES = {"bookworm": "12", "trixie": "13"}
# Debian 13 is the current stable release (Debian 12 is in its LTS phase): new labs boot it,
# and CI also deploys a Debian 12 lab and runs the service tests on it (tests/lab/test_debian12.py).
DEFAULT_SUITE = "trixie"
PROXY_PORT = 3128
# Fixed last octets from the contract; other host names get the next free ones.
KNOWN_OCTETS = {"dir": 10, "mail": 11, "apps": 12}
# Inventory groups from the contract: group -> host that carries it.
GROUPS = {
    "ldap_servers": "dir",
    "sso_servers": "dir",
    "mail_servers": "mail",
    "wiki_servers": "apps",
    "pads_servers": "apps",
    "cloud_servers": "apps",
}


class LabError(RuntimeError):
    """Something the user can fix went wrong; the message says what to do."""


def default_state_dir(name: str) -> Path:
    """``$COOPCTL_LAB_DIR`` if set, else ``/var/lib/coopctl/<name>``."""
    env = os.environ.get("COOPCTL_LAB_DIR")
    if env:
        return Path(env)
    return DEFAULT_STATE_ROOT / name


def default_suite() -> str:
    """``$COOPCTL_LAB_SUITE`` if set (so CI can run the lab tests on another release), else
    bookworm. Checked by :class:`LabConfig` like any other value."""
    return os.environ.get("COOPCTL_LAB_SUITE", "").strip() or DEFAULT_SUITE


@dataclass(frozen=True)
class LabConfig:
    """One lab: its name, subnet index, hosts, Debian release and controller-side state dir."""

    name: str = DEFAULT_NAME
    index: int = 0
    hosts: tuple[str, ...] = DEFAULT_HOSTS
    state_dir: Path = field(default_factory=lambda: default_state_dir(DEFAULT_NAME))
    suite: str = field(default_factory=default_suite)

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise LabError(
                f"unknown Debian suite {self.suite!r}: use "
                + " or ".join(f"{s} (Debian {v})" for s, v in SUITES.items())
            )
        if not 0 <= self.index <= 255:
            raise LabError(f"lab index must be 0..255, not {self.index}")
        if not self.hosts:
            raise LabError("a lab needs at least one host")
        for host in self.hosts:
            if not host.isalnum() or not host.islower() or len(host) > 8:
                raise LabError(
                    f"host name {host!r}: use 1-8 lowercase letters/digits (it becomes an "
                    "interface and namespace name)"
                )
        if len(set(self.hosts)) != len(self.hosts):
            raise LabError("host names must be unique")

    @property
    def debian_version(self) -> str:
        """Major version of the hosts' Debian release ("12", "13")."""
        return SUITES[self.suite]

    # -- network names -------------------------------------------------------------------
    @property
    def bridge(self) -> str:
        return f"coopbr{self.index}"

    @property
    def subnet(self) -> str:
        return f"10.77.{self.index}.0/24"

    @property
    def bridge_ip(self) -> str:
        return f"10.77.{self.index}.1"

    @property
    def proxy_url(self) -> str:
        return f"http://{self.bridge_ip}:{PROXY_PORT}"

    def netns(self, host: str) -> str:
        return f"coop-{host}" if self.index == 0 else f"coop{self.index}-{host}"

    def veth(self, host: str) -> str:
        """Controller-side end of the host's veth pair (max 15 chars)."""
        return f"vc{self.index}-{host}"

    def cgroup_name(self, host: str) -> str:
        """Per-host cgroup directory name, the same in every hierarchy."""
        return f"coopctl-{self.name}-{host}"

    def address(self, host: str) -> str:
        return f"10.77.{self.index}.{self.octets()[host]}"

    def octets(self) -> dict[str, int]:
        used = {KNOWN_OCTETS[h] for h in self.hosts if h in KNOWN_OCTETS}
        result: dict[str, int] = {}
        nxt = 13
        for host in self.hosts:
            if host in KNOWN_OCTETS:
                result[host] = KNOWN_OCTETS[host]
                continue
            while nxt in used:
                nxt += 1
            result[host] = nxt
            used.add(nxt)
        return result

    def addresses(self) -> dict[str, str]:
        return {h: self.address(h) for h in self.hosts}

    def fqdn(self, host: str) -> str:
        return f"{host}.{DOMAIN}"

    # -- state paths ---------------------------------------------------------------------
    @property
    def inventory(self) -> Path:
        return self.state_dir / "hosts.yml"

    @property
    def ssh_key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "ssh_config"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    @property
    def ca_file(self) -> Path:
        """The lab CA's certificate: what clients of the lab's services verify against."""
        return self.pki_dir / "ca.crt"

    def secret(self, name: str) -> str:
        """A secret the roles created with Ansible's password lookup (STATE/secrets/NAME)."""
        text = (self.secrets_dir / name).read_text()
        return text.split(" salt=")[0].strip()  # the lookup may append its salt

    @property
    def control_dir(self) -> Path:
        """SSH ControlPath sockets (Ansible's and ours), closed before teardown."""
        return self.state_dir / "cp"

    @property
    def ansible_home(self) -> Path:
        return self.state_dir / "ansible"

    def host_dir(self, host: str) -> Path:
        return self.state_dir / "hosts" / host

    @property
    def repo_inventory(self) -> Path | None:
        """The default lab also publishes its inventory at inventories/lab/hosts.yml."""
        if self.index == 0 and self.name == DEFAULT_NAME:
            return REPO_DIR / "inventories" / "lab" / "hosts.yml"
        return None

    # -- persistence ---------------------------------------------------------------------
    @property
    def _record(self) -> Path:
        return self.state_dir / "lab.json"

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data["state_dir"] = str(self.state_dir)
        data["hosts"] = list(self.hosts)
        self._record.write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> LabConfig | None:
        """The lab recorded in ``state_dir`` by a previous ``up``, if any."""
        record = state_dir / "lab.json"
        if not record.exists():
            return None
        data = json.loads(record.read_text())
        return cls(
            name=data["name"],
            index=int(data["index"]),
            hosts=tuple(data["hosts"]),
            state_dir=state_dir,
            # Records written before labs had a release were all Debian 12.
            suite=data.get("suite", "bookworm"),
        )
