"""The lab's private network: one bridge on the controller, one namespace per host.

Each host lives in its own network namespace (``coop-NAME``) whose only interface is ``eth0``,
one end of a veth pair whose other end is on the lab bridge. There is deliberately no default
route and no forwarding: a host can reach the other hosts and the bridge address (where the
apt proxy listens) and nothing else, which the tests check from the routing table alone.
"""

from __future__ import annotations

from pathlib import Path

from provisioner.lab.commands import run
from provisioner.lab.config import LabConfig, LabError

NETNS_DIR = Path("/run/netns")


def link_exists(name: str, netns: str | None = None) -> bool:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", "dev", name]
    return run(argv, check=False).returncode == 0


def ensure_bridge(cfg: LabConfig) -> None:
    """Create the bridge with the lab's first address, if it is not there yet."""
    if not link_exists(cfg.bridge):
        run(["ip", "link", "add", "name", cfg.bridge, "type", "bridge"])
    run(["ip", "addr", "replace", f"{cfg.bridge_ip}/24", "dev", cfg.bridge])
    run(["ip", "link", "set", "dev", cfg.bridge, "up"])


def delete_bridge(cfg: LabConfig) -> None:
    if link_exists(cfg.bridge):
        run(["ip", "link", "del", "dev", cfg.bridge])


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def ensure_host_network(cfg: LabConfig, host: str) -> None:
    """Namespace, veth pair, address; idempotent so a failed ``up`` can be resumed."""
    ns = cfg.netns(host)
    if not netns_exists(ns):
        run(["ip", "netns", "add", ns])
    if not link_exists("eth0", ns):
        if link_exists(cfg.veth(host)):  # a stale end left by an interrupted run
            run(["ip", "link", "del", "dev", cfg.veth(host)])
        run(
            [
                "ip",
                "link",
                "add",
                cfg.veth(host),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ]
        )
    run(["ip", "link", "set", "dev", cfg.veth(host), "master", cfg.bridge, "up"])
    run(["ip", "-n", ns, "link", "set", "dev", "lo", "up"])
    run(["ip", "-n", ns, "addr", "replace", f"{cfg.address(host)}/24", "dev", "eth0"])
    run(["ip", "-n", ns, "link", "set", "dev", "eth0", "up"])


def delete_host_network(cfg: LabConfig, host: str) -> None:
    """Deleting the namespace also deletes the veth pair."""
    ns = cfg.netns(host)
    if netns_exists(ns):
        run(["ip", "netns", "del", ns])
    # The kernel removes the veth's peer asynchronously after the namespace goes: a device
    # seen a moment ago may be gone when we delete it, which is the outcome we want.
    if link_exists(cfg.veth(host)):
        result = run(["ip", "link", "del", "dev", cfg.veth(host)], check=False)
        if result.returncode != 0 and link_exists(cfg.veth(host)):
            raise LabError(f"cannot delete {cfg.veth(host)}: {result.stderr.strip()}")


def routes(netns: str) -> list[str]:
    """The IPv4 and IPv6 routes inside a namespace, one string each (used by status/tests)."""
    out = run(["ip", "-n", netns, "route", "show", "table", "all"]).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]
