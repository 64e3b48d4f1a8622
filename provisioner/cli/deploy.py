"""`coopctl deploy -i INVENTORY`: deploy the coop's services to the hosts of an inventory.

The production path: a coop installs coopctl with pip, writes its inventory from
``inventories/example`` (docs/production.md) and runs this. Nothing here knows about the lab:
a lab is deployed the same way, with the inventory ``coopctl lab up`` wrote (or ``coopctl lab
deploy``, which passes the lab's own directory as the state directory).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from provisioner.cli.common import handle_errors
from provisioner.errors import InvalidInput


def run_deploy(
    inventory: Path | None,
    *,
    state_dir: Path | None = None,
    lab_dir: Path | None = None,
    check: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    playbook: str = "site.yml",
    echo: Callable[[str], None] = click.echo,
) -> None:
    """Deploy; raise a CoopError (Error + Hint) unless ansible-playbook succeeded."""
    from provisioner.ansible import deploy_playbook, require_success

    if inventory is None:
        raise InvalidInput(
            "no inventory given: coopctl deploys the hosts an Ansible inventory lists",
            "pass --inventory FILE: the coop's own (start from inventories/example, see "
            "docs/production.md), or a lab's STATE/hosts.yml (`coopctl lab deploy` does that)")
    inventory = inventory.expanduser()
    if not inventory.exists():
        raise InvalidInput(f"no inventory at {inventory}",
                           "give the path of the coop's hosts.yml (or of its inventory directory)")
    if state_dir is not None and state_dir.exists() and not state_dir.is_dir():
        raise InvalidInput(f"the state directory {state_dir} is a file",
                           "give a directory (it is created if missing), or leave --state-dir out")
    recap = deploy_playbook(inventory, state_dir=state_dir, lab_dir=lab_dir, check=check,
                            limit=limit, tags=tags, playbook=playbook, echo=echo)
    require_success(recap, inventory)


@click.command()
@click.option(
    "-i", "--inventory", "inventory_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The coop's Ansible inventory (hosts.yml, next to its group_vars/).",
)  # fmt: skip
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path, file_okay=False),
    envvar="COOPCTL_STATE_DIR",
    default=None,
    help="Where Ansible's state goes (runner data, job artifacts, SSH sockets, fact cache) "
    "[default: $COOPCTL_STATE_DIR, else /var/lib/coopctl/deploy/NAME-HASH for the inventory].",
)
@click.option("--check", is_flag=True, help="Dry run (ansible --check --diff).")
@click.option("--limit", "limit", default=None, metavar="HOST", help="Only these hosts/groups.")
@click.option("--tags", default=None,
              help="Only tasks with these tags, comma-separated (each role's tasks carry the "
              "role's name: --tags mail).")
@click.option("--playbook", default="site.yml", show_default=True,
              help="Playbook in coopctl's playbooks/ (or an absolute path).")
@handle_errors
def deploy(
    inventory_path: Path | None,
    state_dir: Path | None,
    check: bool,
    limit: str | None,
    tags: str | None,
    playbook: str,
) -> None:
    """Deploy the coop's services (playbooks/site.yml) to the hosts of an inventory.

    Fetches on this machine only what the inventory's hosts need (Keycloak for sso_servers,
    Etherpad for pads_servers), prints one line per task result and a recap, and exits
    non-zero with an Error line whenever ansible-playbook fails.
    """
    run_deploy(inventory_path, state_dir=state_dir, check=check, limit=limit, tags=tags,
               playbook=playbook)
