"""Shared fixtures of the infrastructure checks (testinfra tests, read-only).

Run by `coopctl audit`, or by hand against any inventory:

    COOPCTL_CONFIG=/etc/coopctl/coopctl.yaml \
        pytest --ansible-inventory=inventories/mycoop/hosts.yml provisioner/audit/checks

Each module names the inventory groups it checks (`testinfra_hosts`); the expectations (names,
CA) come from the inventory's variables and from coopctl's configuration. Every command run on
a host only reads. Each test carries a `severity` mark that the audit report shows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from provisioner.audit.probes import NOT_APPLICABLE


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "severity(level): how bad a failure is for the audit")


@pytest.fixture(scope="session")
def coop_config() -> Any:
    """coopctl's configuration ($COOPCTL_CONFIG or its default place)."""
    from provisioner import config as config_mod

    path = os.environ.get("COOPCTL_CONFIG")
    return config_mod.load(Path(path) if path else None)


@pytest.fixture(scope="session")
def ca_file(coop_config: Any) -> str | None:
    sync = coop_config.sync
    return (sync.ca_file if sync else None) or coop_config.directory.ca_file


@pytest.fixture
def hostvars(host: Any) -> dict[str, Any]:
    return host.ansible.get_variables()


def dump_json(path: str, data: Any) -> None:
    Path(path).write_text(json.dumps(data), encoding="utf-8")


class _Collector:
    """Writes each test's outcome to $COOPCTL_CHECKS_REPORT (for `coopctl audit`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.results: list[dict[str, Any]] = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any):  # type: ignore[no-untyped-def]
        outcome = yield
        report = outcome.get_result()
        if report.skipped and NOT_APPLICABLE in str(report.longrepr):
            return  # a check that does not concern this host
        if report.when == "call" or (report.when == "setup" and not report.passed):
            mark = item.get_closest_marker("severity")
            host = getattr(item, "callspec", None)
            params = host.params if host else {}
            target = params.get("_testinfra_host")
            message = ""
            if report.failed:
                crash = getattr(report.longrepr, "reprcrash", None)
                message = crash.message if crash else str(report.longrepr)[-400:]
            elif report.skipped and isinstance(report.longrepr, tuple):
                message = str(report.longrepr[2])
            self.results.append({
                "name": item.originalname if hasattr(item, "originalname") else item.name,
                "module": item.module.__name__ if item.module else "",
                "doc": (item.function.__doc__ or "").strip().splitlines()[0]
                if getattr(item, "function", None) and item.function.__doc__ else "",
                "host": (getattr(target, "backend", None) and target.backend.get_pytest_id())
                or "controller",
                "outcome": "error" if report.when == "setup" and report.failed
                else report.outcome,
                "message": message.strip().splitlines()[0][:300] if message.strip() else "",
                "severity": mark.args[0] if mark else "high",
            })

    def pytest_sessionfinish(self) -> None:
        dump_json(self.path, self.results)


def pytest_sessionstart(session: pytest.Session) -> None:
    path = os.environ.get("COOPCTL_CHECKS_REPORT")
    if path:
        session.config.pluginmanager.register(_Collector(path), "coopctl-checks-report")
