"""What Ansible, testinfra, coopctl and people need to reach a lab: key, ssh_config,
inventory, coopctl configuration.

The inventory follows docs/lab-contract.md (groups per service, root over SSH with the lab key).
Host keys of throwaway hosts are not checked and never recorded. SSH control sockets live in
``STATE/cp`` (set as ``ansible_control_path_dir`` too) so ``down`` can close every master
connection before it halts the hosts, instead of leaving ssh processes behind for a minute.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import yaml

from provisioner.lab.commands import run
from provisioner.lab.config import GROUPS, REPO_DIR, LabConfig, LabError

SSH_OPTIONS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
GROUP_VARS = REPO_DIR / "inventories" / "lab" / "group_vars"


def ensure_ssh_key(cfg: LabConfig) -> str:
    """The lab's ed25519 key pair (created once); returns the public key."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.ssh_key.exists():
        run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"coopctl-{cfg.name}",
                "-f",
                str(cfg.ssh_key),
            ]
        )
    return cfg.ssh_key.with_suffix(".pub").read_text()


def inventory_data(cfg: LabConfig) -> dict:
    hostvars = {
        h: {
            "ansible_host": cfg.address(h),
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(cfg.ssh_key),
            "ansible_ssh_common_args": SSH_OPTIONS,
            "ansible_control_path_dir": str(cfg.control_dir),
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_pipelining": True,
            # Host vars win over the shared group_vars/all.yml, so a lab on another
            # index gets its own state directory. The proxy's address is there for tasks
            # that need one; apt has it in each host's own configuration already.
            "coop_http_proxy": cfg.proxy_url,
            # The controller as the lab hosts see it (e.g. for an API allow-list).
            "coop_lab_bridge_ip": cfg.bridge_ip,
            "coop_lab_dir": str(cfg.state_dir),
        }
        for h in cfg.hosts
    }
    children = {
        group: {"hosts": {host: None}} for group, host in GROUPS.items() if host in cfg.hosts
    }
    return {"all": {"hosts": hostvars, "children": children}}


def write_inventory(cfg: LabConfig) -> Path:
    """STATE/hosts.yml (+ STATE/group_vars -> the repo's), and the repo copy for the default lab."""
    text = (
        f"# Written by `coopctl lab up` for lab {cfg.name!r} (index {cfg.index}); "
        "regenerated on every up.\n"
        + yaml.safe_dump(inventory_data(cfg), sort_keys=False, default_flow_style=False)
    )
    cfg.control_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cfg.inventory.write_text(text)
    link_group_vars(cfg.state_dir / "group_vars")
    if cfg.repo_inventory is not None:
        cfg.repo_inventory.parent.mkdir(parents=True, exist_ok=True)
        cfg.repo_inventory.write_text(text)
    write_ssh_config(cfg)
    return cfg.inventory


def link_group_vars(link: Path) -> None:
    """Point STATE/group_vars at this checkout's group_vars.

    A lab's state directory outlives the checkout that made it: a link left by another clone
    (moved, deleted, or simply another one) is replaced, so the lab never deploys with another
    checkout's variables, and a dangling link is not mistaken for a free name.
    """
    if not GROUP_VARS.is_dir():
        return
    if link.is_symlink():
        if Path(os.readlink(link)) == GROUP_VARS:
            return
        link.unlink()
    elif link.exists():
        raise LabError(f"{link} exists and is not a link to the repository's group_vars: "
                       f"move it away; `coopctl lab up` links it to {GROUP_VARS}")
    link.symlink_to(GROUP_VARS)


def write_ssh_config(cfg: LabConfig) -> Path:
    """An ssh_config for ``ssh -F STATE/ssh_config dir`` and for testinfra."""
    blocks = []
    for h in cfg.hosts:
        blocks.append(
            f"Host {h} {cfg.fqdn(h)} {cfg.address(h)}\n"
            f"  HostName {cfg.address(h)}\n"
            "  User root\n"
            f"  IdentityFile {cfg.ssh_key}\n"
            "  IdentitiesOnly yes\n"
            "  StrictHostKeyChecking no\n"
            "  UserKnownHostsFile /dev/null\n"
            "  LogLevel ERROR\n"
            "  ControlMaster auto\n"
            f"  ControlPath {cfg.control_dir}/%C\n"
            "  ControlPersist 60s\n"
            "  ConnectTimeout 5\n"
        )
    cfg.ssh_config.write_text("\n".join(blocks))
    return cfg.ssh_config


def write_coopctl_config(cfg: LabConfig, path: Path | None = None) -> Path:
    """A coopctl configuration for the lab's directory: StartTLS checked against the lab CA,
    bound as cn=coopctl with the secret the openldap role created (default STATE/coopctl.yaml).
    """
    config = {
        "coop": "demo",
        "directory": {
            "uri": f"ldap://{cfg.address('dir')}",
            "tls": "starttls",
            "ca_file": str(cfg.ca_file),
            "base_dn": "dc=demo,dc=coop",
            "bind_dn": "cn=coopctl,ou=services,dc=demo,dc=coop",
            "bind_secret_file": str(cfg.secrets_dir / "ldap_coopctl"),
        },
        "mail": {"domain": "demo.coop"},
        # `coopctl sync` reaches the hosts through the lab's inventory and the services'
        # APIs by address (the sites' names are sent as Host where nginx needs them).
        "inventory": str(cfg.inventory),
        "services": {
            # The sso role's confidential client (service account, session roles only),
            # not the master realm's admin; it signs its requests with its key.
            "sso": {"url": f"https://{cfg.address('dir')}:8443", "realm": "demo",
                    "client_id": "coopctl",
                    "client_key_file": str(cfg.secrets_dir / "keycloak_coopctl_client.pem")},
            "mail": {"host_group": "mail_servers", "smtp_host": cfg.address("mail"),
                     "smtp_port": 2525, "imap_host": cfg.fqdn("mail"),
                     "submission_host": cfg.fqdn("mail"),
                     "login_url": f"https://{cfg.fqdn('dir')}:8443/realms/demo/account"},
            "cloud": {"url": f"https://{cfg.address('apps')}", "host_header": "cloud.demo.coop",
                      "admin_user": "admin",
                      "admin_secret_file": str(cfg.secrets_dir / "cloud_admin"),
                      "host_group": "cloud_servers", "occ": "occ-double",
                      "data_dir": "/var/lib/nextcloud-double/data"},
            "pads": {"url": f"https://{cfg.address('apps')}", "host_header": "pads.demo.coop",
                     "api_key_file": str(cfg.secrets_dir / "etherpad_apikey")},
            "wiki": {"host_group": "wiki_servers"},
        },
        "sync": {"state_dir": str(cfg.state_dir / "coopctl"), "ca_file": str(cfg.ca_file)},
        # What `coopctl audit` reads with: the openldap role's read-only cn=audit and the sso
        # role's client with view roles only, never coopctl's own writing accounts.
        "audit": {
            "directory": {"bind_dn": "cn=audit,ou=services,dc=demo,dc=coop",
                          "bind_secret_file": str(cfg.secrets_dir / "ldap_audit")},
            "services": {"sso": {"client_id": "coopctl-audit", "client_key_file":
                                 str(cfg.secrets_dir / "keycloak_audit_client.pem")}},
        },
    }
    path = path or cfg.state_dir / "coopctl.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def close_ssh_masters(cfg: LabConfig) -> None:
    """Ask every SSH master in STATE/cp to exit (Ansible's and testinfra's)."""
    if not cfg.control_dir.is_dir():
        return
    for sock in cfg.control_dir.iterdir():
        if not sock.is_socket():
            continue
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "lab-host"],
                capture_output=True,
                timeout=5,
                check=False,
            )
        with contextlib.suppress(OSError):
            os.unlink(sock)


def remove_inventory(cfg: LabConfig) -> None:
    cfg.inventory.unlink(missing_ok=True)
    if cfg.repo_inventory is not None:
        cfg.repo_inventory.unlink(missing_ok=True)
