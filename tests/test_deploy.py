"""`coopctl deploy -i INVENTORY` without a lab: state directory, artifacts, errors.

Real ansible-playbook runs against this machine over the local connection with small
playbooks of the test's own (never the coop's roles); the inventories are read by Ansible
itself, as the deploy does.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from provisioner import ansible as runner
from provisioner.cli.deploy import deploy
from provisioner.resources import inventories_dir

HARMLESS = """
- name: Say hello
  hosts: all
  gather_facts: false
  tasks:
    - name: Hello
      ansible.builtin.debug:
        msg: hello
"""
FAILING = """
- name: Fail on purpose
  hosts: all
  gather_facts: false
  tasks:
    - name: A task that fails
      ansible.builtin.fail:
        msg: failed on purpose
"""
LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}


def write_inventory(path: Path, hosts: dict, children: dict | None = None,
                    group_vars: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"all": {"hosts": hosts, "children": children or {}}}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    for group, values in (group_vars or {}).items():
        (path.parent / "group_vars").mkdir(exist_ok=True)
        (path.parent / "group_vars" / f"{group}.yml").write_text(yaml.safe_dump(values))
    return path


def plan_of(inventory: Path, state: Path, limit: str | None = None) -> runner.ArtifactPlan:
    state.mkdir(parents=True, exist_ok=True)
    return runner.plan_artifacts(runner.read_inventory(inventory, runner.ansible_env(state),
                                                       limit))


def invoke(tmp_path: Path, *args: str, env: dict | None = None):
    playbook = tmp_path / "play.yml"
    if not playbook.exists():
        playbook.write_text(HARMLESS)
    return CliRunner().invoke(deploy, [*args], env=env, catch_exceptions=False)


def test_default_state_dir_is_one_per_inventory(tmp_path: Path) -> None:
    one = write_inventory(tmp_path / "a" / "coop" / "hosts.yml", {"h": LOCAL})
    two = write_inventory(tmp_path / "b" / "coop" / "hosts.yml", {"h": LOCAL})
    named = write_inventory(tmp_path / "ruches.yml", {"h": LOCAL})
    first, second = runner.deploy_state_dir(one), runner.deploy_state_dir(two)
    assert first.parent == second.parent == Path("/var/lib/coopctl/deploy")
    assert first.name.startswith("coop-") and second.name.startswith("coop-")
    assert first != second
    assert runner.deploy_state_dir(one) == first  # stable from one run to the next
    assert runner.deploy_state_dir(named).name.startswith("ruches-")


def test_the_example_inventory_needs_keycloak_and_etherpad_but_no_double(tmp_path: Path) -> None:
    plan = plan_of(inventories_dir() / "example" / "hosts.yml", tmp_path / "state")
    assert plan.keycloak == ("26.7.3",) and plan.etherpad == ("1.8.14",)
    assert not plan.nextcloud_double  # production runs the real Nextcloud
    assert plan.directory == Path("/var/cache/coopctl/artifacts")
    # --limit narrows it to what the chosen hosts need.
    assert not plan_of(inventories_dir() / "example" / "hosts.yml", tmp_path / "s", "mail")
    only_dir = plan_of(inventories_dir() / "example" / "hosts.yml", tmp_path / "s", "dir")
    assert only_dir.keycloak and not only_dir.etherpad
    # So do --tags (each role's tasks carry its name): `--tags mail,wiki` needs nothing.
    view = runner.read_inventory(inventories_dir() / "example" / "hosts.yml",
                                 runner.ansible_env(tmp_path / "s"))
    assert not runner.plan_artifacts(view, "mail,wiki")
    assert runner.plan_artifacts(view, "pads").etherpad == ("1.8.14",)
    assert runner.plan_artifacts(view, "pads").keycloak == ()


def test_only_the_lab_asks_for_the_nextcloud_double(tmp_path: Path) -> None:
    """The lab's group_vars say cloud_flavour: double. A host that downloads Keycloak itself
    (sso_keycloak_download_url) needs no zip from the controller, nor does one given the
    coop's own Etherpad release (pads_etherpad_tarball)."""
    lab = tmp_path / "lab"
    shutil.copytree(inventories_dir() / "lab" / "group_vars", lab / "group_vars")
    hosts = {h: {"ansible_host": f"10.77.250.{i}", "coop_lab_bridge_ip": "10.77.250.1"}
             for i, h in enumerate(("dir", "mail", "apps"), start=10)}
    children = {group: {"hosts": {host: None}} for group, host in (
        ("sso_servers", "dir"), ("mail_servers", "mail"), ("pads_servers", "apps"),
        ("cloud_servers", "apps"))}
    inventory = write_inventory(lab / "hosts.yml", hosts, children)
    plan = plan_of(inventory, tmp_path / "state")
    assert plan.nextcloud_double and plan.keycloak and plan.etherpad
    (lab / "host_vars").mkdir()
    (lab / "host_vars" / "dir.yml").write_text(
        "sso_keycloak_download_url: https://releases.example/keycloak.zip\n")
    (lab / "host_vars" / "apps.yml").write_text(
        "pads_etherpad_tarball: /srv/coop/etherpad-2.3.2.tar.gz\n")
    plan = plan_of(inventory, tmp_path / "state")
    assert plan.keycloak == () and plan.etherpad == () and plan.nextcloud_double


def test_fetches_only_what_the_inventory_needs(tmp_path: Path) -> None:
    """A cloud host with the double: the double is packed into the inventory's
    coop_artifacts_dir, and neither Keycloak nor Etherpad is fetched."""
    artifacts = tmp_path / "artifacts"
    inventory = write_inventory(
        tmp_path / "coop" / "hosts.yml", {"cloud": LOCAL},
        {"cloud_servers": {"hosts": {"cloud": None}}},
        {"all": {"coop_artifacts_dir": str(artifacts)},
         "cloud_servers": {"cloud_flavour": "double"}})
    result = invoke(tmp_path, "-i", str(inventory), "--playbook", str(tmp_path / "play.yml"),
                    "--state-dir", str(tmp_path / "state"))
    assert result.exit_code == 0, result.output
    assert "artifacts this inventory needs: the Nextcloud contract double" in result.output
    assert sorted(p.name for p in artifacts.iterdir()) == ["nextcloud-double.pyz"]
    assert "deploy successful" in result.output


def test_a_needed_artifact_with_nowhere_to_go_stops_before_anything_runs(tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path / "coop" / "hosts.yml", {"apps": LOCAL},
                                {"pads_servers": {"hosts": {"apps": None}}})
    result = invoke(tmp_path, "-i", str(inventory), "--playbook", str(tmp_path / "play.yml"),
                    "--state-dir", str(tmp_path / "state"))
    assert result.exit_code != 0
    assert "Error: the inventory" in result.output and "coop_artifacts_dir" in result.output
    assert "Hint: set coop_artifacts_dir in group_vars/all.yml" in result.output
    assert "deploying" not in result.output and "artifact ready" not in result.output


def test_a_failed_task_is_an_error_with_a_hint_and_exit_code_2(tmp_path: Path) -> None:
    """Also: $COOPCTL_STATE_DIR chooses where Ansible's state goes."""
    inventory = write_inventory(tmp_path / "coop" / "hosts.yml", {"controller": LOCAL})
    failing = tmp_path / "fail.yml"
    failing.write_text(FAILING)
    state = tmp_path / "state-from-env"
    result = invoke(tmp_path, "-i", str(inventory), "--playbook", str(failing),
                    env={"COOPCTL_STATE_DIR": str(state)})
    assert result.exit_code == 2, result.output
    assert "failed on purpose" in result.output  # the task's own message, as it happened
    assert f"Error: deploy to {inventory} failed: a task failed on controller" in result.output
    assert "Hint: the failing task and Ansible's message are printed above" in result.output
    assert "successful" not in result.output
    assert (state / "runner" / "artifacts").is_dir()


def test_an_unreachable_host_is_an_error_with_a_hint(tmp_path: Path) -> None:
    ghost = {"ansible_host": "127.0.0.1", "ansible_port": 9, "ansible_user": "nobody",
             "ansible_ssh_common_args": "-o ConnectTimeout=5 -o StrictHostKeyChecking=no "
                                        "-o UserKnownHostsFile=/dev/null"}
    inventory = write_inventory(tmp_path / "coop" / "hosts.yml", {"ghost": ghost})
    hello = tmp_path / "hello.yml"
    hello.write_text(HARMLESS.replace("ansible.builtin.debug:\n        msg: hello",
                                      "ansible.builtin.ping:"))
    result = invoke(tmp_path, "-i", str(inventory), "--playbook", str(hello),
                    "--state-dir", str(tmp_path / "state"))
    assert result.exit_code == 2, result.output
    assert "Error: deploy to" in result.output and "unreachable: ghost" in result.output
    assert "Hint: check that each host is up" in result.output
    assert "successful" not in result.output


def test_no_inventory_is_an_error_with_a_hint(tmp_path: Path) -> None:
    result = CliRunner().invoke(deploy, [])
    assert result.exit_code != 0
    assert "Error: no inventory given" in result.output
    assert "Hint: pass --inventory" in result.output
    result = CliRunner().invoke(deploy, ["-i", str(tmp_path / "missing.yml")])
    assert result.exit_code != 0 and "Error: no inventory at" in result.output



def test_lab_deploy_of_a_lab_that_is_not_up_is_an_error_with_a_hint(tmp_path: Path) -> None:
    from provisioner.lab.cli import lab

    result = CliRunner().invoke(lab, ["deploy", "--name", "nolab", "--state-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "Error: lab 'nolab' has no inventory at" in result.output
    assert "Hint: run `coopctl lab up --name nolab` first" in result.output
