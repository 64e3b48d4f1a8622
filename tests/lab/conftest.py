"""Fixtures for tests that run against the local lab (real Debian hosts in systemd-nspawn).

``lab_hosts`` boots the default lab (or reuses it when it is already up); ``lab`` also deploys
playbooks/site.yml once per session and is what service tests use. The lab is torn down at the
end only if this session created it and ``COOPCTL_KEEP_LAB`` is not set, so a developer can keep
a lab up between runs. ``COOPCTL_LAB_NAME`` / ``COOPCTL_LAB_INDEX`` (default ``lab`` / 0) pick
another lab, e.g. to run the suite while someone else uses the default one.

Every test under tests/lab gets the ``lab`` marker: ``pytest -m "not lab"`` skips them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from provisioner.lab.config import LabConfig, default_state_dir
from provisioner.lab.inventory import write_coopctl_config
from provisioner.lab.lab import Lab
from tests.lab.helpers import ThrowawayDirectory, coopctl_connection

LAB_DIR = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lab: needs the local lab of nspawn hosts (root, systemd-nspawn)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if LAB_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.lab)
    # The demo fills the lab's directory with its sample coop: let every other test go first.
    items.sort(key=lambda item: Path(str(item.fspath)).name == "test_demo.py")


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the lab needs root"
    missing = [
        t for t in ("systemd-nspawn", "debootstrap", "ip", "nsenter") if shutil.which(t) is None
    ]
    if missing:
        return f"missing {', '.join(missing)} (run `bash .ci/setup`)"
    return None


@dataclass
class LabHandle:
    """What a test needs to reach the lab."""

    lab: Lab
    _hosts: dict[str, Any] = field(default_factory=dict)

    @property
    def cfg(self) -> LabConfig:
        return self.lab.cfg

    @property
    def state_dir(self) -> Path:
        return self.cfg.state_dir

    @property
    def inventory(self) -> Path:
        """The default lab's repo copy (next to group_vars/), else STATE/hosts.yml."""
        return self.cfg.repo_inventory or self.cfg.inventory

    @property
    def addresses(self) -> dict[str, str]:
        return self.cfg.addresses()

    @property
    def ca_file(self) -> Path:
        return self.cfg.ca_file

    def secret(self, name: str) -> str:
        """A secret the roles created with the password lookup (STATE/secrets/NAME)."""
        return self.cfg.secret(name)

    def host(self, name: str) -> Any:
        """A testinfra host over SSH as root with the lab key."""
        import testinfra

        if name not in self._hosts:
            self._hosts[name] = testinfra.get_host(
                f"ssh://root@{self.cfg.address(name)}",
                ssh_config=str(self.cfg.ssh_config),
                ssh_identity_file=str(self.cfg.ssh_key),
            )
        return self._hosts[name]

    def deploy(self, **kwargs: Any) -> dict:
        """Run site.yml (``check``, ``limit``, ``tags``...); returns the recap as a dict."""
        from provisioner.ansible import deploy_playbook

        recap = deploy_playbook(self.inventory, lab_dir=self.state_dir, **kwargs)
        return recap.as_dict()


def _test_config() -> LabConfig:
    name = os.environ.get("COOPCTL_LAB_NAME", "lab")
    index = int(os.environ.get("COOPCTL_LAB_INDEX", "0"))
    state_dir = default_state_dir(name)
    return LabConfig.load(state_dir) or LabConfig(name=name, index=index, state_dir=state_dir)


@pytest.fixture(scope="session")
def lab_hosts() -> Iterator[LabHandle]:
    """The lab's hosts booted (not deployed); reused if already up."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    lab = Lab(_test_config())
    created = not any(h.pid() for h in lab.hosts)
    lab.up()  # keeps running hosts, resumes a half-up lab
    yield LabHandle(lab)
    if created and not os.environ.get("COOPCTL_KEEP_LAB"):
        lab.down()


@pytest.fixture(scope="session")
def lab(lab_hosts: LabHandle) -> LabHandle:
    """The lab with playbooks/site.yml deployed once for the session.

    ``COOPCTL_LAB_NO_DEPLOY=1`` skips the deploy, for a developer whose lab is deployed already.
    """
    if os.environ.get("COOPCTL_LAB_NO_DEPLOY"):
        return lab_hosts
    recap = lab_hosts.deploy()
    if recap["failed"] or recap["unreachable"] or recap["rc"]:
        pytest.fail(f"deploying site.yml to the lab failed: {recap}")
    return lab_hosts


@pytest.fixture(scope="session")
def coopctl_config(lab: LabHandle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A coopctl config file pointing at the lab's directory server."""
    return write_coopctl_config(lab.cfg, tmp_path_factory.mktemp("coopctl") / "coopctl.yml")


@pytest.fixture
def throwaway_directory(lab: LabHandle) -> Iterator[Callable[..., ThrowawayDirectory]]:
    """Makes ThrowawayDirectory objects; whatever they created is removed after the test."""
    made: list[ThrowawayDirectory] = []

    def make(**kwargs: Any) -> ThrowawayDirectory:
        made.append(ThrowawayDirectory(coopctl_connection(lab), **kwargs))
        return made[-1]

    yield make
    for directory in made:
        directory.cleanup()
