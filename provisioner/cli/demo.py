"""`coopctl demo`: a demo coop with sample members, provisioned and audited.

By default it brings up the local lab (three Debian hosts in systemd-nspawn,
every service deployed by playbooks/site.yml), then runs the sysadmin's own
commands against the lab's directory (plans, groups, a CSV import from the
"ERP", a suspension, a quota change) and audits what the live services do
with it. `--local` runs the directory part against a private slapd instead,
for machines without systemd-nspawn. Re-running converges: nothing changes.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import yaml

from provisioner.cli.common import handle_errors
from provisioner.localslapd import LocalDirectory
from provisioner.resources import demo_members_csv

if TYPE_CHECKING:  # the lab (and its imports) load only when the demo uses it
    from provisioner.lab.config import LabConfig

SAMPLE = demo_members_csv()
SERVICES = ["mail", "sso", "cloud", "pads", "wiki"]


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
        # coopctl's own state (an unfinished import's record) next to the server's data
        "sync": {"state_dir": str(workdir / "state")},
    }
    path = workdir / "coopctl.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _step(title: str) -> None:
    click.secho(f"\n== {title}", bold=True)


class Runner:
    """Runs coopctl commands in this process, echoing them like a shell session."""

    def __init__(self, config: Path | None) -> None:
        self.config = config

    def __call__(self, *args: str, quiet: bool = False) -> None:
        from provisioner.cli import cli

        prefix = ["--config", str(self.config)] if self.config else []
        if not quiet:
            click.secho("$ coopctl " + " ".join(args), fg="cyan")
        try:
            cli.main([*prefix, *args], prog_name="coopctl", standalone_mode=False)
        except SystemExit as exc:
            if exc.code:
                raise


@click.command()
@click.option("--local", is_flag=True,
              help="Use a private slapd on this machine instead of the lab (no services).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("/var/lib/coopctl/demo"), show_default=True,
              help="With --local: where the private directory keeps its data.")
@click.option("--fresh", is_flag=True, help="With --local: start from an empty directory.")
@click.option("--no-deploy", is_flag=True,
              help="Use the lab's hosts as they are: boot them if needed, skip site.yml.")
@click.option("--down", "take_down", is_flag=True,
              help="Take the lab down (or stop the local server) at the end.")
@click.option("--lab", "lab_name", default="lab", show_default=True, envvar="COOPCTL_LAB_NAME",
              help="Which lab to use (as `coopctl lab up --name`) [env: COOPCTL_LAB_NAME].")
@click.option("--lab-index", type=click.IntRange(0, 255), default=0, show_default=True,
              envvar="COOPCTL_LAB_INDEX",
              help="Its subnet index (as `coopctl lab up --index`) [env: COOPCTL_LAB_INDEX].")
@handle_errors
def demo(local: bool, workdir: Path, fresh: bool, no_deploy: bool, take_down: bool,
         lab_name: str, lab_index: int) -> None:
    """Run a demo coop end to end: servers, plans, members, audit."""
    lab_cfg = None
    if local:
        workdir.mkdir(parents=True, exist_ok=True)
        server = LocalDirectory(workdir / "slapd")
        if fresh:
            server.destroy()
        server.start()
        config = write_local_config(workdir, server)
        click.echo(f"demo directory: {server.uri} (config {config})")
        run = Runner(config)
        _step("Initialise the directory (schema, access rules, tree)")
        run("init")
    else:
        from provisioner.lab.config import DEFAULT_HOSTS, LabConfig, default_state_dir
        from provisioner.lab.inventory import write_coopctl_config

        state_dir = default_state_dir(lab_name)
        lab_cfg = LabConfig.load(state_dir) or LabConfig(
            name=lab_name, index=lab_index, hosts=DEFAULT_HOSTS, state_dir=state_dir)
        _step("The coop's servers: the local lab, deployed by playbooks/site.yml")
        started = time.monotonic()
        Runner(None)("lab", "up", "--name", lab_name, "--index", str(lab_cfg.index),
                     *(["--no-deploy"] if no_deploy else []))
        click.echo(f"lab up and deployed in {time.monotonic() - started:.0f} s")
        config = write_coopctl_config(lab_cfg)
        click.echo(f"coopctl talks to the lab's directory with {config}")
        run = Runner(config)
    _directory_steps(run, config, lab_cfg)
    if take_down:
        if local:
            LocalDirectory(workdir / "slapd").stop()
        else:
            Runner(None)("lab", "down", "--name", lab_name)


def _directory_steps(run: Runner, config: Path, lab_cfg: LabConfig | None) -> None:
    from provisioner.config import load
    from provisioner.directory import Directory
    from provisioner.ldapconn import connect

    cfg = load(config)
    conn = connect(cfg.directory)
    try:
        directory = Directory(cfg, conn)
        plans = {p.name for p in directory.plans()}
        groups = {g.name for g in directory.groups()}
    finally:
        conn.unbind()

    _step("Plans")
    for name, args in (
        ("small", ["--cloud-quota", "5 GB", "--mail-quota", "1 GB", "--price", "2.50"]),
        ("family", ["--cloud-quota", "50 GB", "--mail-quota", "5 GB", "--price", "6.00"]),
    ):
        if name not in plans:
            run("plan", "add", name, *args, *[x for s in SERVICES for x in ("--service", s)])
    run("plan", "list")
    _step("Groups")
    for name in ("board", "wiki-editors", "admins"):
        if name not in groups:
            run("group", "add", name)
    run("group", "list")
    _step("Import the members from the ERP's CSV (dry run, then for real, then again)")
    run("member", "import", str(SAMPLE), "--dry-run")
    passwords = config.parent / f"initial-passwords-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    run("member", "import", str(SAMPLE), "--initial-passwords", str(passwords))
    run("member", "import", str(SAMPLE))
    _step("Suspend a member who stopped paying, give another a bigger mailbox")
    run("member", "suspend", "ines.benali")
    run("member", "modify", "jan.vanderberg", "--mail-quota", "2 GB")
    run("member", "show", "jan.vanderberg")
    _step("Members")
    run("member", "list")
    if lab_cfg is not None:
        _sync_steps(run, config)
    _step("Audit")
    _audit(config, lab_cfg)
    if lab_cfg is not None:
        _step("coopctl audit: drift, access, infrastructure checks, journal (read-only)")
        run("audit", "--fail-on", "none")
        report = lab_cfg.state_dir / "audit.html"
        run("audit", "--format", "html", "--output", str(report), "--fail-on", "none",
            quiet=True)
        click.echo(f"the board's report (one offline HTML file): {report}")


LEAVER = "karel.janssens"


def _sync_steps(run: Runner, config: Path) -> None:
    """Every service follows the directory: plan, apply, then a member's departure."""
    from datetime import UTC, datetime, timedelta

    from provisioner.config import load
    from provisioner.directory import Directory
    from provisioner.ldapconn import connect

    _step("Sync: what every service must change to match the directory (dry run)")
    run("sync", "--dry-run")
    _step("Sync: apply it (welcome mails, cloud accounts, pads, wiki, sessions of the suspended)")
    run("sync", "--yes")
    cfg = load(config)
    conn = connect(cfg.directory)
    try:
        leaver = Directory(cfg, conn).find_member(LEAVER)
    finally:
        conn.unbind()
    if leaver is None:
        _step("A member joins, uses the services, and leaves")
        run("member", "add", "--given-name", "Karel", "--family-name", "Janssens",
            "--plan", "small", "--language", "nl", "--generate-password", quiet=True)
        run("sync", "--yes", "--member", LEAVER)
        leaver_status = "active"
    else:
        leaver_status = leaver.status
    if leaver_status == "active":
        left = (datetime.now(UTC) - timedelta(days=45)).strftime("%Y-%m-%d")
        _step(f"{LEAVER} left the coop on {left}: past the 30-day grace period, the sync "
              "archives their data, verifies the archive, then removes them everywhere")
        run("member", "depart", LEAVER, "--on", left)
    run("sync", "--yes")
    archives = sorted(cfg.sync.archive_dir.glob(f"{LEAVER}-*.tar"))  # type: ignore[union-attr]
    if archives:
        _list_archive(archives[-1])
    _step("Sync again: nothing left to do")
    run("sync")
    run("journal", "--member", LEAVER)


def _list_archive(path: Path) -> None:
    from provisioner.archive import verify

    manifest = verify(path)
    click.echo(f"departure archive {path} (verified: {len(manifest['files'])} file(s))")
    for f in manifest["files"]:
        click.echo(f"  {f['size']:>10}  {f['sha256'][:12]}  {f['path']}")


def _audit(config_path: Path, lab_cfg: LabConfig | None) -> None:
    from provisioner import audit
    from provisioner.config import load
    from provisioner.directory import Directory
    from provisioner.ldapconn import connect

    config = load(config_path)
    conn = connect(config.directory)
    try:
        directory = Directory(config, conn)
        members = directory.members()
        plans = {p.name: p for p in directory.plans()}
        awaiting = directory.awaiting_own_password()
    finally:
        conn.unbind()
    for line in audit.directory_summary(members, plans):
        click.echo(line)
    if lab_cfg is None:
        return
    address = lab_cfg.address
    report = audit.AuditReport()

    def on_mail_host(command: str) -> str:
        # The lab's ssh_config names the host, its key and its (throwaway) host-key policy.
        return subprocess.run(
            ["ssh", "-F", str(lab_cfg.ssh_config), "-o", "BatchMode=yes", "mail", command],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout

    audit.audit_mail(report, members, on_mail_host, awaiting)
    audit.audit_sso(report, members, f"https://{address('dir')}:8443", "demo", "admin",
                    lab_cfg.secret("keycloak_admin"), lab_cfg.ca_file)
    audit.audit_pads(report, f"https://{address('apps')}", lab_cfg.secret("etherpad_apikey"),
                     lab_cfg.ca_file, "pads.demo.coop")
    click.echo("\nWho can log in where (observed on the live services; '!' = differs from "
               "the directory):")
    click.echo(report.matrix(members, ["mail", "sso"]))
    for note in report.notes:
        click.echo(note)
    drift = report.drift()
    click.echo(f"drift: {len(drift)} finding(s)" + "".join(
        f"\n  {f.service}: {f.uid} expected {'access' if f.expected else 'no access'}"
        for f in drift))
    click.echo("cloud, pads and wiki accounts: made by `coopctl sync` above (its plan is "
               "empty when every service matches the directory)")
