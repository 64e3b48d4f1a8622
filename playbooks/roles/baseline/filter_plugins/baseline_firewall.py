"""Filters of the baseline role: turn the firewall rules the roles declare into nftables lines.

Written in Python rather than Jinja so that every address and rule is validated (a typo in an
inventory must stop the deploy with a clear message, before /etc/nftables.conf is written) and
so that the lockout check (is the controller's address among the networks ssh accepts?) uses
real network arithmetic.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any

from ansible.errors import AnsibleFilterError

# Source keywords a rule may use besides literal addresses and networks.
KEYWORDS = ("any", "coop", "admin", "local")
PROTOCOLS = ("tcp", "udp")
_PORT = re.compile(r"^[0-9]{1,5}(-[0-9]{1,5})?$")


def _network(value: Any, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError as exc:
        raise AnsibleFilterError(f"{what}: {value!r} is not an IP address or network") from exc


def _resolve(name: str, what: str) -> list[str]:
    """Every address of a host name, as the controller resolves it (ansible_host may be a
    name in a production inventory)."""
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise AnsibleFilterError(
            f"{what}: {name!r} is neither an address nor a name this machine resolves; "
            "set coop_host_addresses to the hosts' addresses"
        ) from exc
    return sorted({str(info[4][0]) for info in infos})


def baseline_networks(
    items: Any, what: str = "address list", resolve: bool = False
) -> dict[str, list[str]]:
    """Split addresses/networks into {'v4': [...], 'v6': [...]} (normalised, deduplicated).
    With ``resolve``, host names are replaced by their addresses."""
    if items is None:
        items = []
    if isinstance(items, str):
        items = [items]
    flat: list[str] = []
    for item in items:
        text = str(item).strip()
        is_name = resolve and text and not any(c in text for c in ":/") \
            and not text.replace(".", "").isdigit()
        flat += _resolve(text, what) if is_name else [text]
    out: dict[str, list[str]] = {"v4": [], "v6": []}
    for item in flat:
        net = _network(item, what)
        family = "v4" if net.version == 4 else "v6"
        text = str(net.network_address) if net.num_addresses == 1 else str(net)
        if text not in out[family]:
            out[family].append(text)
    return out


def baseline_ip_in(address: Any, networks: Any) -> bool:
    """Whether ``address`` lies in one of ``networks``."""
    try:
        ip = ipaddress.ip_address(str(address).strip())
    except ValueError:
        return False
    return any(ip in _network(n, "network") for n in (networks or []))


def _ports(port: Any, where: str) -> str:
    values = port if isinstance(port, list) else [port]
    texts = []
    for value in values:
        text = str(value).strip()
        if not _PORT.match(text) or not all(0 < int(p) < 65536 for p in text.split("-")):
            raise AnsibleFilterError(f"{where}: port {value!r} is not a port or a range a-b")
        texts.append(text)
    return texts[0] if len(texts) == 1 else "{ " + ", ".join(texts) + " }"


def baseline_nft_rule(
    rule: Any, role: str, port: Any, sets: dict[str, dict[str, list[str]]]
) -> list[str]:
    """nftables statements of one declared rule.

    ``rule``: {port, proto (tcp|udp, default tcp), sources (default [any]), comment};
    ``port`` is the rule's port already resolved (a number, "a-b", or a list of them);
    ``sets``: for "coop" and "admin", the v4/v6 elements of the named sets (a rule on an empty
    set is left out rather than written as a rule that can never match).
    """
    where = f"{role}_firewall_rules"
    if not isinstance(rule, dict):
        raise AnsibleFilterError(f"{where}: each rule is a mapping, not {rule!r}")
    unknown = set(rule) - {"port", "proto", "sources", "comment"}
    if unknown:
        raise AnsibleFilterError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    proto = str(rule.get("proto", "tcp")).lower()
    if proto not in PROTOCOLS:
        raise AnsibleFilterError(f"{where}: proto {proto!r} is not tcp or udp")
    dport = f"{proto} dport {_ports(port, where)}"
    sources = rule.get("sources", ["any"])
    if isinstance(sources, str):
        sources = [sources]
    comment = str(rule.get("comment", "")).replace('"', "'")[:100]
    tail = f'accept comment "{role}{": " + comment if comment else ""}"'
    lines: list[str] = []
    literal = baseline_networks([s for s in sources if s not in KEYWORDS], where)
    for source in sources:
        if source == "any":
            lines.append(f"{dport} {tail}")
        elif source in ("coop", "admin"):
            for family, ip in (("v4", "ip"), ("v6", "ip6")):
                if sets.get(source, {}).get(family):
                    lines.append(f"{ip} saddr @{source}_{family} {dport} {tail}")
        # "local": loopback is accepted before any rule; the keyword documents the intent.
    for family, ip in (("v4", "ip"), ("v6", "ip6")):
        if literal[family]:
            lines.append(f"{ip} saddr {{ {', '.join(literal[family])} }} {dport} {tail}")
    return lines


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Any]:
        return {
            "baseline_networks": baseline_networks,
            "baseline_ip_in": baseline_ip_in,
            "baseline_nft_rule": baseline_nft_rule,
        }
