"""Debian 12 (bookworm) is still supported: deploy a bookworm lab and run the service tests on it.

The session's own lab runs the release the lab defaults to (Debian 13, trixie). Coops upgrade
at their own pace, so every role keeps working on Debian 12 (its `vars/Debian-12.yml`). This
test boots a second lab of three bookworm hosts, deploys playbooks/site.yml on it, and runs the
service tests and the release-dependent security tests below against it in a pytest session of
their own, the way a developer would:

    COOPCTL_LAB_SUITE=bookworm COOPCTL_LAB_NAME=lab12 COOPCTL_LAB_INDEX=2 \
        pytest tests/lab/test_mail.py ...

That inner session boots the lab, deploys it once, and takes it down at its end (unless
COOPCTL_KEEP_LAB is set), exactly as for the default lab.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.lab.config import default_suite

LAB_TESTS = Path(__file__).resolve().parent
ROOT = LAB_TESTS.parents[1]

# What a Debian 12 coop needs to hold: each service answers and does its job, and the security
# controls whose configuration differs by release hold (slapd's TLS library is GnuTLS on 12 and
# OpenSSL on 13; Dovecot 2.3 and 2.4; fail2ban's filters), and what runs on the host's own
# Python (3.11 on 12, 3.13 on 13): the watcher role's coopctl, the pads' SSO gate (in the web
# security tests). Keycloak gets the same configuration on both releases (its security tests run
# on 13), and the lab's own mechanics (test_lab.py) do not depend on the guests' release: left
# out to keep CI well within its time.
SERVICE_TESTS = (
    "test_openldap.py",
    "test_postgresql.py",
    "test_sso.py",
    "test_mail.py",
    "test_wiki.py",
    "test_pads.py",
    "test_cloud.py",
    "test_security_hosts.py",
    "test_security_directory.py",
    "test_security_mail.py",
    "test_security_web.py",
    "test_watch.py",
)
# Release-independent, and long: run on the session's own lab only.
DESELECTED = (
    "test_watch.py::test_a_deleted_group_past_the_guard_is_held_in_the_services",
)


def test_every_service_works_on_debian_12(tmp_path: Path) -> None:
    if default_suite() == "bookworm":
        pytest.skip("this session's own lab already runs Debian 12")
    files = [str(LAB_TESTS / name) for name in SERVICE_TESTS]
    env = {k: v for k, v in os.environ.items() if k != "COOPCTL_LAB_NO_DEPLOY"}
    env.update(COOPCTL_LAB_SUITE="bookworm", COOPCTL_LAB_NAME="lab12", COOPCTL_LAB_INDEX="2")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-x",
         "--basetemp", str(tmp_path / "pytest"),
         *[f"--deselect=tests/lab/{name}" for name in DESELECTED], *files],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )
    summary = result.stdout.strip().splitlines()[-1:] or ["(no output)"]
    print(f"Debian 12 lab: {summary[0]}")
    # The failing tests' names first: CI shows only the start of a long message.
    failed = [line for line in result.stdout.splitlines()
              if line.startswith(("FAILED ", "ERROR "))]
    assert result.returncode == 0, "\n".join(failed) + "\n" + result.stdout[-6000:] \
        + result.stderr[-3000:]
    assert " passed" in summary[0] and "skipped" not in summary[0], summary[0]
