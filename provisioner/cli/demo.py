"""`coopctl demo`: a demo coop with sample members, provisioned and audited.

It runs the same code paths a sysadmin uses (init, plan add, group add,
member import, suspend, export), against a private slapd started for the
occasion, and ends with a directory audit. Re-running it is safe: every step
is idempotent, so the second run shows no changes.
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from pathlib import Path

import click
import yaml

from provisioner.cli.common import handle_errors
from provisioner.localslapd import LocalDirectory

ROOT = Path(__file__).resolve().parent.parent.parent
SAMPLE = ROOT / "inventories" / "lab" / "demo-members.csv"


def write_local_config(workdir: Path, directory: LocalDirectory) -> Path:
    """A coopctl config for a private slapd, with a fresh bind secret (0600)."""
    secret = workdir / "coopctl.secret"
    if not secret.exists():
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24) + "\n")
    config = {
        "coop": "demo",
        "directory": {
            "uri": directory.uri, "tls": "none", "base_dn": directory.suffix,
            "bind_dn": f"cn=coopctl,ou=services,{directory.suffix}",
            "bind_secret_file": str(secret), "admin_uri": directory.ldapi_uri,
        },
        "mail": {"domain": "demo.coop"},
    }
    path = workdir / "coopctl.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _step(title: str) -> None:
    click.secho(f"\n== {title}", bold=True)


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/var/lib/coopctl/demo"), show_default=True,
              help="Where the demo directory server keeps its data.")
@click.option("--fresh", is_flag=True, help="Start from an empty directory.")
@click.option("--stop", is_flag=True, help="Stop the demo directory server at the end.")
@handle_errors
def demo(workdir: Path, fresh: bool, stop: bool) -> None:
    """Run a demo coop end to end: directory, plans, members, audit."""
    from provisioner.cli import cli

    workdir.mkdir(parents=True, exist_ok=True)
    server = LocalDirectory(workdir / "slapd")
    if fresh:
        server.destroy()
    server.start()
    config = write_local_config(workdir, server)
    click.echo(f"demo directory: {server.uri} (config {config})")

    def run(*args: str) -> None:
        click.secho("$ coopctl " + " ".join(args), fg="cyan")
        try:
            cli.main(["--config", str(config), *args], prog_name="coopctl",
                     standalone_mode=False)
        except SystemExit as exc:
            if exc.code:
                raise
    _step("Initialise the directory (schema, access rules, tree)")
    run("init")
    _step("Plans")
    for name, args in (
        ("small", ["--cloud-quota", "5 GB", "--mail-quota", "1 GB", "--price", "2.50"]),
        ("family", ["--cloud-quota", "50 GB", "--mail-quota", "5 GB", "--price", "6.00"]),
    ):
        if not _exists(cli, config, "plan", name):
            run("plan", "add", name, *args, "--service", "mail", "--service", "cloud",
                "--service", "pads", "--service", "wiki", "--service", "sso")
    run("plan", "list")
    _step("Groups")
    for name in ("board", "wiki-editors"):
        if not _exists(cli, config, "group", name):
            run("group", "add", name)
    _step("Import the members from the ERP's CSV (dry run, then for real, then again)")
    run("member", "import", str(SAMPLE), "--dry-run")
    run("member", "import", str(SAMPLE))
    run("member", "import", str(SAMPLE))
    _step("Suspend a member who stopped paying, give another a bigger mailbox")
    run("member", "suspend", "ines.benali")
    run("member", "modify", "jan.vanderberg", "--mail-quota", "2 GB")
    run("member", "show", "jan.vanderberg")
    _step("Members")
    run("member", "list")
    _step("Audit of the directory")
    _audit(config)
    if stop:
        server.stop()


def _exists(cli: click.Group, config: Path, kind: str, name: str) -> bool:
    from provisioner.config import load
    from provisioner.directory import Directory
    from provisioner.ldapconn import connect

    cfg = load(config)
    conn = connect(cfg.directory)
    try:
        directory = Directory(cfg, conn)
        found = directory.find_plan(name) if kind == "plan" else directory.find_group(name)
    finally:
        conn.unbind()
    return found is not None


def _audit(config_path: Path) -> None:
    from provisioner.config import load
    from provisioner.directory import Directory
    from provisioner.ldapconn import connect

    config = load(config_path)
    conn = connect(config.directory)
    try:
        directory = Directory(config, conn)
        members = directory.members()
        plans = {p.name: p for p in directory.plans()}
    finally:
        conn.unbind()
    by_status = Counter(m.status for m in members)
    click.echo(f"members: {len(members)} ({', '.join(f'{k} {v}' for k, v in by_status.items())})")
    revenue = sum(plans[m.plan].price_cents or 0 for m in members
                  if m.status == "active" and m.plan in plans)
    click.echo(f"monthly revenue of active members: {revenue // 100}.{revenue % 100:02d} EUR")
    problems = [m.uid for m in members if m.status == "active" and not m.services]
    click.echo(f"active members without any service: {len(problems)}")
    overrides = [m.uid for m in members if m.quota_overrides]
    click.echo(f"quotas set by hand: {', '.join(overrides) or 'none'}")
