"""Running the project's playbooks with ansible-runner (deploys and sync), with a compact display.

Production and the lab both use this module: the lab only builds and boots hosts.

ansible-runner gives us every Ansible event as a dict while the play runs, so the display is one
line per task result (``changed  dir  openldap : Install slapd``) instead of Ansible's verbose
default, and the recap comes back as data: callers (the test fixture, the bench) assert on it,
e.g. that a second run changed nothing. Ansible's own state (``ANSIBLE_HOME``, temp files, SSH
control sockets) is kept in the lab's state directory so nothing lands in ``~/.ansible`` and
``lab down`` can close every SSH master.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.errors import CoopError

REPO_DIR = Path(__file__).resolve().parent.parent
PLAYBOOK_DIR = REPO_DIR / "playbooks"


class AnsibleError(CoopError):
    """A playbook could not run (missing playbook or inventory, Ansible failed to start)."""
RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
}
STAT_KEYS = {
    "ok": "ok",
    "changed": "changed",
    "failures": "failed",
    "dark": "unreachable",
    "skipped": "skipped",
    "rescued": "rescued",
    "ignored": "ignored",
}


@dataclass
class Recap:
    """Per-host counts from Ansible's final stats, plus the run's outcome."""

    hosts: dict[str, dict[str, int]] = field(default_factory=dict)
    rc: int | None = None
    status: str = ""
    seconds: float = 0.0

    def total(self, key: str) -> int:
        return sum(counts.get(key, 0) for counts in self.hosts.values())

    @property
    def changed(self) -> int:
        return self.total("changed")

    @property
    def failed(self) -> int:
        return self.total("failed")

    @property
    def unreachable(self) -> int:
        return self.total("unreachable")

    def as_dict(self) -> dict:
        return {
            "hosts": self.hosts,
            "changed": self.changed,
            "failed": self.failed,
            "unreachable": self.unreachable,
            "rc": self.rc,
            "status": self.status,
            "seconds": round(self.seconds, 1),
        }


def ansible_env(lab_dir: Path) -> dict[str, str]:
    """Environment for ansible-playbook: its state in the lab dir, our roles, no colours."""
    home = lab_dir / "ansible"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    (lab_dir / "cp").mkdir(mode=0o700, exist_ok=True)
    env = {
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(lab_dir / "cp"),
        "ANSIBLE_ROLES_PATH": str(PLAYBOOK_DIR / "roles"),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "COOPCTL_LAB_DIR": str(lab_dir),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    cfg = PLAYBOOK_DIR / "ansible.cfg"
    if cfg.exists():
        env["ANSIBLE_CONFIG"] = str(cfg)
    if "COOPCTL_ARTIFACTS_DIR" in os.environ:
        env["COOPCTL_ARTIFACTS_DIR"] = os.environ["COOPCTL_ARTIFACTS_DIR"]
    return env


class ProgressPrinter:
    """Turns ansible-runner events into one short line each."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.started = time.monotonic()

    def __call__(self, event: dict) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        stamp = f"{time.monotonic() - self.started:6.1f}s"
        if kind == "playbook_on_play_start":
            self.echo(f"{stamp} PLAY {data.get('play', '')}")
        elif kind in RESULT_EVENTS:
            res = data.get("res") or {}
            word = RESULT_EVENTS[kind]
            if word == "ok" and res.get("changed"):
                word = "changed"
            line = f"{stamp}   {word:<11} {data.get('host', '?'):<6} {data.get('task', '')}"
            if word in ("failed", "unreachable") and not data.get("ignore_errors"):
                msg = res.get("msg") or res.get("stderr") or res.get("reason") or ""
                line += f"\n{'':17}{str(msg).strip()[:600]}"
            elif word == "failed":
                line += " (ignored)"
            self.echo(line)
        return True  # keep the event in ansible-runner's artifacts


def prepare_artifacts(echo: Callable[[str], None] = print) -> None:
    """Fetch, on the controller, what the roles copy to the hosts (hosts never download them).

    Each fetch goes through the registry's own client (Maven, npm) and is skipped when the
    artifact is already in $COOPCTL_ARTIFACTS_DIR.
    """
    from provisioner.artifacts import build_nextcloud_double, fetch_etherpad, fetch_keycloak

    started = time.monotonic()
    for fetch in (fetch_keycloak, fetch_etherpad, build_nextcloud_double):
        path = fetch()
        echo(f"artifact ready: {path}")
    echo(f"artifacts ready in {time.monotonic() - started:.1f} s")


def _recap(result: Any, started: float) -> Recap:
    """The Recap of an ansible-runner run begun at `started` (time.monotonic())."""
    recap = Recap(rc=result.rc, status=result.status, seconds=time.monotonic() - started)
    for key, name in STAT_KEYS.items():
        for host, count in ((result.stats or {}).get(key) or {}).items():
            recap.hosts.setdefault(host, {v: 0 for v in STAT_KEYS.values()})[name] = count
    return recap


def deploy_playbook(
    inventory: Path,
    *,
    lab_dir: Path,
    check: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    playbook: str = "site.yml",
    echo: Callable[[str], None] = print,
    extravars: dict | None = None,
) -> Recap:
    """Run ``playbooks/PLAYBOOK`` against ``inventory``; print progress; return the recap."""
    import ansible_runner  # imported here: the lab's other commands do not need it

    path = Path(playbook) if Path(playbook).is_absolute() else PLAYBOOK_DIR / playbook
    if not path.exists():
        raise AnsibleError(f"no playbook {path}", "reinstall coopctl: its playbooks ship with it")
    if not Path(inventory).exists():
        raise AnsibleError(f"no inventory {inventory}",
                           "run `coopctl lab up` first, or pass --inventory")
    prepare_artifacts(echo)
    private = lab_dir / "runner"
    private.mkdir(parents=True, exist_ok=True)
    # ansible-runner reads env/ (envvars, extravars, cmdline) before its arguments, and by
    # default writes them there only when absent: a file left by an earlier run (say, with
    # --check) would silently win over this run's own. Older coopctl left such files.
    shutil.rmtree(private / "env", ignore_errors=True)
    cmdline = "--check --diff" if check else None
    started = time.monotonic()
    echo(
        f"deploying {path.relative_to(REPO_DIR) if path.is_relative_to(REPO_DIR) else path} "
        f"to {inventory}" + (f" (limit {limit})" if limit else "") + (" --check" if check else "")
    )
    result = ansible_runner.run(
        private_data_dir=str(private),
        project_dir=str(PLAYBOOK_DIR),
        playbook=str(path),
        inventory=str(Path(inventory).resolve()),
        envvars=ansible_env(lab_dir),
        limit=limit,
        tags=tags,
        cmdline=cmdline,
        extravars=extravars,
        quiet=True,
        event_handler=ProgressPrinter(echo),
        rotate_artifacts=5,
        suppress_env_files=True,
    )
    recap = _recap(result, started)
    for host in sorted(recap.hosts):
        counts = recap.hosts[host]
        echo(
            f"RECAP {host:<6} ok={counts['ok']} changed={counts['changed']} "
            f"failed={counts['failed']} unreachable={counts['unreachable']} "
            f"skipped={counts['skipped']}"
        )
    if not recap.hosts:
        # An inventory that does not parse, or names no host, leaves ansible-playbook with
        # nothing to do, and it says so with rc 0: that is no deploy.
        tail = "".join(result.stdout.readlines()[-15:]).strip() if result.stdout else ""
        raise AnsibleError(
            f"ansible-playbook ran no task on any host (rc {result.rc}) with the inventory "
            f"{inventory}: {tail[-600:] or 'no output'}",
            "check that the inventory parses and lists the coop's hosts "
            "(ansible-inventory -i FILE --graph)")
    echo(
        f"deploy {result.status} in {recap.seconds:.1f} s: changed {recap.changed}, "
        f"failed {recap.failed}, unreachable {recap.unreachable}"
    )
    return recap


@dataclass
class PlaybookResult:
    """A sync playbook's outcome: the recap, and which loop items failed (by their label).

    Sync task files loop over members with ``loop_control: label: "{{ item.uid }}"``, so a
    failed item names its member and the sync reports that member alone.
    """

    recap: Recap
    failed_items: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # the run as a whole failed (unreachable host, syntax error...)

    @property
    def ok(self) -> bool:
        return self.error is None


class ItemCollector:
    """Keeps the label and message of every failed loop item (and still prints progress)."""

    def __init__(self, echo: Callable[[str], None] | None) -> None:
        self.failed: dict[str, str] = {}
        self.unreachable: list[str] = []
        self.task_failures: list[str] = []
        self.printer = ProgressPrinter(echo) if echo else None

    def __call__(self, event: dict) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        res = data.get("res") or {}
        if kind == "runner_item_on_failed":
            label = str(res.get("_ansible_item_label") or res.get("item", {}).get("uid", "?"))
            self.failed[label] = _message(res)
        elif kind == "runner_on_unreachable":
            self.unreachable.append(f"{data.get('host', '?')}: {_message(res)}")
        elif kind == "runner_on_failed" and not data.get("ignore_errors") and "results" not in res:
            self.task_failures.append(f"{data.get('host', '?')} {data.get('task', '')}: "
                                      f"{_message(res)}")
        if self.printer:
            self.printer(event)
        return True


def _message(res: dict) -> str:
    msg = res.get("msg") or res.get("stderr") or res.get("reason") or "failed"
    return str(msg).strip().splitlines()[-1][:300] if str(msg).strip() else "failed"


def run_sync_playbook(
    inventory: Path,
    *,
    state_dir: Path,
    playbook: str = "sync.yml",
    extravars: dict | None = None,
    echo: Callable[[str], None] | None = None,
) -> PlaybookResult:
    """Run a sync playbook once for a whole batch of members; never raises for a failed item.

    Unlike a deploy, no artifact is fetched. `extravars` travel in ansible-runner's private
    data directory (mode 0700 under `state_dir`), never on a command line.
    """
    import ansible_runner

    path = PLAYBOOK_DIR / playbook
    if not path.exists():
        raise AnsibleError(f"no playbook {path}", "reinstall coopctl: its playbooks ship with it")
    if not Path(inventory).exists():
        raise AnsibleError(f"no Ansible inventory at {inventory}",
                           "set `inventory` in the configuration to the coop's inventory")
    # One private directory per service (named after its extra vars): services run their
    # playbooks at the same time, and ansible-runner keeps state in this directory.
    private = state_dir / "runner-sync" / ("-".join(sorted(extravars or {})) or "none")
    private.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.rmtree(private / "env", ignore_errors=True)
    # The batch goes in a file (mode 0600), never on ansible-playbook's command line: 10,000
    # members' items are longer than the kernel allows for arguments.
    batch = private / "batch.json"
    batch.unlink(missing_ok=True)
    fd = os.open(batch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(extravars or {}, out)
    collector = ItemCollector(echo)
    started = time.monotonic()
    result = ansible_runner.run(
        private_data_dir=str(private),
        project_dir=str(PLAYBOOK_DIR),
        playbook=str(path),
        inventory=str(Path(inventory).resolve()),
        envvars=ansible_env(state_dir),
        cmdline=f"-e @{batch}",
        quiet=True,
        event_handler=collector,
        rotate_artifacts=3,
        suppress_env_files=True,
    )
    recap = _recap(result, started)
    error = None
    if collector.unreachable:
        error = "host unreachable: " + "; ".join(collector.unreachable)
    elif collector.task_failures:
        error = "; ".join(collector.task_failures)
    elif result.rc and not collector.failed:
        tail = "".join(result.stdout.readlines()[-5:]).strip() if result.stdout else ""
        error = f"ansible-playbook failed (rc {result.rc}) {tail[-300:]}"
    return PlaybookResult(recap=recap, failed_items=collector.failed, error=error)
