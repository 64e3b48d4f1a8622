"""Imports that stop half-way: killed, refused by the server, or cut off from it.

Each test runs `coopctl` as a separate process against a private slapd of its own (the
session's server is shared, and these tests kill things), then checks that the next run
with the same file finishes the work and says so, or that nothing was written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import ldap3
import pytest
from click.testing import CliRunner
from ldap3.core.exceptions import LDAPCommunicationError

from provisioner.cli import cli
from provisioner.cli.demo import write_local_config
from provisioner.localslapd import LocalDirectory
from tests.conftest import SUFFIX, Coopctl

COOPCTL = str(Path(sys.executable).with_name("coopctl"))


class Server:
    """A private slapd with an initialised coop (two plans, two groups) and its config."""

    def __init__(self, workdir: Path) -> None:
        self.slapd = LocalDirectory(workdir / "slapd", suffix=SUFFIX, durable=True)
        self.slapd.build()
        self.slapd.start()
        self.config = write_local_config(workdir, self.slapd)
        self.coopctl = Coopctl(self.config)
        assert CliRunner().invoke(cli, ["--config", str(self.config), "init"]).exit_code == 0
        self.coopctl("plan", "add", "small", "--mail-quota", "1 GB", "--cloud-quota", "5 GB",
                     "--service", "mail", "--service", "cloud")
        self.coopctl("group", "add", "board")
        self.coopctl("group", "add", "volunteers")
        self.records = workdir / "state" / "imports"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([COOPCTL, "--config", str(self.config), *args],
                              capture_output=True, text=True, timeout=300, check=False)

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([COOPCTL, "--config", str(self.config), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def uids(self) -> set[str]:
        conn = ldap3.Connection(ldap3.Server(self.slapd.ldapi_uri), authentication=ldap3.SASL,
                                sasl_mechanism=ldap3.EXTERNAL, sasl_credentials="",
                                auto_bind=True)
        try:
            entries = conn.extend.standard.paged_search(
                f"ou=people,{SUFFIX}", "(objectClass=coopMember)", ldap3.LEVEL,
                attributes=["uid"], paged_size=1000, generator=True)
            return {e["attributes"]["uid"][0] for e in entries if e.get("type") == "searchResEntry"}
        finally:
            conn.unbind()

    def settle_after_killed_client(self) -> None:
        """Make sure slapd answers after a client was killed mid-write.

        Debian 12's slapd may crash when a client dies during a commit (issue 8), and the
        crash can come a moment after the kill, even during the next bind. The directory is
        crash-safe; what these tests check is the next run, so a dead slapd is restarted.
        """
        for _ in range(3):
            if not self.slapd.running():
                self.slapd.start()
            try:
                self.uids()
                return
            except LDAPCommunicationError:
                deadline = time.monotonic() + 10
                while self.slapd.running() and time.monotonic() < deadline:
                    time.sleep(0.05)
        raise AssertionError("slapd does not answer after the client was killed")

    def group_members(self, name: str) -> set[str]:
        out = self.coopctl("group", "show", name, "--json").output
        return set(json.loads(out)["members"])

    def record(self) -> dict | None:
        files = list(self.records.glob("*.json")) if self.records.exists() else []
        return json.loads(files[0].read_text()) if files else None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    made = Server(tmp_path / "coop")
    yield made
    made.slapd.destroy()


def members_csv(path: Path, count: int, bad_line: int | None = None) -> Path:
    rows = ["member_number,given_name,family_name,plan,groups"]
    for n in range(count):
        groups = "board" if n % 3 == 0 else "volunteers" if n % 3 == 1 else ""
        family = "Bad*Name" if bad_line is not None and n + 2 == bad_line else "Peeters"
        rows.append(f"N-{n:05d},Person{n},{family},small,{groups}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str],
             timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            pytest.fail("the import ended before the moment to interrupt it: "
                        + process.stdout.read()[-500:] + process.stderr.read()[-2000:])
        time.sleep(0.01)
    process.kill()
    pytest.fail("the moment to interrupt the import never came")


def password_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()[1:] if path.exists() else []


def assert_clean_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert "Error: " in result.stderr and "Hint: " in result.stderr, result.stderr


def test_a_run_killed_while_it_sets_passwords_is_finished_by_the_next(server: Server,
                                                                     tmp_path: Path) -> None:
    csv_file = members_csv(tmp_path / "members.csv", 600)
    first, second = tmp_path / "pw1.csv", tmp_path / "pw2.csv"
    process = server.start("member", "import", str(csv_file), "--initial-passwords", str(first))
    wait_for(lambda: len(password_lines(first)) >= 20, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    server.settle_after_killed_client()
    given_first = {line.split(",")[0] for line in password_lines(first)}
    assert 20 <= len(given_first) < 600
    assert server.record() is not None  # the run left its record behind

    # Without a file for the passwords the next run would leave members without one: refused.
    refused = server.run("member", "import", str(csv_file))
    assert_clean_error(refused)
    assert "--initial-passwords" in refused.stderr

    # Another file is refused while this one is unfinished.
    other = members_csv(tmp_path / "other.csv", 3)
    refused = server.run("member", "import", str(other), "--initial-passwords",
                         str(tmp_path / "pw-other.csv"))
    assert_clean_error(refused)
    assert "unfinished" in refused.stderr and str(csv_file) in refused.stderr

    result = server.run("member", "import", str(csv_file), "--initial-passwords", str(second))
    assert result.returncode == 0, result.stderr
    assert "Finishing the import of" in result.stdout
    assert "have no password yet" in result.stdout
    assert "The interrupted import is complete." in result.stdout
    given_second = {line.split(",")[0] for line in password_lines(second)}
    assert given_first.isdisjoint(given_second)
    assert given_first | given_second == server.uids()
    assert server.record() is None
    # Passwords from either file work.
    for path in (first, second):
        uid, password = password_lines(path)[-1].split(",")
        conn = ldap3.Connection(ldap3.Server(server.slapd.uri),
                                f"uid={uid},ou=people,{SUFFIX}", password)
        assert conn.bind(), (uid, conn.result)
        conn.unbind()
    assert "No changes" in server.run("member", "import", str(csv_file)).stdout


def test_a_bad_row_in_a_large_import_writes_nothing(server: Server, tmp_path: Path) -> None:
    csv_file = members_csv(tmp_path / "members.csv", 1000, bad_line=990)
    result = server.run("member", "import", str(csv_file), "--part-size", "100")
    assert result.returncode == 2
    assert "line 990: the family name 'Bad*Name' contains '*'" in result.stderr
    assert "nothing was imported" in result.stderr
    assert server.uids() == set() and server.record() is None


def kill_slapd(slapd: LocalDirectory) -> None:
    os.kill(int(slapd.pidfile.read_text()), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while slapd.running() and time.monotonic() < deadline:
        time.sleep(0.05)


def parts_done(server: Server, at_least: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            record = server.record()
        except (ValueError, OSError):  # caught between write and rename: try again
            return False
        return record is not None and record["done"] >= at_least
    return check


def test_an_import_killed_mid_way_is_finished_by_the_next_run(server: Server,
                                                              tmp_path: Path) -> None:
    csv_file = members_csv(tmp_path / "members.csv", 3000)
    process = server.start("member", "import", str(csv_file), "--part-size", "100")
    wait_for(parts_done(server, 3), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    record = server.record()
    assert record is not None and 3 <= record["done"] < 30
    server.settle_after_killed_client()
    imported = server.uids()
    assert 300 <= len(imported) < 3000

    result = server.run("member", "import", str(csv_file), "--part-size", "100")
    assert f"Finishing the import of {csv_file}" in result.stdout
    assert f"stopped after part {record['done']} of 30" in result.stdout
    # Debian 12's slapd 2.5.13 can crash later still, on a commit after the one the killed
    # client left (CI, stop 18: at this run's part 13); the run after it finishes.
    result, _ = past_slapd_crashes(server, csv_file, result, most=1)
    assert f"Finishing the import of {csv_file}" in result.stdout
    assert result.returncode == 0, result.stderr
    assert "The interrupted import is complete." in result.stdout
    assert len(server.uids()) == 3000 and server.record() is None
    assert len(server.group_members("board")) == 1000
    assert len(server.group_members("volunteers")) == 1000
    assert "No changes" in server.run("member", "import", str(csv_file)).stdout


def test_slapd_dying_during_an_import_is_an_error_and_the_next_run_finishes(
        server: Server, tmp_path: Path) -> None:
    csv_file = members_csv(tmp_path / "members.csv", 3000)
    process = server.start("member", "import", str(csv_file), "--part-size", "100")
    wait_for(parts_done(server, 3), process)
    kill_slapd(server.slapd)
    stdout, stderr = process.communicate(timeout=120)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert_clean_error(result)
    assert "the connection to the directory broke" in stderr, stderr
    assert "run `coopctl member import" in stderr and "again" in stderr
    assert process.returncode == 6

    server.slapd.start()
    result = finish_despite_slapd_crashes(server, csv_file)
    assert "Finishing the import of" in result.stdout
    assert len(server.uids()) == 3000 and server.record() is None


def slapd_crashed(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 6 and "the connection to the directory broke" in result.stderr


def past_slapd_crashes(server: Server, csv_file: Path,
                       result: subprocess.CompletedProcess[str], most: int,
                       ) -> tuple[subprocess.CompletedProcess[str], int]:
    """The first run of the import, from `result` on, that slapd did not cut (running it
    again after each cut, at most `most` times), and how many were cut before it.

    Debian 12's slapd, restarted after a SIGKILL in the middle of transactions or under a
    loaded machine, sometimes dies during a later commit (the server's bug, issue 8; on the
    coop's hosts systemd restarts it). Each such run must still end in the clean error and
    leave a record that the next run finishes: that, not slapd's stability, is what is tested.
    """
    crashes = 0
    while slapd_crashed(result):
        assert crashes < most, f"{crashes + 1} runs were cut by slapd: {result.stderr[-2000:]}"
        assert_clean_error(result)
        assert server.record() is not None  # what was committed is on record
        server.settle_after_killed_client()
        result = server.run("member", "import", str(csv_file), "--part-size", "100")
        crashes += 1
    return result, crashes


def finish_despite_slapd_crashes(server: Server,
                                 csv_file: Path) -> subprocess.CompletedProcess[str]:
    """Run the import again until it finishes, as the hint says (see past_slapd_crashes)."""
    result = server.run("member", "import", str(csv_file), "--part-size", "100")
    result, _ = past_slapd_crashes(server, csv_file, result, most=2)
    assert result.returncode == 0, result.stderr
    return result


def test_an_entry_refused_in_a_later_part_names_its_line(server: Server,
                                                         tmp_path: Path) -> None:
    """Another writer takes a row's uid while the import runs: the part holding that row is
    refused whole, the error names the CSV line, and the next run finishes the import."""
    csv_file = members_csv(tmp_path / "members.csv", 3000)
    process = server.start("member", "import", str(csv_file), "--part-size", "100")
    wait_for(parts_done(server, 2), process)
    admin = ldap3.Connection(ldap3.Server(server.slapd.ldapi_uri), authentication=ldap3.SASL,
                             sasl_mechanism=ldap3.EXTERNAL, sasl_credentials="", auto_bind=True)
    assert admin.add(f"uid=person2950.peeters,ou=people,{SUFFIX}", ["inetOrgPerson"],
                     {"cn": "Someone Else", "sn": "Else"})
    admin.unbind()
    stdout, stderr = process.communicate(timeout=120)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    assert_clean_error(result)
    # slapd may die on a commit under load (a local run, stop 18): the run after it goes on
    # from the record until it reaches the refused row.
    result, crashed = past_slapd_crashes(server, csv_file, result, most=3)
    assert_clean_error(result)
    stderr = result.stderr
    assert ("Error: line 2952 (person2950.peeters): adding uid=person2950.peeters,ou=people,"
            in stderr), stderr
    assert "(entryAlreadyExists)" in stderr
    if not crashed:
        assert "Parts 1 to 29 of 30 (2900 rows) were committed before this" in stderr
    assert len(server.uids()) == 2900

    result = server.run("member", "import", str(csv_file), "--dry-run")
    assert "Dry run: this would finish the import of" in result.stdout
    assert "+ member person2950.peeters2" in result.stdout and len(server.uids()) == 2900
    result = server.run("member", "import", str(csv_file))
    assert result.returncode == 0, result.stderr
    assert "Finishing the import of" in result.stdout
    assert "+ member person2950.peeters2" in result.stdout
    assert len(server.uids()) == 3000 and server.record() is None


def test_an_unfinished_import_can_be_left_as_it_is(server: Server, tmp_path: Path) -> None:
    csv_file = members_csv(tmp_path / "members.csv", 300)
    process = server.start("member", "import", str(csv_file), "--part-size", "10")
    wait_for(parts_done(server, 2), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    server.settle_after_killed_client()
    done = len(server.uids())
    other = members_csv(tmp_path / "other.csv", 2)  # N-00000, N-00001: already imported
    result = server.run("member", "import", str(other), "--dry-run")
    assert result.returncode == 0 and "is unfinished; importing another file would be " \
        "refused" in result.stdout
    assert_clean_error(server.run("member", "import", str(other)))
    result = server.run("member", "import", str(other), "--abandon-unfinished")
    assert result.returncode == 0, result.stderr
    assert f"Left the import of {csv_file}" in result.stdout
    assert server.record() is None and len(server.uids()) == done
    # the left file imports afterwards like any other: what is there is recognised
    result = server.run("member", "import", str(csv_file))
    assert result.returncode == 0 and "Finishing" not in result.stdout
    assert len(server.uids()) == 300
