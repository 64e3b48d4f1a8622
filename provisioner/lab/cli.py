"""Command line of the lab: ``coopctl lab up|status|down|deploy|pki``.

``lab`` is a click group that the main ``coopctl`` CLI registers (``python -m provisioner.lab``
offers it too). Deploying is production's job (``provisioner.cli.deploy``, ``coopctl deploy
-i INVENTORY``); ``lab up`` and ``lab deploy`` only hand it the lab's inventory and the lab's
directory as the place for Ansible's state. Every failure the user can fix is reported as an
``Error:`` line and a ``Hint:`` line saying what to do, never as a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from provisioner.errors import CoopError
from provisioner.lab.config import (
    DEFAULT_HOSTS,
    DEFAULT_NAME,
    SUITES,
    LabConfig,
    LabError,
    default_state_dir,
    default_suite,
)


def _state_dir(name: str, state_dir: Path | None) -> Path:
    return state_dir if state_dir is not None else default_state_dir(name)


def _fail(exc: Exception) -> None:
    """`Error: ...` (click prints that prefix), and the `Hint: ...` line of a CoopError."""
    hint = getattr(exc, "hint", None)
    error = click.ClickException(str(exc) + (f"\nHint: {hint}" if hint else ""))
    error.exit_code = getattr(exc, "exit_code", 1)  # a failed deploy exits 2, as it always did
    raise error from exc


STATE_DIR_OPTION = click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Lab state directory [default: $COOPCTL_LAB_DIR, else /var/lib/coopctl/NAME].",
)
NAME_OPTION = click.option(
    "--name",
    default=DEFAULT_NAME,
    show_default=True,
    help="Lab name (picks the default state directory).",
)


@click.group(name="lab")
def lab() -> None:
    """Throwaway Debian hosts (systemd-nspawn, Debian 13 by default) to test the roles on.

    Needs root and debootstrap/systemd-nspawn (`bash .ci/setup` installs them).
    """


@lab.command()
@NAME_OPTION
@click.option(
    "--index",
    type=click.IntRange(0, 255),
    default=0,
    show_default=True,
    help="Subnet index k: bridge coopbr<k>, addresses 10.77.<k>.0/24.",
)
@click.option(
    "--hosts",
    default=",".join(DEFAULT_HOSTS),
    show_default=True,
    help="Comma-separated host names.",
)
@STATE_DIR_OPTION
@click.option(
    "--suite",
    type=click.Choice(sorted(SUITES)),
    default=None,
    help="Debian release of the hosts: bookworm (12) or trixie (13), one cached image each "
    "[default: the lab's recorded release, else $COOPCTL_LAB_SUITE, else trixie].",
)
@click.option("--no-deploy", is_flag=True, help="Only boot the hosts; do not run site.yml.")
def up(
    name: str, index: int, hosts: str, state_dir: Path | None, suite: str | None, no_deploy: bool
) -> None:
    """Boot the lab (idempotent: running hosts are kept, a failed up resumes), then deploy."""
    from provisioner.lab.lab import Lab

    try:
        lab_dir = _state_dir(name, state_dir)
        if suite is None:  # resume the release the lab was made with
            recorded = LabConfig.load(lab_dir)
            suite = recorded.suite if recorded is not None else default_suite()
        cfg = LabConfig(
            name=name,
            index=index,
            hosts=tuple(h.strip() for h in hosts.split(",") if h.strip()),
            state_dir=lab_dir,
            suite=suite,
        )
        Lab(cfg).up(log=click.echo)
        click.echo(f"inventory: {cfg.inventory}")
        if not no_deploy:
            from provisioner.cli.deploy import run_deploy

            run_deploy(cfg.inventory, lab_dir=cfg.state_dir)
    except (LabError, CoopError) as exc:
        _fail(exc)


@lab.command()
@NAME_OPTION
@STATE_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(name: str, state_dir: Path | None, as_json: bool) -> None:
    """Show each host: running, address, SSH, systemd state, memory used."""
    from provisioner.lab.lab import Lab

    try:
        st = Lab.from_state(_state_dir(name, state_dir)).status()
    except LabError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(st.as_dict(), indent=2))
        return
    click.echo(f"lab {st.name} (index {st.index}) state {st.state_dir}")
    click.echo(
        f"bridge {st.bridge}: {'up' if st.bridge_up else 'absent'}; proxy {st.proxy_url}: "
        f"{'running pid ' + str(st.proxy_pid) if st.proxy_pid else 'stopped'}"
    )
    click.echo(f"{'host':<8} {'address':<14} {'running':<8} {'ssh':<4} {'systemd':<12} memory")
    total = 0
    for h in st.hosts:
        mem = f"{h.memory_bytes / 2**20:.0f} MiB" if h.memory_bytes is not None else "-"
        total += h.memory_bytes or 0
        click.echo(
            f"{h.name:<8} {h.address:<14} {'yes' if h.running else 'no':<8} "
            f"{'ok' if h.ssh else '-':<4} {h.system_state or '-':<12} {mem}"
        )
    click.echo(f"total memory: {total / 2**20:.0f} MiB")


@lab.command()
@NAME_OPTION
@STATE_DIR_OPTION
@click.option("--purge", is_flag=True, help="Also delete the state directory (key, PKI, secrets).")
def down(name: str, state_dir: Path | None, purge: bool) -> None:
    """Halt every host and remove the lab's processes, mounts, namespaces, bridge and proxy."""
    from provisioner.lab.lab import Lab

    try:
        Lab.from_state(_state_dir(name, state_dir)).down(log=click.echo, purge=purge)
    except LabError as exc:
        _fail(exc)


@lab.command()
@click.option(
    "--dir",
    "pki_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Where to write ca.crt, ca.key, NAME.crt, NAME.key.",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    required=True,
    metavar="NAME=IP",
    help="A host to certify (repeat for each).",
)
@click.option("--domain", default="demo.coop", show_default=True, help="FQDN = NAME.DOMAIN.")
def pki(pki_dir: Path, hosts: tuple[str, ...], domain: str) -> None:
    """Create (once) a CA and host certificates for hosts outside the lab (Vagrant VMs)."""
    from provisioner.lab.pki import ensure_ca, ensure_host_cert

    ca, ca_key = ensure_ca(pki_dir)
    for spec in hosts:
        name, sep, ip = spec.partition("=")
        if not sep:
            _fail(LabError(f"--host {spec}: write it as NAME=IP"))
        ensure_host_cert(pki_dir, ca, ca_key, name, f"{name}.{domain}", ip)
    click.echo(f"PKI in {pki_dir}: ca.crt and {', '.join(h.partition('=')[0] for h in hosts)}")


@lab.command("deploy")
@click.option("--check", is_flag=True, help="Dry run (ansible --check --diff).")
@click.option("--limit", "limit", default=None, metavar="HOST", help="Only these hosts/groups.")
@click.option("--tags", default=None, help="Only tasks with these tags (comma-separated).")
@click.option("--playbook", default="site.yml", show_default=True, help="Playbook in playbooks/.")
@NAME_OPTION
@STATE_DIR_OPTION
def lab_deploy(
    check: bool,
    limit: str | None,
    tags: str | None,
    playbook: str,
    name: str,
    state_dir: Path | None,
) -> None:
    """Deploy the lab: `coopctl deploy -i STATE/hosts.yml`, Ansible's state kept in STATE."""
    from provisioner.cli.deploy import run_deploy

    lab_dir = _state_dir(name, state_dir)
    inventory = lab_dir / "hosts.yml"
    try:
        if not inventory.exists():
            raise CoopError(f"lab {name!r} has no inventory at {inventory}",
                            f"run `coopctl lab up --name {name}` first (it deploys, too)")
        run_deploy(inventory, lab_dir=lab_dir, check=check, limit=limit, tags=tags,
                   playbook=playbook)
    except (LabError, CoopError) as exc:
        _fail(exc)


def main() -> None:
    """``python -m provisioner.lab``: the lab group (``deploy`` included)."""
    lab(prog_name="python -m provisioner.lab")
