"""A whole lab: ``up`` (idempotent, resumable), ``status`` and ``down`` (leaves nothing).

``up`` only ever adds what is missing: a host that already runs is kept as it is, a host whose
nspawn died is cleaned up and booted again on its kept overlay, so re-running ``up`` after any
failure resumes. ``down`` closes SSH masters, halts every host by its own nspawn PID, unmounts,
deletes namespaces, cgroup directories, the proxy and the bridge, and the hosts' overlay dirs;
the lab key, PKI and secrets stay (``purge`` removes the whole state directory).

``up`` also raises the controller's ``fs.inotify.max_user_instances`` to 1024 when it is lower:
the guests' systemd instances share root's limit, and Debian's 128 runs out at about eight labs.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provisioner.lab import image, inventory, network, pki, proxy
from provisioner.lab.aptsources import debian_sources
from provisioner.lab.commands import require_root, require_tools
from provisioner.lab.config import LabConfig, LabError
from provisioner.lab.hosts import Host, HostStatus

INDEX_DIR = Path("/run/coopctl-lab")  # index -> state dir of the lab using it (tmpfs)
# Every guest's systemd holds a few inotify instances, counted against root's limit on the
# controller (no user namespaces): Debian's default of 128 is spent by about eight labs, and
# a host booted after that hangs ("Failed to create inotify object: Too many open files").
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
MIN_INOTIFY_INSTANCES = 1024
SSH_WAIT = 90.0
HALT_TIMEOUT = 30.0  # orderly halt of all hosts; then nspawn is told to kill

Log = Callable[[str], None]


@dataclass
class UpReport:
    """What ``up`` did, with timings in seconds (the bench prints them)."""

    image_build: float | None = None
    booted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    boot_to_ssh: float | None = None
    total: float = 0.0


@dataclass
class LabStatus:
    name: str
    index: int
    suite: str
    state_dir: str
    bridge: str
    bridge_up: bool
    proxy_pid: int | None
    proxy_url: str
    inventory: str
    hosts: list[HostStatus]

    def as_dict(self) -> dict:
        return asdict(self)


class Lab:
    """Operations on one lab described by a :class:`LabConfig`."""

    def __init__(self, cfg: LabConfig) -> None:
        self.cfg = cfg
        self.hosts = [Host(cfg, h) for h in cfg.hosts]

    @classmethod
    def from_state(cls, state_dir: Path) -> Lab:
        """The lab a previous ``up`` recorded in ``state_dir``."""
        cfg = LabConfig.load(state_dir)
        if cfg is None:
            raise LabError(
                f"no lab recorded in {state_dir}: run `coopctl lab up` first "
                "(or pass the lab's --state-dir / set COOPCTL_LAB_DIR)"
            )
        return cls(cfg)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabError(f"no host {name!r} in lab {self.cfg.name} ({', '.join(self.cfg.hosts)})")

    # -- up ------------------------------------------------------------------------------
    def _claim_index(self) -> None:
        """Refuse to start a lab on an index another running lab uses."""
        INDEX_DIR.mkdir(exist_ok=True)
        claim = INDEX_DIR / str(self.cfg.index)
        if claim.exists():
            owner = Path(claim.read_text().strip())
            if owner != self.cfg.state_dir and network.link_exists(self.cfg.bridge):
                raise LabError(
                    f"index {self.cfg.index} is used by the lab in {owner}: take another "
                    f"--index or run `coopctl lab down` for that one first"
                )
        elif network.link_exists(self.cfg.bridge):
            raise LabError(
                f"bridge {self.cfg.bridge} exists but no lab claims it: "
                f"delete it (`ip link del {self.cfg.bridge}`) or use another --index"
            )
        claim.write_text(f"{self.cfg.state_dir}\n")

    def _check_record(self) -> None:
        old = LabConfig.load(self.cfg.state_dir)
        if old is None or old == self.cfg:
            return
        if any(Host(old, h).pid() for h in old.hosts) or network.link_exists(old.bridge):
            raise LabError(
                f"{self.cfg.state_dir} holds a running lab {old.name!r} (index {old.index}, "
                f"hosts {', '.join(old.hosts)}, {old.suite}): run `coopctl lab down` first or "
                "use another state directory"
            )
        kept = [h for h in old.hosts if old.host_dir(h).exists()]
        if old.suite != self.cfg.suite and kept:
            # Their overlays hold changes made on top of the other release's image.
            raise LabError(
                f"{self.cfg.state_dir} keeps hosts ({', '.join(kept)}) of a Debian "
                f"{old.debian_version} ({old.suite}) lab: run `coopctl lab down --name "
                f"{old.name}` first, then `lab up --suite {self.cfg.suite}`"
            )

    def up(self, log: Log = print) -> UpReport:
        started = time.monotonic()
        require_root()
        require_tools()
        report = UpReport()
        cfg = self.cfg
        self._check_record()
        self._claim_index()
        cfg.save()
        base, report.image_build = image.ensure_base_image(log, suite=cfg.suite)
        pubkey = inventory.ensure_ssh_key(cfg)
        pki.ensure_pki(cfg)
        cfg.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _ensure_inotify_instances(log)
        network.ensure_bridge(cfg)
        proxy.start(cfg.state_dir, cfg.bridge_ip, debian_sources().allowed_hosts)
        boot_started = time.monotonic()
        for host in self.hosts:
            if host.pid() is not None:
                report.kept.append(host.name)
                continue
            host.release()  # leftovers of a crashed run: stale mount or cgroups
            network.ensure_host_network(cfg, host.name)
            host.mount(base)
            host.prepare(pubkey)
            host.boot()
            report.booted.append(host.name)
        deadline = time.monotonic() + SSH_WAIT
        for host in self.hosts:
            host.wait_ssh(deadline)
        report.boot_to_ssh = time.monotonic() - boot_started
        inventory.write_inventory(cfg)
        report.total = time.monotonic() - started
        log(
            f"lab {cfg.name} up (Debian {cfg.debian_version} {cfg.suite}): "
            f"{', '.join(f'{h.name} {h.address}' for h in self.hosts)} "
            f"(booted {len(report.booted)}, kept {len(report.kept)}, {report.total:.1f} s)"
        )
        return report

    # -- status --------------------------------------------------------------------------
    def status(self) -> LabStatus:
        cfg = self.cfg
        return LabStatus(
            name=cfg.name,
            index=cfg.index,
            suite=cfg.suite,
            state_dir=str(cfg.state_dir),
            bridge=cfg.bridge,
            bridge_up=network.link_exists(cfg.bridge),
            proxy_pid=proxy.running(cfg.state_dir, cfg.bridge_ip),
            proxy_url=cfg.proxy_url,
            inventory=str(cfg.inventory),
            hosts=[h.status() for h in self.hosts],
        )

    def is_up(self) -> bool:
        return all(h.pid() is not None and h.ssh_ok() for h in self.hosts) and bool(
            proxy.running(self.cfg.state_dir, self.cfg.bridge_ip)
        )

    # -- down ----------------------------------------------------------------------------
    def down(self, log: Log = print, purge: bool = False) -> float:
        started = time.monotonic()
        require_root()
        cfg = self.cfg
        inventory.close_ssh_masters(cfg)
        # Halt all hosts at once (one SIGTERM each), then wait for each.
        pids = {host.name: host.halt() for host in self.hosts}
        deadline = time.monotonic() + HALT_TIMEOUT
        for host in self.hosts:
            if pids[host.name] is not None:
                host.stop(pid=pids[host.name], deadline=deadline)
            host.release()
            network.delete_host_network(cfg, host.name)
            shutil.rmtree(host.dir, ignore_errors=True)
        proxy.stop(cfg.state_dir, cfg.bridge_ip)
        network.delete_bridge(cfg)
        inventory.remove_inventory(cfg)
        claim = INDEX_DIR / str(cfg.index)
        if claim.exists() and Path(claim.read_text().strip()) == cfg.state_dir:
            claim.unlink()
        if purge:
            shutil.rmtree(cfg.state_dir, ignore_errors=True)
        elapsed = time.monotonic() - started
        log(f"lab {cfg.name} down ({elapsed:.1f} s)")
        return elapsed


def _ensure_inotify_instances(log: Log) -> None:
    """Raise the controller's inotify instance limit to MIN_INOTIFY_INSTANCES if it is lower
    (never lowers it): see INOTIFY_INSTANCES above."""
    try:
        current = int(INOTIFY_INSTANCES.read_text())
    except (OSError, ValueError):
        return  # not Linux's procfs: nothing to adjust
    if current < MIN_INOTIFY_INSTANCES:
        INOTIFY_INSTANCES.write_text(f"{MIN_INOTIFY_INSTANCES}\n")
        log(f"raised fs.inotify.max_user_instances from {current} to {MIN_INOTIFY_INSTANCES} "
            "(each lab host's systemd holds a few)")
