"""The `coopctl` command line."""

from __future__ import annotations

from pathlib import Path

import click

from provisioner import __version__
from provisioner.cli.common import State, emit, handle_errors, json_option, pass_state
from provisioner.cli.demo import demo
from provisioner.cli.group import group
from provisioner.cli.member import member
from provisioner.cli.plan import plan


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              envvar="COOPCTL_CONFIG", help="Configuration file (default: ./coopctl.yaml, "
              "/etc/coopctl/coopctl.yaml).")
@click.version_option(__version__, prog_name="coopctl")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """Keep a cooperative's online services in line with its LDAP directory."""
    state = ctx.ensure_object(State)
    state.config_path = config_path
    ctx.call_on_close(state.close)


@cli.command("init")
@json_option
@pass_state
@handle_errors
def init(state: State, as_json: bool) -> None:
    """Load the schema, access rules and base tree into the directory (idempotent).

    Runs on the directory server itself, over its ldapi socket (directory.admin_uri).
    """
    from provisioner.bootstrap import initialise

    report = initialise(state.config)
    emit(as_json, {"done": report.done},
         "\n".join(report.done) if report.done else "Nothing to do: the directory is ready.")


cli.add_command(member)
cli.add_command(plan)
cli.add_command(group)
cli.add_command(demo)

try:  # the lab needs root and systemd-nspawn; the rest of coopctl does not
    from provisioner.lab.cli import deploy, lab

    cli.add_command(lab)
    cli.add_command(deploy)
except ImportError:  # pragma: no cover - lab package not installed
    pass


def main() -> None:
    cli(prog_name="coopctl")
