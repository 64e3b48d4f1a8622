"""Running the project's playbooks with ansible-runner (deploys and sync), with a compact display.

Production (``coopctl deploy -i INVENTORY``) and the lab (``coopctl lab up``, ``coopctl lab
deploy``) both use this module: the lab only builds and boots hosts.

ansible-runner gives us every Ansible event as a dict while the play runs, so the display is one
line per task result (``changed  dir  openldap : Install slapd``) instead of Ansible's verbose
default, and the recap comes back as data: callers (the test fixture, the bench) assert on it,
e.g. that a second run changed nothing.

Ansible's own state (``ANSIBLE_HOME``, temp files, SSH control sockets, the fact cache, and
ansible-runner's private data directory with the job artifacts of the last runs) lives in a
*state directory* of coopctl's, never in ``~/.ansible``: for production one per inventory under
``/var/lib/coopctl/deploy/`` (``--state-dir`` or ``$COOPCTL_STATE_DIR`` choose another), for a
lab the lab's own directory, so that ``lab down`` can close every SSH master.

Before a deploy, coopctl reads the inventory with Ansible's own inventory and variable code (in
a child process, under the playbook's environment) to learn what its hosts need from the
controller: Keycloak's zip for ``sso_servers``, Etherpad for ``pads_servers``, the Nextcloud
contract double only for a cloud host whose ``cloud_flavour`` is ``double`` (the lab), and
where the roles read them (``coop_artifacts_dir``). It fetches those and nothing else.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner import resources
from provisioner.errors import CoopError

PLAYBOOK_DIR = resources.playbooks_dir()
# Production state directories: DEFAULT_STATE_ROOT/<inventory name>-<hash of its path>.
DEFAULT_STATE_ROOT = Path("/var/lib/coopctl/deploy")


class AnsibleError(CoopError):
    """A playbook could not run (missing playbook or inventory, Ansible failed to start)."""


class DeployFailed(CoopError):
    """ansible-playbook ran and failed: a task failed, a host was unreachable, or it exited
    non-zero. Exit code 2, as before this error existed."""

    exit_code = 2


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
    # The last lines ansible-playbook printed: what an error message quotes when no task failed.
    output_tail: str = ""

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

    @property
    def ok(self) -> bool:
        """True when ansible-playbook succeeded: rc 0, no failed task, no unreachable host."""
        return self.rc == 0 and not self.failed and not self.unreachable

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


def deploy_state_dir(inventory: Path) -> Path:
    """The default state directory of ``coopctl deploy`` for this inventory.

    ``/var/lib/coopctl/deploy/NAME-HASH``: NAME is the inventory's directory for
    ``.../NAME/hosts.yml`` (else the file's or directory's own name), HASH 8 hex digits of the
    SHA-256 of its absolute path, so that two coops whose inventories are both called
    ``inventory/hosts.yml`` never share ansible-runner's directory.
    """
    path = Path(inventory).expanduser().resolve()
    name = path.parent.name if path.is_file() and path.stem in ("hosts", "inventory") else path.stem
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "inventory"
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    return DEFAULT_STATE_ROOT / f"{slug}-{digest}"


def ansible_env(state_dir: Path, *, lab_dir: Path | None = None) -> dict[str, str]:
    """Environment for ansible-playbook: its state in `state_dir`, our roles, no colours.

    `lab_dir` (a lab's directory) is passed on as $COOPCTL_LAB_DIR, which the lab's
    group_vars read; a production run has none.
    """
    home = state_dir / "ansible"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    (state_dir / "cp").mkdir(mode=0o700, exist_ok=True)
    env = {
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(state_dir / "cp"),
        # Where a fact cache goes if one is turned on (the roles gather no facts today).
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(state_dir / "facts"),
        "ANSIBLE_ROLES_PATH": str(PLAYBOOK_DIR / "roles"),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    if lab_dir is not None:
        env["COOPCTL_LAB_DIR"] = str(lab_dir)
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


# -- what the inventory needs from the controller ------------------------------------------------

# The variables coopctl reads from the inventory, per host, templated as the roles see them.
PROBE_VARS = (
    "coop_artifacts_dir",
    "cloud_flavour",
    "sso_keycloak_version",
    "sso_keycloak_download_url",
    "pads_version",
    "pads_etherpad_tarball",
)
# Runs in a child process (Ansible configures itself from the environment when imported):
# prints one JSON line, {host: {"groups": [...], "vars": {...}, "errors": {...}}}.
_PROBE = r"""
import json, sys
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible.vars.manager import VariableManager

try:  # ansible-core >= 2.15: lookups (env, password...) need the plugin loader set up
    from ansible.plugins.loader import init_plugin_loader
    init_plugin_loader()
except ImportError:
    pass
source, limit, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
loader = DataLoader()
inventory = InventoryManager(loader=loader, sources=[source])
if limit:
    inventory.subset(limit)
variables = VariableManager(loader=loader, inventory=inventory)
hosts = {}
for host in inventory.get_hosts("all"):
    values = variables.get_vars(host=host, include_hostvars=False)
    templar = Templar(loader=loader, variables=values)
    found, errors = {}, {}
    for name in names:
        if name in values:
            try:
                found[name] = json.loads(json.dumps(templar.template(values[name]), default=str))
            except Exception as exc:
                errors[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    hosts[host.name] = {"groups": sorted(g.name for g in host.get_groups()), "vars": found,
                        "errors": errors}
print("COOPCTL-INVENTORY " + json.dumps(hosts))
"""


@dataclass(frozen=True)
class InventoryView:
    """The hosts of an inventory (after --limit): their groups and the variables coopctl reads."""

    source: Path
    hosts: dict[str, dict[str, Any]]

    def value(self, host: str, name: str, default: Any = None) -> Any:
        """`name` for `host` as the roles would see it; an Error if it cannot be evaluated."""
        info = self.hosts[host]
        if name in info.get("errors", {}):
            raise AnsibleError(
                f"the inventory {self.source} sets {name} for host {host} to something Ansible "
                f"cannot evaluate: {info['errors'][name]}",
                f"fix {name} (see it with: ansible-inventory -i {self.source} --host {host})")
        return info["vars"].get(name, default)

    def in_group(self, group: str) -> list[str]:
        return [host for host, info in self.hosts.items() if group in info["groups"]]


def read_inventory(inventory: Path, env: dict[str, str], limit: str | None = None) -> InventoryView:
    """The inventory's hosts and variables, read by Ansible itself in a child process."""
    home = Path(env["ANSIBLE_HOME"])
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(Path(inventory).resolve()), limit or "",
         ",".join(PROBE_VARS)],
        env=env, cwd=home, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    line = next((x for x in reversed(result.stdout.splitlines())
                 if x.startswith("COOPCTL-INVENTORY ")), None)
    if result.returncode != 0 or line is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise AnsibleError(
            f"Ansible could not read the inventory {inventory}: {' '.join(tail) or 'no output'}",
            f"check it with: ansible-inventory -i {inventory} --graph")
    return InventoryView(Path(inventory), json.loads(line.split(" ", 1)[1]))


@dataclass(frozen=True)
class ArtifactPlan:
    """What the inventory's hosts need from the controller, and where their roles read it."""

    directory: Path | None = None  # coop_artifacts_dir; None: $COOPCTL_ARTIFACTS_DIR or default
    keycloak: tuple[str, ...] = ()  # keycloak-quarkus-dist versions (Maven)
    etherpad: tuple[str, ...] = ()  # ep_etherpad-lite versions (npm)
    nextcloud_double: bool = False  # the lab's contract double, packed from this package

    def __bool__(self) -> bool:
        return bool(self.keycloak or self.etherpad or self.nextcloud_double)

    def describe(self) -> str:
        parts = [f"Keycloak {v}" for v in self.keycloak] + [f"Etherpad {v}" for v in self.etherpad]
        if self.nextcloud_double:
            parts.append("the Nextcloud contract double")
        return ", ".join(parts) or "none"


def plan_artifacts(view: InventoryView, tags: str | None = None) -> ArtifactPlan:
    """The artifacts `view`'s hosts need: Keycloak for sso_servers (unless the host downloads
    it itself: sso_keycloak_download_url), Etherpad for pads_servers (unless the coop gives its
    own release: pads_etherpad_tarball), the Nextcloud double
    for a cloud host with cloud_flavour "double". Versions are the inventory's, else the
    roles' defaults (the same as provisioner.artifacts'). With `tags` (every role's tasks
    carry the role's name), only the roles those tags run count."""
    from provisioner.artifacts import ETHERPAD_VERSION, KEYCLOAK_VERSION

    chosen = {tag.strip() for tag in (tags or "").split(",") if tag.strip()}

    def runs(role: str) -> bool:
        return not chosen or bool(chosen & {role, "all"})

    keycloak: set[str] = set()
    etherpad: set[str] = set()
    double = False
    needy: list[str] = []
    for host in view.hosts:
        groups = view.hosts[host]["groups"]
        wants = False
        if ("sso_servers" in groups and runs("sso")
                and not view.value(host, "sso_keycloak_download_url")):
            keycloak.add(str(view.value(host, "sso_keycloak_version") or KEYCLOAK_VERSION))
            wants = True
        if ("pads_servers" in groups and runs("pads")
                and not view.value(host, "pads_etherpad_tarball")):
            etherpad.add(str(view.value(host, "pads_version") or ETHERPAD_VERSION))
            wants = True
        if ("cloud_servers" in groups and runs("cloud")
                and view.value(host, "cloud_flavour", "nextcloud") == "double"):
            double = wants = True
        if wants:
            needy.append(host)
    directories = {}
    for host in needy:
        value = view.value(host, "coop_artifacts_dir")
        if not value:
            raise AnsibleError(
                f"the inventory {view.source} does not say where host {host}'s roles read the "
                "artifacts coopctl fetches for them (coop_artifacts_dir)",
                "set coop_artifacts_dir in group_vars/all.yml, e.g. /var/cache/coopctl/artifacts "
                "(inventories/example does)")
        directories[host] = Path(str(value)).expanduser()
    if len(set(directories.values())) > 1:
        raise AnsibleError(
            f"the inventory {view.source} gives its hosts different coop_artifacts_dir values ("
            + ", ".join(f"{h}: {d}" for h, d in sorted(directories.items())) + ")",
            "set one coop_artifacts_dir for every host, in group_vars/all.yml")
    return ArtifactPlan(
        directory=next(iter(directories.values()), None),
        keycloak=tuple(sorted(keycloak)),
        etherpad=tuple(sorted(etherpad)),
        nextcloud_double=double,
    )


@contextlib.contextmanager
def _artifacts_dir(directory: Path | None) -> Iterator[None]:
    """$COOPCTL_ARTIFACTS_DIR set to `directory` for the fetch functions, then restored."""
    if directory is None:
        yield
        return
    before = os.environ.get("COOPCTL_ARTIFACTS_DIR")
    os.environ["COOPCTL_ARTIFACTS_DIR"] = str(directory)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("COOPCTL_ARTIFACTS_DIR", None)
        else:
            os.environ["COOPCTL_ARTIFACTS_DIR"] = before


def prepare_artifacts(
    echo: Callable[[str], None] = print, plan: ArtifactPlan | None = None
) -> None:
    """Fetch, on the controller, what the roles copy to the hosts (hosts never download them).

    Each fetch goes through the registry's own client (Maven, npm) and is skipped when the
    artifact is already in the artifacts directory. Without a plan, everything the lab needs
    (what `.ci/setup` warms the cache with).
    """
    from provisioner import artifacts

    if plan is None:
        plan = ArtifactPlan(keycloak=(artifacts.KEYCLOAK_VERSION,),
                            etherpad=(artifacts.ETHERPAD_VERSION,), nextcloud_double=True)
    steps: list[tuple[str, Callable[[], Path]]] = [
        *((f"Keycloak {v} (Maven)", functools.partial(artifacts.fetch_keycloak, v))
          for v in plan.keycloak),
        *((f"Etherpad {v} (npm)", functools.partial(artifacts.fetch_etherpad, v))
          for v in plan.etherpad),
    ]
    if plan.nextcloud_double:
        steps.append(("the Nextcloud contract double", artifacts.build_nextcloud_double))
    started = time.monotonic()
    with _artifacts_dir(plan.directory):
        for what, fetch in steps:
            try:
                path = fetch()
            except CoopError:
                raise  # already an Error with its Hint (provisioner.artifacts' own)
            except (artifacts.ArtifactError, ValueError, OSError) as exc:
                detail = " ".join(str(exc).strip().splitlines()[-3:])[-600:]
                raise AnsibleError(
                    f"could not prepare {what} on the controller: {detail}",
                    getattr(exc, "hint", None) or
                    "check that the package registry answers (mvn and npm use it) and that the "
                    "artifacts directory is writable, then deploy again: artifacts already "
                    "fetched are kept") from None
            echo(f"artifact ready: {path}")
    echo(f"artifacts ready in {time.monotonic() - started:.1f} s")


# -- running a deploy --------------------------------------------------------------------------

def _recap(result: Any, started: float) -> Recap:
    """The Recap of an ansible-runner run begun at `started` (time.monotonic())."""
    recap = Recap(rc=result.rc, status=result.status, seconds=time.monotonic() - started)
    for key, name in STAT_KEYS.items():
        for host, count in ((result.stats or {}).get(key) or {}).items():
            recap.hosts.setdefault(host, {v: 0 for v in STAT_KEYS.values()})[name] = count
    return recap


def _output_tail(result: Any, lines: int) -> str:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return "".join(result.stdout.readlines()[-lines:]).strip()
    return ""


def deploy_playbook(
    inventory: Path,
    *,
    state_dir: Path | None = None,
    lab_dir: Path | None = None,
    check: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    playbook: str = "site.yml",
    echo: Callable[[str], None] = print,
    extravars: dict | None = None,
    artifacts: ArtifactPlan | None = None,
) -> Recap:
    """Run ``playbooks/PLAYBOOK`` against ``inventory``; print progress; return the recap.

    Ansible's state goes to `state_dir` (default: `lab_dir` for a lab, else
    :func:`deploy_state_dir`). The artifacts fetched first are `artifacts`, or by default
    those the inventory's hosts (within `limit` and `tags`) need: see :func:`plan_artifacts`.
    A run that
    fails returns its recap all the same (see :func:`require_success`); only a run that could
    not start, or ran on no host at all, raises.
    """
    import ansible_runner  # imported here: the lab's other commands do not need it

    path = Path(playbook) if Path(playbook).is_absolute() else PLAYBOOK_DIR / playbook
    if not path.exists():
        raise AnsibleError(f"no playbook {path}", "reinstall coopctl: its playbooks ship with it")
    if not Path(inventory).exists():
        raise AnsibleError(f"no inventory {inventory}",
                           "pass the coop's inventory with --inventory (or run `coopctl lab up`)")
    if state_dir is None:
        state_dir = lab_dir if lab_dir is not None else deploy_state_dir(Path(inventory))
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = ansible_env(state_dir, lab_dir=lab_dir)
    plan = artifacts if artifacts is not None else plan_artifacts(
        read_inventory(Path(inventory), env, limit), tags)
    echo(f"artifacts this inventory needs: {plan.describe()}")
    if plan:
        prepare_artifacts(echo, plan)
    if plan.directory is not None:
        env["COOPCTL_ARTIFACTS_DIR"] = str(plan.directory)
    private = state_dir / "runner"
    private.mkdir(parents=True, exist_ok=True)
    # ansible-runner reads env/ (envvars, extravars, cmdline) before its arguments, and by
    # default writes them there only when absent: a file left by an earlier run (say, with
    # --check) would silently win over this run's own. Older coopctl left such files.
    shutil.rmtree(private / "env", ignore_errors=True)
    cmdline = "--check --diff" if check else None
    started = time.monotonic()
    top = PLAYBOOK_DIR.parent
    shown = path.relative_to(top) if path.is_relative_to(top) else path
    echo(
        f"deploying {shown} to {inventory}" + (f" (limit {limit})" if limit else "")
        + (" --check" if check else "") + f"; Ansible's state in {state_dir}"
    )
    result = ansible_runner.run(
        private_data_dir=str(private),
        project_dir=str(PLAYBOOK_DIR),
        playbook=str(path),
        inventory=str(Path(inventory).resolve()),
        envvars=env,
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
    recap.output_tail = _output_tail(result, 15)
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
        raise AnsibleError(
            f"ansible-playbook ran no task on any host (rc {result.rc}) with the inventory "
            f"{inventory}: {recap.output_tail[-600:] or 'no output'}",
            "check that the inventory parses and lists the coop's hosts "
            "(ansible-inventory -i FILE --graph)")
    echo(
        f"deploy {result.status} in {recap.seconds:.1f} s: changed {recap.changed}, "
        f"failed {recap.failed}, unreachable {recap.unreachable}"
    )
    return recap


def require_success(recap: Recap, inventory: Path) -> Recap:
    """`recap` if ansible-playbook succeeded, else DeployFailed saying where and why."""
    if recap.ok:
        return recap
    failed = sorted(h for h, c in recap.hosts.items() if c.get("failed"))
    unreachable = sorted(h for h, c in recap.hosts.items() if c.get("unreachable"))
    parts = []
    if failed:
        parts.append(f"a task failed on {', '.join(failed)}")
    if unreachable:
        parts.append(f"unreachable: {', '.join(unreachable)}")
    if not parts:
        last = recap.output_tail.strip().splitlines()[-1:] or ["no output"]
        parts.append(f"ansible-playbook exited with rc {recap.rc} ({recap.status}): {last[0]}")
    if unreachable:
        hint = ("check that each host is up and that `ssh ansible_user@ansible_host` works with "
                "the inventory's key, then deploy again")
    elif failed:
        hint = ("the failing task and Ansible's message are printed above; fix the cause and "
                "deploy again (a deploy changes only what differs)")
    else:
        hint = f"run ansible-playbook -i {inventory} on the playbook to see Ansible's whole output"
    raise DeployFailed(f"deploy to {inventory} failed: {'; '.join(parts)}", hint)


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
