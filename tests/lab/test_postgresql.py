"""The postgresql role on the lab host `dir`: Keycloak's data in Debian's PostgreSQL.

PostgreSQL listens on localhost only and admits Keycloak's user to Keycloak's database alone,
with a scram-sha-256 password that is the secret ``postgresql_keycloak``. Keycloak keeps no H2
file, survives a restart of PostgreSQL under it, and Debian's pg_backupcluster dumps the
cluster every night (timer) into dumps that pg_restore reads. Everything is checked on the real
servers: SQL through psql as the cluster's owner, logins through Keycloak's token endpoint.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.lab.test_sso import REALM, health, password_grant

pytestmark = pytest.mark.lab

BACKUP_ROOT = "/var/backups/postgresql"
# How long a member's login may fail after PostgreSQL restarts under Keycloak.
RECOVERY_SECONDS = 60


@pytest.fixture(scope="module")
def dir_host(lab):
    return lab.host("dir")


@pytest.fixture(scope="module")
def cluster(dir_host) -> dict:
    """The cluster the role manages, as pg_lsclusters describes it (version not assumed)."""
    clusters = json.loads(dir_host.check_output("pg_lsclusters --json"))
    mains = [c for c in clusters if c["cluster"] == "main"]
    assert len(mains) == 1, clusters
    return mains[0]


@pytest.fixture(scope="module")
def cluster_id(cluster) -> str:
    return f"{cluster['version']}-{cluster['cluster']}"


@pytest.fixture
def directory(throwaway_directory):
    return throwaway_directory(prefix="pgtest", given_name="Pg", services=("sso",))


def psql(host, sql: str, database: str = "keycloak") -> list[str]:
    """Rows of a query, as the cluster's owner over the Unix socket (peer authentication)."""
    out = host.check_output(
        "cd / && runuser -u postgres -- psql -X -A -t -v ON_ERROR_STOP=1 -d %s -c %s",
        database,
        sql,
    )
    return [line for line in out.splitlines() if line]


def tcp_login_error(host, user: str, database: str, password: str) -> str:
    """psql over TCP to localhost with a password that is not a secret; returns its error."""
    result = host.run(
        "cd / && PGPASSWORD=%s PGCONNECT_TIMEOUT=5 psql -X -h 127.0.0.1 -U %s -d %s -c 'SELECT 1'",
        password,
        user,
        database,
    )
    assert result.rc != 0, result.stdout
    return result.stderr


def java_pid(host) -> int:
    return int(host.check_output("systemctl show -p MainPID --value keycloak"))


def postmaster_pid(host, cluster_id: str) -> int:
    return int(host.check_output(f"systemctl show -p MainPID --value postgresql@{cluster_id}"))


def test_postgresql_listens_on_localhost_only(lab, dir_host, cluster):
    assert dir_host.service(f"postgresql@{cluster['version']}-main").is_running
    assert dir_host.service("postgresql").is_enabled
    assert dir_host.socket("tcp://127.0.0.1:5432").is_listening
    assert not dir_host.socket("tcp://0.0.0.0:5432").is_listening
    assert not dir_host.socket(f"tcp://{lab.addresses['dir']}:5432").is_listening
    with pytest.raises(OSError):
        socket.create_connection((lab.addresses["dir"], 5432), timeout=5).close()
    assert psql(dir_host, "SHOW listen_addresses") == ["localhost"]
    assert psql(dir_host, "SHOW password_encryption") == ["scram-sha-256"]


def test_keycloak_keeps_its_data_in_postgresql(dir_host):
    conf = dir_host.file("/opt/keycloak/conf/keycloak.conf").content_string
    assert "\ndb=postgres\n" in conf, conf
    env = dir_host.file("/etc/keycloak/keycloak.env").content_string
    assert "KC_DB_URL=jdbc:postgresql://localhost:5432/keycloak\n" in env, env
    assert "KC_DB_USERNAME=keycloak\n" in env, env
    # The realm, its clients and its LDAP federation are rows of Keycloak's tables.
    assert {"master", REALM} <= set(psql(dir_host, "SELECT name FROM realm"))
    clients = psql(
        dir_host,
        "SELECT c.client_id FROM client c JOIN realm r ON r.id = c.realm_id "
        f"WHERE r.name = '{REALM}'",
    )
    assert {"mail", "cloud", "wiki", "pads"} <= set(clients), clients
    assert psql(
        dir_host,
        "SELECT provider_id FROM component c JOIN realm r ON r.id = c.realm_id "
        f"WHERE r.name = '{REALM}' AND c.name = 'coop-ldap'",
    ) == ["ldap"]
    # Keycloak itself is connected, as its own user, over TCP.
    sessions = psql(
        dir_host,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'keycloak' "
        "AND datname = 'keycloak' AND client_addr IS NOT NULL",
        database="postgres",
    )
    assert int(sessions[0]) >= 1, sessions


def test_no_h2_database_anywhere(dir_host):
    """H2 is used for nothing: no data/h2 directory, no H2 file open or lying around (a lab
    that once ran on H2 keeps its old file, untouched, in data/h2.retired)."""
    assert not dir_host.file("/var/lib/keycloak/h2").exists
    found = dir_host.check_output(
        "find /var/lib/keycloak /opt/keycloak/ -name '*.mv.db' -not -path '*/h2.retired/*'"
    )
    assert found == "", found
    open_files = dir_host.check_output(f"ls -l /proc/{java_pid(dir_host)}/fd")
    assert ".mv.db" not in open_files and "/h2" not in open_files


def test_database_password_is_the_secret_and_root_only(lab, dir_host):
    password = lab.secret("postgresql_keycloak")
    assert len(password) == 32
    db_env = dir_host.file("/etc/keycloak/db.env")
    assert db_env.mode == 0o600 and db_env.user == "root" and db_env.group == "root"
    assert f"KC_DB_PASSWORD={password}\n" in db_env.content_string
    # Nowhere else that others can read: not the run-time options, not the build options,
    # not Keycloak's command line.
    for path in ("/etc/keycloak/keycloak.env", "/opt/keycloak/conf/keycloak.conf"):
        assert password not in dir_host.file(path).content_string, path
    assert password not in dir_host.check_output(f"cat /proc/{java_pid(dir_host)}/cmdline")
    # PostgreSQL keeps a SCRAM verifier, never the password or an md5 hash.
    stored = psql(
        dir_host, "SELECT rolpassword FROM pg_authid WHERE rolname = 'keycloak'", "postgres"
    )
    assert stored[0].startswith("SCRAM-SHA-256$4096:"), "not a SCRAM verifier"
    assert password not in stored[0]


def test_only_keycloak_connects_and_only_with_its_password(dir_host):
    rules = psql(
        dir_host,
        "SELECT type, array_to_string(database, ','), array_to_string(user_name, ','), "
        "coalesce(address, ''), auth_method FROM pg_hba_file_rules ORDER BY line_number",
        "postgres",
    )
    assert rules[0] == "local|all|postgres||peer", rules
    assert set(rules[1:]) == {
        "host|keycloak|keycloak|127.0.0.1|scram-sha-256",
        "host|keycloak|keycloak|::1|scram-sha-256",
    }, rules
    assert "password authentication failed" in tcp_login_error(
        dir_host, "keycloak", "keycloak", "not-the-password"
    )
    assert "no pg_hba.conf entry" in tcp_login_error(
        dir_host, "keycloak", "postgres", "not-the-password"
    )
    assert "no pg_hba.conf entry" in tcp_login_error(
        dir_host, "postgres", "keycloak", "not-the-password"
    )
    local = dir_host.run("cd / && runuser -u keycloak -- psql -X -d keycloak -c 'SELECT 1'")
    assert local.rc != 0 and "no pg_hba.conf entry" in local.stderr, local.stderr
    # PUBLIC has no privilege on the database (an ACL without a "=..." entry).
    acl = psql(dir_host, "SELECT datacl FROM pg_database WHERE datname = 'keycloak'", "postgres")
    assert acl[0].startswith("{") and not any(
        item.startswith("=") for item in acl[0].strip("{}").split(",")
    ), acl


def test_keycloak_survives_a_postgresql_restart(lab, dir_host, cluster_id, directory):
    uid, _, password = directory.member()
    assert password_grant(lab, uid, password).status_code == 200
    keycloak_before = java_pid(dir_host)
    postgres_before = postmaster_pid(dir_host, cluster_id)

    dir_host.check_output("systemctl restart postgresql")
    assert postmaster_pid(dir_host, cluster_id) != postgres_before  # it really restarted

    started = time.monotonic()
    failures = []
    while True:
        response = password_grant(lab, uid, password)
        if response.status_code == 200:
            break
        failures.append(response.status_code)
        assert time.monotonic() - started < RECOVERY_SECONDS, (
            f"no login within {RECOVERY_SECONDS} s after restarting PostgreSQL: {failures}"
        )
        time.sleep(1)
    # Not one failed login: Keycloak validates pooled connections before use (sso role's
    # sso_db_validate_on_borrow), so the dead ones were replaced, not handed to a request.
    assert failures == [], failures
    # Keycloak reconnected by itself: same process, healthy again.
    assert java_pid(dir_host) == keycloak_before
    # (The management port answers on the host's loopback only.)
    assert health(lab)["status"] == "UP"
    # And the data written before the restart is still there.
    assert {"master", REALM} <= set(psql(dir_host, "SELECT name FROM realm"))


def test_nightly_dump_timer(dir_host, cluster_id):
    timer = dir_host.service(f"pg_dump@{cluster_id}.timer")
    assert timer.is_enabled and timer.is_running
    calendar = dir_host.check_output(
        f"systemctl show -p TimersCalendar --value pg_dump@{cluster_id}.timer"
    )
    assert "OnCalendar=*-*-* 03:15:00" in calendar, calendar  # nightly, not Debian's weekly
    assert "KEEP=14" in dir_host.check_output(
        f"systemctl show -p Environment --value pg_dump@{cluster_id}.service"
    )


def dumps(host, cluster_id: str) -> list[str]:
    """Complete dumps (with pg_backupcluster's status file), oldest first."""
    out = host.check_output(
        f"find {BACKUP_ROOT}/{cluster_id} -mindepth 2 -maxdepth 2 -path '*.dump/status'"
    )
    return sorted(line.rsplit("/", 2)[1] for line in out.splitlines())


def until_next_second(host, newest: str) -> None:
    """Wait until the host's clock (UTC, to the second, as in dump names) is past `newest`."""
    deadline = time.monotonic() + 10
    while newest and time.monotonic() < deadline:
        now = host.check_output("date -u +%Y-%m-%dT%H%M%SZ")
        if f"{now}.dump" > newest:
            return
        time.sleep(0.3)


def test_the_dump_service_writes_a_dump_that_pg_restore_reads(dir_host, cluster_id):
    before = dumps(dir_host, cluster_id)
    until_next_second(dir_host, max(before, default=""))
    # What the timer starts, started now (a oneshot: returns when the dump is done).
    dir_host.check_output(f"systemctl start pg_dump@{cluster_id}.service")
    after = dumps(dir_host, cluster_id)
    new = sorted(set(after) - set(before))
    assert len(new) == 1, (before, after)
    path = f"{BACKUP_ROOT}/{cluster_id}/{new[0]}/keycloak.dump"
    listing = dir_host.check_output(f"pg_restore --list {path}")
    assert "TABLE public realm " in listing, listing[:2000]
    assert "TABLE DATA public realm " in listing
    assert "TABLE DATA public client " in listing
    # Realm keys and client secrets are in there: nobody but postgres gets to it (the role's
    # directories are 0700; pg_backupcluster's own umask is 027).
    dump = dir_host.file(path)
    assert dump.user == "postgres" and dump.mode & 0o007 == 0, oct(dump.mode)
    for directory in (BACKUP_ROOT, f"{BACKUP_ROOT}/{cluster_id}"):
        assert dir_host.file(directory).user == "postgres"
        assert dir_host.file(directory).mode == 0o700, directory


def test_only_the_newest_dumps_are_kept(dir_host, cluster_id):
    keep = int(
        dir_host.check_output(
            f"systemctl show -p Environment --value pg_dump@{cluster_id}.service"
        ).split("KEEP=")[1].split()[0]
    )
    # Complete-looking dumps from long ago, as many as are kept: the next run must drop the
    # oldest of them so that exactly `keep` remain.
    fakes = [f"2000-01-01T{n:06d}Z.dump" for n in range(keep)]
    for name in fakes:
        dir_host.check_output(
            f"install -d -o postgres -g postgres -m 0700 {BACKUP_ROOT}/{cluster_id}/{name} && "
            f"echo '{{}}' > {BACKUP_ROOT}/{cluster_id}/{name}/status"
        )
    # pg_backupcluster names a dump after the second it starts, and the previous test's dump
    # may be less than a second old: the same name would make this run fail.
    newest = max((d for d in dumps(dir_host, cluster_id) if not d.startswith("2000-")),
                 default="")
    until_next_second(dir_host, newest)
    try:
        dir_host.check_output(f"systemctl start pg_dump@{cluster_id}.service")
        remaining = dumps(dir_host, cluster_id)
        assert len(remaining) == keep, remaining
        assert fakes[0] not in remaining  # the oldest went first
        assert not remaining[-1].startswith("2000-")  # the new dump stays
    finally:
        dir_host.run(f"rm -rf {BACKUP_ROOT}/{cluster_id}/2000-01-01T*Z.dump")


def test_second_run_of_postgresql_and_sso_changes_nothing(lab, dir_host, cluster_id, tmp_path):
    # Files written by no_log tasks too: seen on this setup, Ansible's recap does not count a
    # no_log task that changed, so their modification times and the services' processes are
    # compared as well.
    watched = "/etc/keycloak/db.env /etc/keycloak/keycloak.env /opt/keycloak/conf/*.conf " \
        "/opt/keycloak/conf/quarkus.properties /etc/systemd/system/pg_dump@.*.d/coopctl.conf"
    before = dir_host.check_output(f"stat -c '%n %Y' {watched}")
    processes = (java_pid(dir_host), postmaster_pid(dir_host, cluster_id))
    playbook = tmp_path / "sso-db.yml"
    playbook.write_text("- hosts: sso_servers\n  become: true\n  roles: [postgresql, sso]\n")
    recap = lab.deploy(playbook=str(playbook))
    assert recap["rc"] == 0 and not recap["failed"], recap
    assert recap["changed"] == 0, recap
    assert dir_host.check_output(f"stat -c '%n %Y' {watched}") == before
    assert (java_pid(dir_host), postmaster_pid(dir_host, cluster_id)) == processes
