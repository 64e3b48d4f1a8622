"""The lab itself: real systemd hosts, a closed network, the apt proxy, PKI, and a clean down."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding

from provisioner.lab import network
from provisioner.lab.aptsources import DebianSources, host_sources
from provisioner.lab.config import GROUPS, SUITES, LabConfig, LabError
from provisioner.lab.hosts import Host, cgroup_hierarchies, is_mounted
from provisioner.lab.lab import Lab
from provisioner.lab.pki import published_names

pytestmark = pytest.mark.lab


def test_hosts_boot_real_systemd_without_failed_units(lab_hosts):
    for name in lab_hosts.cfg.hosts:
        host = lab_hosts.host(name)
        assert host.run("readlink /proc/1/exe").stdout.strip() == "/usr/lib/systemd/systemd"
        state = host.run("systemctl is-system-running --wait").stdout.strip()
        failed = host.run("systemctl list-units --state=failed --plain --no-legend").stdout
        assert state in ("running", "degraded"), f"{name}: {state}"
        assert failed.strip() == "", f"{name} has failed units:\n{failed}"
        assert host.check_output("hostname -f") == f"{name}.demo.coop"


def test_hosts_run_the_labs_debian_release(lab_hosts):
    """Each host is the release the lab was made with, and apt asks for that release (its
    updates and security suites included) through the lab's proxy."""
    cfg = lab_hosts.cfg
    for name in cfg.hosts:
        host = lab_hosts.host(name)
        assert host.check_output(". /etc/os-release && echo $VERSION_ID") == cfg.debian_version
        sources = host.file("/etc/apt/sources.list.d/debian.sources").content_string
        suites = [line.split(":", 1)[1].split() for line in sources.splitlines()
                  if line.startswith("Suites:")]
        assert suites == [[cfg.suite, f"{cfg.suite}-updates"], [f"{cfg.suite}-security"]]
        # No other source. Debian's daily apt job (apt-daily.service, whose timer the baseline
        # turns on for unattended-upgrades) leaves an empty /etc/apt/sources.list behind: CI
        # saw it when the timer fired mid-run; `systemctl start apt-daily` does it at once.
        legacy = host.file("/etc/apt/sources.list")
        if legacy.exists:
            lines = [line for line in legacy.content_string.splitlines()
                     if line.strip() and not line.lstrip().startswith("#")]
            assert lines == [], (name, lines)


def test_hosts_may_configure_their_own_network(lab_hosts):
    """nspawn drops CAP_NET_ADMIN with --network-namespace-path; the lab gives it back, so a
    role can load nftables rules. Setting lo's MTU to its own value needs the capability and
    changes nothing."""
    for name in lab_hosts.cfg.hosts:
        host = lab_hosts.host(name)
        caps = host.check_output("grep ^CapBnd: /proc/1/status").split()[1]
        assert int(caps, 16) & (1 << 12), f"{name}: no CAP_NET_ADMIN in {caps}"
        mtu = host.check_output("cat /sys/class/net/lo/mtu")
        result = host.run(f"ip link set dev lo mtu {mtu}")
        assert result.rc == 0, f"{name}: {result.stderr}"


def test_every_host_resolves_every_fqdn(lab_hosts):
    for name in lab_hosts.cfg.hosts:
        host = lab_hosts.host(name)
        for other, address in lab_hosts.addresses.items():
            line = host.check_output(f"getent hosts {other}.demo.coop")
            assert line.split()[0] == address


def test_hosts_have_no_route_beyond_the_lab_subnet(lab_hosts):
    """Nothing leaves the lab but through the proxy: checked on the routing tables, no traffic."""
    cfg = lab_hosts.cfg
    subnet = ipaddress.ip_network(cfg.subnet)
    for name in cfg.hosts:
        ns = cfg.netns(name)
        v4 = network.run(["ip", "-n", ns, "-4", "route", "show", "table", "all"]).stdout
        v6 = network.run(["ip", "-n", ns, "-6", "route", "show", "table", "all"]).stdout
        for line in v4.splitlines():
            words = line.split()
            if "table" in words and words[words.index("table") + 1] == "local":
                continue  # the host's own addresses and loopback
            assert words[0] != "default", f"{name}: {line}"
            assert ipaddress.ip_network(words[0]).subnet_of(subnet), f"{name}: {line}"
        for line in v6.splitlines():
            words = line.split()
            if "table" in words and words[words.index("table") + 1] == "local":
                continue
            assert ipaddress.ip_network(words[0]).is_link_local, f"{name}: {line}"
        # The kernel's route lookup (no packet is sent) refuses an outside address.
        probe = network.run(["ip", "-n", ns, "route", "get", "192.0.2.1"], check=False)
        assert probe.returncode != 0 and "unreachable" in probe.stderr
        assert (
            lab_hosts.host(name)
            .check_output("ip route get %s", cfg.bridge_ip)
            .startswith(cfg.bridge_ip)
        )


def _proxy_ask(cfg: LabConfig, request: bytes) -> bytes:
    with socket.create_connection((cfg.bridge_ip, 3128), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(4096)


def test_proxy_refuses_everything_but_debian(lab_hosts):
    """Denied before any outside connection is made: only lab addresses are contacted here."""
    cfg = lab_hosts.cfg
    for request in (
        b"CONNECT packages.cloud.google.com:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET http://deb.nodesource.com/node_20.x/ HTTP/1.1\r\nHost: deb.nodesource.com\r\n\r\n",
        b"CONNECT deb.debian.org:22 HTTP/1.1\r\nHost: deb.debian.org\r\n\r\n",
        b"POST http://deb.debian.org/debian/ HTTP/1.1\r\nHost: deb.debian.org\r\n\r\n",
    ):
        answer = _proxy_ask(cfg, request)
        assert answer.split(b"\r\n")[0].split()[1] in (b"403", b"405"), request
    assert "DENY CONNECT packages.cloud.google.com:443" in (cfg.state_dir / "proxy.log").read_text()


def test_apt_in_a_host_goes_through_the_proxy(lab_hosts):
    name = lab_hosts.cfg.hosts[0]
    host = lab_hosts.host(name)
    conf = host.file("/etc/apt/apt.conf.d/01coop-lab-proxy").content_string
    assert lab_hosts.cfg.proxy_url in conf
    result = host.run("apt-get -q -o Acquire::Retries=2 update")
    assert result.rc == 0, result.stderr
    assert "GET http://deb.debian.org/" in (lab_hosts.state_dir / "proxy.log").read_text()


def test_pki_host_certificates_are_signed_by_the_lab_ca(lab_hosts):
    cfg = lab_hosts.cfg
    ca = x509.load_pem_x509_certificate(lab_hosts.ca_file.read_bytes())
    for name in cfg.hosts:
        cert = x509.load_pem_x509_certificate((cfg.pki_dir / f"{name}.crt").read_bytes())
        ca.public_key().verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PKCS1v15(),
            cert.signature_hash_algorithm,
        )
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        # The host's own names and the public sites it serves (apps: wiki., pads., cloud.).
        assert set(san.get_values_for_type(x509.DNSName)) == {
            name, f"{name}.demo.coop", *published_names(name, "demo.coop")}
        if name == "apps":
            assert {"wiki.demo.coop", "pads.demo.coop", "cloud.demo.coop"} <= set(
                san.get_values_for_type(x509.DNSName))
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [cfg.address(name)]
        assert (cfg.pki_dir / f"{name}.key").stat().st_mode & 0o077 == 0


def test_inventory_follows_the_contract(lab_hosts):
    cfg = lab_hosts.cfg
    data = yaml.safe_load(lab_hosts.inventory.read_text())["all"]
    for group, host in GROUPS.items():
        assert list(data["children"][group]["hosts"]) == [host]
    for name in cfg.hosts:
        hostvars = data["hosts"][name]
        assert hostvars["ansible_host"] == cfg.address(name)
        assert hostvars["ansible_user"] == "root"
        assert Path(hostvars["ansible_ssh_private_key_file"]) == cfg.ssh_key
        assert hostvars["coop_http_proxy"] == f"http://{cfg.bridge_ip}:3128"


def test_status_reports_each_host(lab_hosts):
    status = lab_hosts.lab.status()
    assert status.proxy_pid and status.bridge_up
    for host in status.hosts:
        assert host.running and host.ssh, host
        # The upper bound is the whole lab's budget (README: < 3 GB), not a per-host one: after
        # the suite's imports, dir's memory-mapped directory database and Keycloak's heap count
        # as active memory and have passed 1 GiB there (CI, stop 14).
        assert host.memory_bytes and 4 * 2**20 < host.memory_bytes < 3 * 2**30, host


def _leftovers(cfg: LabConfig) -> list[str]:
    """Everything of a lab that could outlive it on the controller."""
    found = []
    for name in cfg.hosts:
        host = Host(cfg, name)
        if is_mounted(host.root):
            found.append(f"mount {host.root}")
        if network.netns_exists(cfg.netns(name)):
            found.append(f"netns {cfg.netns(name)}")
        if network.link_exists(cfg.veth(name)):
            found.append(f"link {cfg.veth(name)}")
        found += [f"cgroup {cg}" for cg in host.cgroups() if cg.exists()]
    if network.link_exists(cfg.bridge):
        found.append(f"bridge {cfg.bridge}")
    ps = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True).stdout
    for line in ps.splitlines():
        if str(cfg.state_dir) in line or f"--listen {cfg.bridge_ip} " in line:
            if line.split()[1].startswith("Z"):
                continue  # exited, waiting for its parent to reap it
            found.append(f"process {line.strip()}")
    return found


def test_up_resumes_and_down_leaves_nothing(tmp_path_factory):
    """On a lab of its own (index 9, one host): resume after a crash, then a clean down."""
    cfg = LabConfig(
        name="lab9test", index=9, hosts=("dir",), state_dir=tmp_path_factory.mktemp("lab9")
    )
    lab = Lab(cfg)
    try:
        first = lab.up()
        assert first.booted == ["dir"] and lab.is_up()
        host = lab.host("dir")
        assert any((h / cfg.cgroup_name("dir")).exists() for h in cgroup_hierarchies())
        # Up again: the running host is kept, not rebooted.
        pid = host.pid()
        assert lab.up().kept == ["dir"] and host.pid() == pid
        # A crashed host (its nspawn killed) is booted again on the next up.
        os.kill(pid, signal.SIGKILL)
        for _ in range(50):
            if host.pid() is None:
                break
            subprocess.run(["sleep", "0.1"], check=True)
        assert host.pid() is None
        resumed = lab.up()
        assert resumed.booted == ["dir"] and host.ssh_ok()
    finally:
        lab.down()
    assert _leftovers(cfg) == []


def test_a_lab_records_its_release(tmp_path, monkeypatch):
    """The release is checked, recorded in lab.json and read back; a record written before
    labs had one is Debian 12; $COOPCTL_LAB_SUITE only picks the default of a new lab."""
    with pytest.raises(LabError, match=r"bookworm \(Debian 12\) or trixie \(Debian 13\)"):
        LabConfig(name="x", index=200, state_dir=tmp_path, suite="sid")
    cfg = LabConfig(name="x", index=200, state_dir=tmp_path, suite="trixie")
    cfg.save()
    assert LabConfig.load(tmp_path) == cfg and cfg.debian_version == "13"
    old = json.loads((tmp_path / "lab.json").read_text())
    del old["suite"]
    (tmp_path / "lab.json").write_text(json.dumps(old))
    assert LabConfig.load(tmp_path).suite == "bookworm"
    monkeypatch.setenv("COOPCTL_LAB_SUITE", "trixie")
    assert LabConfig(name="y", index=201, state_dir=tmp_path / "y").suite == "trixie"
    assert LabConfig.load(tmp_path).suite == "bookworm"
    assert SUITES == {"bookworm": "12", "trixie": "13"}


def test_apt_sources_name_the_hosts_release():
    src = DebianSources("http://deb.debian.org/debian", "http://deb.debian.org/debian-security",
                        ("deb.debian.org",))
    text = host_sources(src, "trixie")
    assert "Suites: trixie trixie-updates\n" in text and "Suites: trixie-security\n" in text
    assert "bookworm" not in text
    assert text.count("URIs: http://deb.debian.org/debian\n") == 1
    assert text.count("URIs: http://deb.debian.org/debian-security\n") == 1


def test_up_refuses_to_switch_the_release_of_kept_hosts(tmp_path):
    """Overlays made on one release's image cannot be mounted on the other's: `up` with
    another suite asks for a `down` first (nothing of the old lab runs here: index 202)."""
    old = LabConfig(name="sw", index=202, hosts=("dir",), state_dir=tmp_path, suite="bookworm")
    old.save()
    old.host_dir("dir").mkdir(parents=True)
    new = LabConfig(name="sw", index=202, hosts=("dir",), state_dir=tmp_path, suite="trixie")
    with pytest.raises(LabError, match="lab down --name sw"):
        Lab(new)._check_record()
    Lab(old)._check_record()  # the same release resumes
