"""One lab host: an overlay of the base image booted by systemd-nspawn in its namespace.

Layout under ``STATE/hosts/NAME``: ``upper/`` and ``work/`` (the host's own changes, kept
across a resumed ``up``), ``root/`` (the overlay mount nspawn boots), ``nspawn.pid`` and
``console.log``. The measured recipe and its pitfalls are in shared/notes/lab-hosts.md; the
non-obvious parts are:

* nspawn runs with ``--register=no --keep-unit`` (there is no machined here) and so creates its
  ``payload``/``supervisor`` cgroups under the cgroup it was started in. Each launcher therefore
  first moves itself into its own ``coopctl-LAB-HOST`` cgroup in every hierarchy, which also
  gives ``status`` the host's memory use. Those directories are removed at teardown.
* nspawn is never wrapped in ``timeout`` and is only ever signalled by its own PID: one SIGTERM
  is an orderly halt of the guest.
* With ``--network-namespace-path`` nspawn drops CAP_NET_ADMIN from the guest, so nftables
  (``flush ruleset: Operation not permitted``) and anything else that configures the network
  fails; ``--capability=CAP_NET_ADMIN`` gives it back. It acts on the host's own namespace
  only (the guest cannot leave it: that would need CAP_SYS_ADMIN).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from provisioner.lab.commands import run
from provisioner.lab.config import LabConfig, LabError
from provisioner.lab.network import NETNS_DIR

CGROUP_ROOT = Path("/sys/fs/cgroup")
RESOLV_CONF = (
    "# The lab has no DNS: lab hosts are in /etc/hosts, apt goes through the lab proxy.\n"
    "options timeout:1 attempts:1\n"
)


def cgroup_hierarchies() -> list[Path]:
    """Where a per-host cgroup is made: the unified root on cgroup v2, else each v1 tree we use."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    return [
        CGROUP_ROOT / h
        for h in ("systemd", "unified", "memory", "pids")
        if (CGROUP_ROOT / h / "cgroup.procs").exists()
    ]


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (reaping it first if it is our own exited child)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == target for line in fh)


@dataclass
class HostStatus:
    name: str
    address: str
    running: bool
    pid: int | None
    ssh: bool
    memory_bytes: int | None
    system_state: str | None


class Host:
    """Boot, probe and tear down one host of a lab."""

    def __init__(self, cfg: LabConfig, name: str) -> None:
        self.cfg = cfg
        self.name = name
        self.dir = cfg.host_dir(name)
        self.root = self.dir / "root"
        self.pidfile = self.dir / "nspawn.pid"
        self.address = cfg.address(name)
        self.netns = cfg.netns(name)

    # -- inspection ----------------------------------------------------------------------
    def pid(self) -> int | None:
        """PID of this host's nspawn, if it runs (checked against its command line)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        own = f"--directory={self.root}".encode()
        if b"systemd-nspawn" not in cmdline[0] or own not in cmdline:
            return None
        return pid

    def leader(self) -> int | None:
        """PID (as seen here) of the guest's systemd, the target for ``nsenter``."""
        pid = self.pid()
        if pid is None:
            return None
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def ssh_ok(self, timeout: float = 1.0) -> bool:
        """sshd answers with its banner (a TCP probe bounded by ``timeout``)."""
        try:
            with socket.create_connection((self.address, 22), timeout=timeout) as sock:
                sock.settimeout(timeout)
                return sock.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def cgroups(self) -> list[Path]:
        return [h / self.cfg.cgroup_name(self.name) for h in cgroup_hierarchies()]

    def memory_bytes(self) -> int | None:
        """Memory the host uses now, from its cgroup, without reclaimable page cache."""
        for cg in self.cgroups():
            if (cg / "memory.current").exists():  # cgroup v2
                stat = _kv(cg / "memory.stat")
                return int((cg / "memory.current").read_text()) - stat.get("inactive_file", 0)
            if (cg / "memory.usage_in_bytes").exists():  # cgroup v1
                stat = _kv(cg / "memory.stat")
                usage = int((cg / "memory.usage_in_bytes").read_text())
                return usage - stat.get("total_inactive_file", 0)
        return None

    def nsenter(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command inside the running host without SSH."""
        leader = self.leader()
        if leader is None:
            raise LabError(f"host {self.name} is not running")
        return run(["nsenter", "-t", str(leader), "-a", *argv], check=False, timeout=timeout)

    def system_state(self) -> str | None:
        if self.leader() is None:
            return None
        return self.nsenter("systemctl", "is-system-running").stdout.strip() or None

    def status(self) -> HostStatus:
        pid = self.pid()
        return HostStatus(
            name=self.name,
            address=self.address,
            running=pid is not None,
            pid=pid,
            ssh=pid is not None and self.ssh_ok(),
            memory_bytes=self.memory_bytes() if pid else None,
            system_state=self.system_state() if pid else None,
        )

    # -- bring up ------------------------------------------------------------------------
    def mount(self, base: Path) -> None:
        for sub in ("upper", "work", "root"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        if is_mounted(self.root):
            return
        opts = f"lowerdir={base},upperdir={self.dir / 'upper'},workdir={self.dir / 'work'}"
        run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)])

    def prepare(self, pubkey: str) -> None:
        """Write what makes this host itself: name, hosts file, identity, keys, apt proxy."""
        root, cfg = self.root, self.cfg
        (root / "etc/hostname").write_text(f"{self.name}\n")
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{cfg.address(h)}\t{cfg.fqdn(h)} {h}" for h in cfg.hosts]
        (root / "etc/hosts").write_text("\n".join(lines) + "\n")
        machine_id = root / "etc/machine-id"
        if not machine_id.read_text().strip():
            machine_id.write_text(uuid.uuid4().hex + "\n")
        # Ed25519 and ECDSA host keys only: an RSA key costs ~2 s of boot per host.
        for kind in ("ed25519", "ecdsa"):
            key = root / f"etc/ssh/ssh_host_{kind}_key"
            if not key.exists():
                comment = f"root@{self.name}"
                run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(key)])
        (root / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
        (root / "etc/ssh/sshd_config.d/coop-lab-hostkeys.conf").write_text(
            "# Written by coopctl lab: the host keys this lab host has.\n"
            "HostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_ecdsa_key\n"
        )
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        keys = ssh_dir / "authorized_keys"
        keys.write_text(pubkey.strip() + "\n")
        keys.chmod(0o600)
        (root / "etc/apt/apt.conf.d/01coop-lab-proxy").write_text(
            f"// Written by coopctl lab: the lab's only way out is its apt proxy.\n"
            f'Acquire::http::Proxy "{cfg.proxy_url}";\n'
            f'Acquire::https::Proxy "{cfg.proxy_url}";\n'
        )
        # A lab host is thrown away: do not wait 90 s for a service that ignores SIGTERM.
        (root / "etc/systemd/system.conf.d").mkdir(parents=True, exist_ok=True)
        (root / "etc/systemd/system.conf.d/coop-lab.conf").write_text(
            "# Written by coopctl lab: halt quickly (production keeps the defaults).\n"
            "[Manager]\nDefaultTimeoutStopSec=10s\n"
        )
        resolv = root / "etc/resolv.conf"
        if resolv.is_symlink():
            resolv.unlink()
        resolv.write_text(RESOLV_CONF)

    def boot(self) -> int:
        """Start nspawn detached in its own session and cgroups; return its PID."""
        cgroups = self.cgroups()
        for cg in cgroups:
            cg.mkdir(exist_ok=True)

        def enter_cgroups() -> None:  # runs in the child, before exec
            for cg in cgroups:
                (cg / "cgroup.procs").write_text(str(os.getpid()))

        argv = [
            "systemd-nspawn",
            "--boot",
            f"--directory={self.root}",
            f"--machine={self.cfg.cgroup_name(self.name)}",
            "--register=no",
            "--keep-unit",
            f"--network-namespace-path={NETNS_DIR / self.netns}",
            "--capability=CAP_NET_ADMIN",
            "--console=pipe",
            "--resolv-conf=off",
            "--link-journal=no",
            "--timezone=off",
        ]
        log = open(self.dir / "console.log", "ab")  # noqa: SIM115 - handed to the child
        with log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=enter_cgroups,
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        return proc.pid

    def wait_ssh(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise LabError(
                    f"host {self.name} stopped while booting; see {self.dir / 'console.log'}"
                )
            if self.ssh_ok():
                return
            time.sleep(0.2)
        raise LabError(f"host {self.name}: no sshd on {self.address}:22; see console.log")

    # -- tear down -----------------------------------------------------------------------
    def halt(self) -> int | None:
        """Ask for an orderly halt: one SIGTERM to this host's nspawn (by its own PID)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        return pid

    def stop(
        self, timeout: float = 30, pid: int | None = None, deadline: float | None = None
    ) -> None:
        """Halt and wait; a second SIGTERM (nspawn: kill) and SIGKILL only if it is stuck.

        Pass ``pid`` from :meth:`halt` when the first SIGTERM was already sent, and a shared
        ``deadline`` (monotonic) when halting several hosts at once.
        """
        if pid is None:
            pid = self.halt()
        if pid is not None:
            deadline = deadline if deadline is not None else time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if not _alive(pid):
                    break
                os.kill(pid, sig)
                time.sleep(2)
        self.pidfile.unlink(missing_ok=True)

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for cg in self.cgroups():
            for procs in cg.rglob("cgroup.procs") if cg.exists() else ():
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
        return pids

    def kill_leftovers(self) -> None:
        """SIGKILL processes still in this host's own cgroups (after nspawn itself died)."""
        for _ in range(50):
            pids = self._cgroup_pids() - {os.getpid()}
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        raise LabError(f"host {self.name}: processes {sorted(pids)} survive SIGKILL")

    def release(self) -> None:
        """Unmount the overlay and remove the host's cgroup directories (deepest first)."""
        self.kill_leftovers()
        if is_mounted(self.root) and run(["umount", str(self.root)], check=False).returncode:
            time.sleep(1)  # a process of the just-halted host may still hold it for a moment
            run(["umount", str(self.root)])
        for cg in self.cgroups():
            if not cg.exists():
                continue
            for path in sorted(cg.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if path.is_dir():
                    with contextlib.suppress(OSError):
                        path.rmdir()
            cg.rmdir()


def _kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                out[key] = int(value)
    return out
