"""`coopctl deploy`'s runner: every run uses its own options, never those of an earlier run.

ansible-runner keeps extravars, cmdline and envvars in files under its private data dir and
reads those before its arguments; these tests run a real ansible-playbook (local connection,
no lab needed) twice with different options and look at what the second run did.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from provisioner import ansible as runner

PLAYBOOK = """
- name: Write the word
  hosts: all
  gather_facts: false
  tasks:
    - name: Write the word and the mode
      ansible.builtin.copy:
        content: "{{ word }} check={{ ansible_check_mode }}"
        dest: "{{ out }}"
        mode: "0600"
"""


@pytest.fixture
def local_deploy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """deploy_playbook against localhost; the artifacts (Keycloak, Etherpad) are not needed."""
    monkeypatch.setattr(runner, "prepare_artifacts", lambda echo: None)
    inventory = tmp_path / "hosts.yml"
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": local}}}))
    playbook = tmp_path / "write.yml"
    playbook.write_text(PLAYBOOK)
    out = tmp_path / "out.txt"
    lab_dir = tmp_path / "lab"

    def deploy(word: str, *, check: bool = False) -> runner.Recap:
        return runner.deploy_playbook(
            inventory,
            lab_dir=lab_dir,
            playbook=str(playbook),
            check=check,
            extravars={"word": word, "out": str(out)},
            echo=lambda line: None,
        )

    return deploy, out, lab_dir


def test_a_check_run_does_not_stick_to_the_next_run(local_deploy) -> None:
    deploy, out, _ = local_deploy
    first = deploy("first", check=True)
    assert first.rc == 0 and not out.exists()  # check mode wrote nothing
    second = deploy("second")
    assert second.rc == 0
    assert out.read_text() == "second check=False"


def test_option_files_left_by_an_older_coopctl_are_ignored(local_deploy) -> None:
    deploy, out, lab_dir = local_deploy
    env = lab_dir / "runner" / "env"
    env.mkdir(parents=True)
    (env / "cmdline").write_text("--check")
    (env / "extravars").write_text(json.dumps({"word": "stale", "out": str(out)}))
    recap = deploy("fresh")
    assert recap.rc == 0 and recap.changed == 1
    assert out.read_text() == "fresh check=False"


SYNC_PLAYBOOK = """
- name: A sync batch
  hosts: all
  gather_facts: false
  tasks:
    - name: Each member's item (one fails)
      ansible.builtin.assert:
        that: item.uid != 'bob'
        fail_msg: "bob cannot be done"
        quiet: true
      loop: "{{ coop_sync_test[:3] }}"
      loop_control:
        label: "{{ item.uid }}"
      ignore_errors: true
    - name: How many items arrived
      ansible.builtin.copy:
        content: "{{ coop_sync_test | length }}"
        dest: "{{ out }}"
        mode: "0600"
"""


def test_sync_playbook_reports_failed_items_and_takes_a_batch_too_big_for_argv(
        tmp_path: Path) -> None:
    """10,000 members' items exceed what a command line may hold: they go in a 0600 file."""
    inventory = tmp_path / "hosts.yml"
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": local}}}))
    playbook = tmp_path / "sync.yml"
    playbook.write_text(SYNC_PLAYBOOK)
    out = tmp_path / "count.txt"
    items = [{"uid": "bob", "action": "x"}] + [
        {"uid": f"member{i:05d}", "action": "create", "note": "x" * 200} for i in range(12_000)]
    result = runner.run_sync_playbook(inventory, state_dir=tmp_path / "state",
                                      playbook=str(playbook),
                                      extravars={"coop_sync_test": items, "out": str(out)})
    assert result.ok, result.error
    assert list(result.failed_items) == ["bob"] and "bob cannot" in result.failed_items["bob"]
    assert out.read_text() == str(len(items))
    batch = tmp_path / "state" / "runner-sync" / "coop_sync_test-out" / "batch.json"
    assert batch.stat().st_mode & 0o077 == 0


def test_an_inventory_that_does_not_parse_is_an_error_not_a_success(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ansible-playbook exits 0 with no host when the inventory does not parse."""
    from click.testing import CliRunner

    from provisioner.cli.deploy import deploy

    monkeypatch.setattr(runner, "prepare_artifacts", lambda echo: None)
    broken = tmp_path / "broken.yml"
    broken.write_text("all:\n  hosts: [unclosed\n")
    playbook = tmp_path / "write.yml"
    playbook.write_text(PLAYBOOK)
    with pytest.raises(runner.AnsibleError, match="ran no task on any host"):
        runner.deploy_playbook(broken, lab_dir=tmp_path / "lab", playbook=str(playbook),
                               echo=lambda line: None)
    result = CliRunner().invoke(deploy, ["--inventory", str(broken), "--playbook",
                                         str(playbook), "--state-dir", str(tmp_path / "lab")])
    assert result.exit_code != 0
    assert "Error: ansible-playbook ran no task" in result.output
    assert "Hint: check that the inventory parses" in result.output
    assert "successful" not in result.output
