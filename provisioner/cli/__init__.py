"""The `coopctl` command line."""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from provisioner import __version__
from provisioner.cli.common import State, emit, handle_errors, json_option, pass_state

# Each command group is imported only when it runs (click's "lazily loading subcommands"
# pattern): `coopctl member list` need not load the lab, Ansible's runner or the demo.
LAZY_COMMANDS = {
    "member": "provisioner.cli.member:member",
    "plan": "provisioner.cli.plan:plan",
    "group": "provisioner.cli.group:group",
    "demo": "provisioner.cli.demo:demo",
    "lab": "provisioner.lab.cli:lab",
    "deploy": "provisioner.cli.deploy:deploy",
    "sync": "provisioner.cli.sync:sync",
    "journal": "provisioner.cli.sync:journal",
    "audit": "provisioner.cli.audit:audit",
    "watch": "provisioner.cli.watch:watch",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are named here and imported on first use."""

    def __init__(self, *args, lazy_commands: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands:
            module_name, attribute = self.lazy_commands[cmd_name].split(":")
            return getattr(importlib.import_module(module_name), attribute)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    lazy_commands=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="COOPCTL_CONFIG",
    help="Configuration file (default: ./coopctl.yaml, /etc/coopctl/coopctl.yaml).",
)
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
    emit(
        as_json,
        {"done": report.done},
        "\n".join(report.done) if report.done else "Nothing to do: the directory is ready.",
    )


def main() -> None:
    cli(prog_name="coopctl")
