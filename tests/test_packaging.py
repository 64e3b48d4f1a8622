"""coopctl installed from its wheel works away from the source tree.

The wheel is built from this checkout and installed with pip into a fresh virtualenv in a
temporary directory (tests/installed_wheel.py, one build per session); every command runs from
another empty directory, with nothing in the environment pointing at the checkout. What coopctl
reads at run time (schemas, playbooks with ansible.cfg, roles and their modules, inventories,
the demo's CSV, the Nextcloud double's sources, welcome templates) must then come from the
installed package. The lab part (a deploy by the installed coopctl) is in
tests/lab/test_example_inventory.py, which uses the same installation.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

from provisioner import resources
from tests.installed_wheel import REPO, Installed, installed_coopctl

PROBE = """
import json, sys
from provisioner import resources, ansible, artifacts, bootstrap, config, localslapd, schemafile
from provisioner.cli import demo
from provisioner.lab import config as lab_config
from provisioner.services import mail
print(json.dumps({
    "package": resources.PACKAGE_DIR.as_posix(),
    "root": resources.root().as_posix(),
    "installed": resources.installed(),
    "paths": {
        "ansible.PLAYBOOK_DIR": ansible.PLAYBOOK_DIR.as_posix(),
        "config.SCHEMA_FILE": config.SCHEMA_FILE.as_posix(),
        "bootstrap.SCHEMAS": bootstrap.SCHEMAS.as_posix(),
        "localslapd.SCHEMA_DIR": localslapd.SCHEMA_DIR.as_posix(),
        "schemafile.LDIF": schemafile.LDIF.as_posix(),
        "artifacts.NEXTCLOUD_DOUBLE_SOURCE": artifacts.NEXTCLOUD_DOUBLE_SOURCE.as_posix(),
        "demo.SAMPLE": demo.SAMPLE.as_posix(),
        "lab.config.REPO_DIR": lab_config.REPO_DIR.as_posix(),
        "mail.BUILTIN_TEMPLATES": mail.BUILTIN_TEMPLATES.as_posix(),
    },
}))
"""


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return installed_coopctl(tmp_path_factory.getbasetemp() / "installed-coopctl")


def files_under(top: Path) -> set[str]:
    """Relative paths of the files under `top`, byte-compiled caches left out (pip makes them)."""
    return {
        str(path.relative_to(top)) for path in top.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }  # fmt: skip


def test_pyproject_ships_every_path_coopctl_reads() -> None:
    """pyproject's force-include table and provisioner.resources.SHIPPED name the same trees,
    each at the same relative path under provisioner/_data/."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    forced = config["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert forced == {path: f"provisioner/_data/{path}" for path in resources.SHIPPED}
    for path in resources.SHIPPED:
        assert (REPO / path).exists(), path
    # In the checkout, coopctl reads the checkout itself.
    assert resources.root() == REPO and not resources.installed()


def test_installed_coopctl_answers_from_anywhere(installed: Installed) -> None:
    result = installed.run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("deploy", "demo", "lab", "member", "sync", "init"):
        assert f"\n  {command} " in result.stdout, command
    deploy = installed.run("deploy", "--help")
    assert deploy.returncode == 0 and "--inventory" in deploy.stdout, deploy.stderr


def test_installed_coopctl_reads_its_data_from_the_installed_package(
        installed: Installed) -> None:
    result = installed.run(installed.python, "-c", PROBE)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    site = installed.venv.resolve()
    package = Path(found["package"])
    assert site in package.parents, f"provisioner imported from {package}, not the venv"
    assert found["installed"] and Path(found["root"]) == package / "_data"
    for name, value in found["paths"].items():
        path = Path(value)
        assert package in path.parents, f"{name} = {path}: outside the installed package"
        assert path.exists(), f"{name} = {path} does not exist"
    # Every file of the shipped trees is there, as real files Ansible can read.
    data = package / "_data"
    for shipped in resources.SHIPPED:
        source, copy = REPO / shipped, data / shipped
        if source.is_dir():
            assert files_under(copy) == files_under(source), shipped
        else:
            assert copy.read_bytes() == source.read_bytes(), shipped
    assert (data / "playbooks" / "ansible.cfg").is_file()
    assert list((data / "playbooks" / "roles").glob("*/library/*.py")), "no role modules"
    assert not (data / "inventories" / "lab" / "hosts.yml").exists()  # written by lab up only


def test_installed_demo_runs_on_a_private_slapd(installed: Installed) -> None:
    """`coopctl demo --local` from the wheel: init loads the installed schema and access
    rules, and the import reads the installed sample CSV."""
    workdir = installed.workdir / "demo"
    result = installed.run("demo", "--local", "--workdir", str(workdir), "--fresh", "--down",
                           timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    imports = [line for line in out.splitlines() if line.startswith("$ coopctl member import ")]
    assert imports, out[-2000:]
    sample = Path(imports[0].split()[4])
    assert installed.venv.resolve() in sample.resolve().parents, sample
    assert "Dry run:" in out
    assert "No changes: the directory already says so." in out  # the third import
    assert not _alive(workdir), "--down left the private slapd running"


def _alive(workdir: Path) -> bool:
    try:
        pid = int((workdir / "slapd" / "slapd.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def test_installed_deploy_needs_neither_lab_nor_checkout(
        installed: Installed, tmp_path: Path) -> None:
    """`coopctl deploy -i` of an inventory with no service group: site.yml from the installed
    package runs (every role skipped), nothing is fetched, Ansible's state goes to
    $COOPCTL_STATE_DIR and nothing to the user's ~/.ansible."""
    inventory = tmp_path / "coop" / "hosts.yml"
    inventory.parent.mkdir()
    inventory.write_text(
        "all:\n  hosts:\n    controller:\n      ansible_connection: local\n"
        "      ansible_python_interpreter: /usr/bin/python3\n")
    state, home = tmp_path / "state", tmp_path / "home"
    home.mkdir()
    result = installed.run("deploy", "-i", str(inventory), timeout=300,
                           env=installed.env(COOPCTL_STATE_DIR=str(state), HOME=str(home)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "artifacts this inventory needs: none" in result.stdout
    assert "artifact ready" not in result.stdout
    assert "deploy successful" in result.stdout
    assert "changed=0 failed=0 unreachable=0" in result.stdout  # every role skipped
    assert (state / "runner" / "artifacts").is_dir()
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    assert not (home / ".ansible").exists()
