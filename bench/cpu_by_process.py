"""Where the machine's CPU went while a command ran, per kind of process (lab hosts included).

The lab's hosts are systemd-nspawn containers: their processes are this machine's processes,
so /proc shows them all. ``CpuWatch`` reads every process's user + system time when it starts,
then every half second (a process that exits between two reads loses at most its last half
second), and sums what each used since, grouped by what it is (coopctl, the Nextcloud double,
Postfix, Dovecot, Etherpad, Keycloak, slapd...). It answers "is this bound by coopctl or by
the services, and is the machine's CPU the limit", which a wall-clock time alone cannot.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK")
POSTFIX = {"master", "pickup", "qmgr", "smtpd", "cleanup", "trivial-rewrite", "tlsmgr", "smtp",
           "local", "bounce", "proxymap", "anvil", "postscreen", "verify", "showq",
           "scache", "tlsproxy"}
DOVECOT = {"imap", "imap-login", "auth", "lmtp", "doveadm", "indexer-worker", "indexer",
           "stats", "config", "log", "quota-status"}


def kind(comm: str, cmdline: str) -> str:
    """What a process is, for the summary (its command name when nothing better is known)."""
    if "nextcloud_double" in cmdline or "nextcloud-double" in cmdline:
        return "cloud double"
    if "coopctl" in cmdline:
        return "coopctl"
    if "ansible" in cmdline:
        return "ansible"
    if comm == "node" or "etherpad" in cmdline:
        return "etherpad"
    if comm == "java":
        return "keycloak"
    if comm in POSTFIX:
        return "postfix"
    if comm in DOVECOT or comm.startswith("dovecot"):
        return "dovecot"
    for prefix in ("nginx", "php", "postgres", "ssh", "slapd"):  # nginx: worker, sshd...
        if comm.startswith(prefix):
            return prefix
    return comm


def _read() -> dict[int, tuple[str, int, str]]:
    """pid -> (kind, CPU ticks used so far, start time) for every process now."""
    out: dict[int, tuple[str, int, str]] = {}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            stat = (PROC / entry.name / "stat").read_text()
            cmdline = (PROC / entry.name / "cmdline").read_bytes()[:300]
        except OSError:
            continue  # gone meanwhile
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(entry.name)] = (kind(comm, cmdline.replace(b"\0", b" ").decode(errors="replace")),
                                int(fields[11]) + int(fields[12]), fields[19])
    return out


def _machine() -> tuple[int, int]:
    """(all ticks, idle ticks) of the machine so far."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values), values[3] + values[4]


class CpuWatch:
    """Use as a context manager around what is measured; then `summary()`."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuWatch:
        self._start = _read()
        self._last = dict(self._start)
        self._machine_start = _machine()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._last.update(_read())
        self._machine_end = _machine()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._last.update(_read())

    def seconds_by_kind(self) -> dict[str, float]:
        """CPU seconds used while watched, per kind of process, most first."""
        used: dict[str, float] = {}
        for pid, (what, ticks, started) in self._last.items():
            before = self._start.get(pid)
            base = before[1] if before and before[2] == started else 0  # pid reused: new one
            if ticks > base:
                used[what] = used.get(what, 0.0) + (ticks - base) / TICKS
        return dict(sorted(used.items(), key=lambda kv: -kv[1]))

    def busy(self) -> float:
        """The share of the machine's CPU time (all cores) that was busy while watched."""
        total = self._machine_end[0] - self._machine_start[0]
        idle = self._machine_end[1] - self._machine_start[1]
        return 1 - idle / total if total else 0.0

    def summary(self, per: int | None = None, top: int = 8) -> str:
        """One line: the CPU seconds of the top kinds (and per item, with `per`), and how busy
        the machine was."""
        used = self.seconds_by_kind()
        total = sum(used.values())
        parts = [f"{name} {sec:.1f} s" + (f" ({sec / per * 1000:.1f} ms each)" if per else "")
                 for name, sec in list(used.items())[:top]]
        return (f"CPU used: {total:.1f} s in all, machine {self.busy():.0%} busy "
                f"({os.cpu_count()} CPUs); " + ", ".join(parts))


if __name__ == "__main__":  # a quick look: what used the CPU in the next 5 seconds
    with CpuWatch() as watch:
        time.sleep(5)
    print(watch.summary())
