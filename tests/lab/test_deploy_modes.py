"""`coopctl deploy --check` and `--tags ROLE` on the deployed lab, judged by Ansible's own events.

A dry run of a deployed coop must find nothing to do and fail nowhere: a role whose check mode
reports changes (or breaks) hides the real drift an operator runs --check to see. And `--tags
wiki` must run the wiki role's tasks and nothing else (site.yml tags every role's tasks with the
role's name). Both read ansible-runner's job events of the run they start.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

from provisioner.resources import playbooks_dir

pytestmark = pytest.mark.lab

RESULTS = ("runner_on_ok", "runner_on_failed", "runner_on_skipped", "runner_on_unreachable")


def last_run_events(lab) -> list[dict]:
    """The job events of the latest ansible-runner run in the lab's state directory."""
    runs = [p for p in (lab.state_dir / "runner" / "artifacts").iterdir() if p.is_dir()]
    latest = max(runs, key=lambda p: p.stat().st_mtime)
    events = [json.loads(p.read_text(encoding="utf-8"))
              for p in (latest / "job_events").glob("*.json")]
    return sorted(events, key=lambda e: e.get("counter", 0))


def results(events: list[dict]) -> list[dict]:
    """One dict per task result: host, role, task, outcome (changed/ok/failed/...)."""
    found = []
    for event in events:
        if event.get("event") not in RESULTS:
            continue
        data = event.get("event_data", {})
        outcome = event["event"].removeprefix("runner_on_")
        if outcome == "ok" and (data.get("res") or {}).get("changed"):
            outcome = "changed"
        # The role whose task file holds the task (None: site.yml itself). Ansible's own
        # "role" field is not that: it names the last role included for an include task.
        path = data.get("task_path") or ""
        role = path.split("/roles/", 1)[1].split("/", 1)[0] if "/roles/" in path else None
        found.append({"host": data.get("host"), "role": role, "task": data.get("task"),
                      "outcome": outcome})
    return found


def role_task_names(role: str) -> set[str]:
    """Names of the tasks in roles/ROLE/tasks/main.yml that report a result of their own (not
    includes, imports or meta tasks)."""
    tasks = yaml.safe_load((playbooks_dir() / "roles" / role / "tasks" / "main.yml")
                           .read_text(encoding="utf-8"))
    return {t["name"] for t in tasks
            if not any(k.endswith(("include_tasks", "import_tasks", ".meta")) for k in t)}


def test_check_mode_finds_nothing_to_do(lab):
    recap = lab.deploy(check=True)
    found = results(last_run_events(lab))
    noisy = [r for r in found if r["outcome"] in ("changed", "failed", "unreachable")]
    assert noisy == [], json.dumps(noisy, indent=1)
    assert (recap["changed"], recap["failed"], recap["unreachable"], recap["rc"]) == (0, 0, 0, 0)


def test_tags_deploy_one_role_only(lab):
    recap = lab.deploy(tags="wiki")
    assert (recap["changed"], recap["failed"], recap["rc"]) == (0, 0, 0), recap
    found = results(last_run_events(lab))
    roles = Counter(r["role"] for r in found)
    assert set(roles) == {"wiki", None}, roles
    # Besides the role's tasks, only site.yml's includes of the wiki and of the web front
    # (whose variables the wiki's virtual host needs) run, and Ansible's check of the two
    # roles' arguments (which Ansible tags `always`): none of the web role's tasks.
    own = {r["task"] for r in found if r["role"] is None
           and not r["task"].startswith("Validating arguments against arg spec")}
    assert own == {"Wiki (DokuWiki)",
                   "Web front (nginx and the host's certificate) of the wiki, pads and cloud"}
    ran = {(r["host"], r["task"]) for r in found if r["role"] == "wiki"}
    wiki_hosts = {r["host"] for r in found if r["role"] == "wiki"}
    assert wiki_hosts == {"apps"}
    # Every task of the role's main.yml ran (or was skipped by its own condition) on apps.
    missing = {name for name in role_task_names("wiki") if ("apps", name) not in ran}
    assert missing == set()

