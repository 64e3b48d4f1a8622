"""Every role that playbooks/site.yml includes carries its name as a tag, tasks included.

`coopctl deploy --tags mail` must deploy mail and only mail. site.yml includes its roles
dynamically (include_role), whose own `tags` select the include alone: only `apply: tags`
reaches the role's tasks. A role added later without both would silently do nothing under
--tags, or run under every tag.
"""

from __future__ import annotations

import yaml

from provisioner.resources import playbooks_dir


def _includes(playbook: str) -> list[tuple[dict, dict]]:
    plays = yaml.safe_load((playbooks_dir() / playbook).read_text(encoding="utf-8"))
    return [(play, task) for play in plays for task in play.get("tasks", [])
            if "ansible.builtin.include_role" in task]


def test_site_yml_tags_each_role_and_its_tasks_with_its_name() -> None:
    includes = _includes("site.yml")
    assert len(includes) >= 7
    for _play, task in includes:
        role = task["ansible.builtin.include_role"]["name"]
        assert role in task.get("tags", []), f"the include of {role} lacks its tag"
        applied = task["ansible.builtin.include_role"].get("apply", {}).get("tags", [])
        assert role in applied, f"the tasks of {role} lack its tag (apply: tags)"


def test_site_yml_runs_no_untagged_task() -> None:
    """A task without tags would run under every --tags."""
    plays = yaml.safe_load((playbooks_dir() / "site.yml").read_text(encoding="utf-8"))
    for play in plays:
        for task in play.get("tasks", []):
            assert task.get("tags"), task.get("name")


def test_sync_yml_plays_carry_their_service_tag() -> None:
    for play, task in _includes("sync.yml"):
        role = task["ansible.builtin.include_role"]["name"]
        assert role in play.get("tags", []), f"the sync play of {role} lacks its tag"
