"""The service account's limits (slapd ACLs), connection errors, secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import ldap3
import pytest
import yaml
from click.testing import CliRunner

from provisioner.cli import cli
from provisioner.cli.demo import write_local_config
from provisioner.config import load
from provisioner.localslapd import LocalDirectory
from tests.conftest import SUFFIX, Coopctl, make_pki


def coopctl_conn(c: Coopctl) -> ldap3.Connection:
    cfg = load(c.config).directory
    return ldap3.Connection(ldap3.Server(cfg.uri), user=cfg.bind_dn,
                            password=cfg.bind_secret(), auto_bind=True)


@pytest.fixture
def one_member(with_plans: Coopctl) -> Coopctl:
    with_plans("member", "add", "--given-name", "Ann", "--family-name", "Aa", "--plan", "small",
               "--password-stdin", input="a long secret phrase\n")
    with_plans("member", "add", "--given-name", "Bob", "--family-name", "Bb", "--plan", "small",
               "--password-stdin", input="another long phrase\n")
    return with_plans


def test_service_account_cannot_read_password_hashes(one_member: Coopctl) -> None:
    conn = coopctl_conn(one_member)
    conn.search(f"ou=people,{SUFFIX}", "(uid=ann.aa)", attributes=["userPassword", "mail"])
    attrs = conn.response[0]["raw_attributes"]
    assert attrs["mail"] == [b"ann.aa@demo.coop"]
    assert not attrs.get("userPassword")
    assert not conn.search(f"ou=people,{SUFFIX}", "(userPassword=*)")  # cannot even filter on it


def test_service_account_cannot_write_outside_its_subtree(one_member: Coopctl) -> None:
    conn = coopctl_conn(one_member)
    assert not conn.add(f"cn=intruder,ou=services,{SUFFIX}",
                        ["applicationProcess"], {"cn": "intruder"})
    assert conn.result["result"] == 50
    assert not conn.modify(SUFFIX, {"o": [(ldap3.MODIFY_REPLACE, ["taken over"])]})
    assert not conn.delete(f"ou=people,{SUFFIX}")
    assert not conn.add(f"cn=x,{SUFFIX}", ["organizationalRole"], {"cn": "x"})
    assert not conn.modify("olcDatabase={1}mdb,cn=config",
                           {"olcAccess": [(ldap3.MODIFY_REPLACE, ["to * by * write"])]})
    # and it still can do its job
    assert conn.modify(f"uid=ann.aa,ou=people,{SUFFIX}",
                       {"displayName": [(ldap3.MODIFY_REPLACE, ["Ann"])]})


def test_anonymous_and_members_see_no_one_else(one_member: Coopctl) -> None:
    cfg = load(one_member.config).directory
    anon = ldap3.Connection(ldap3.Server(cfg.uri), auto_bind=True)
    anon.search(f"ou=people,{SUFFIX}", "(objectClass=*)", attributes=["mail"])
    assert [e for e in anon.response if e["type"] == "searchResEntry"] == []
    ann = ldap3.Connection(ldap3.Server(cfg.uri), user=f"uid=ann.aa,ou=people,{SUFFIX}",
                           password="a long secret phrase", auto_bind=True)
    ann.search(f"ou=people,{SUFFIX}", "(objectClass=inetOrgPerson)", attributes=["uid"])
    seen = [e["dn"] for e in ann.response if e["type"] == "searchResEntry"]
    assert seen == [f"uid=ann.aa,ou=people,{SUFFIX}"]
    assert not ann.modify(f"uid=ann.aa,ou=people,{SUFFIX}",
                          {"coopMailQuota": [(ldap3.MODIFY_REPLACE, ["999999"])]})


def test_init_is_idempotent(one_member: Coopctl) -> None:
    out = one_member("init", "--json")
    assert json.loads(out.output) == {"done": []}


def run_with(config_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--config", str(config_path), *args])
    return result.exit_code, result.output


def variant(c: Coopctl, tmp_path: Path, **directory: object) -> Path:
    data = yaml.safe_load(Path(c.config).read_text())
    data["directory"].update(directory)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_unreachable_directory(coopctl: Coopctl, tmp_path: Path) -> None:
    code, out = run_with(variant(coopctl, tmp_path, uri="ldap://127.0.0.1:9"), "member", "list")
    assert code == 6 and "cannot reach the directory" in out and "Hint:" in out


def test_wrong_base_dn(coopctl: Coopctl, tmp_path: Path) -> None:
    code, out = run_with(variant(coopctl, tmp_path, base_dn="dc=other,dc=coop",
                                 bind_dn=f"cn=coopctl,ou=services,{SUFFIX}"), "member", "list")
    assert code == 5 and "base DN dc=other,dc=coop does not exist" in out


def test_bad_credentials_do_not_leak_the_secret(coopctl: Coopctl, tmp_path: Path) -> None:
    secret = tmp_path / "wrong.secret"
    secret.write_text("not-the-password-42\n")
    secret.chmod(0o600)
    code, out = run_with(variant(coopctl, tmp_path, bind_secret_file=str(secret)),
                         "member", "list")
    assert code == 6 and "refused the credentials" in out
    assert "not-the-password-42" not in out


def test_secret_file_readable_by_others_is_refused(coopctl: Coopctl, tmp_path: Path) -> None:
    secret = tmp_path / "open.secret"
    secret.write_text("whatever-secret\n")
    secret.chmod(0o644)
    code, out = run_with(variant(coopctl, tmp_path, bind_secret_file=str(secret)),
                         "member", "list")
    assert code == 5 and "chmod 600" in out


def test_secret_from_the_environment(coopctl: Coopctl, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = load(coopctl.config).directory.bind_secret()
    data = yaml.safe_load(Path(coopctl.config).read_text())
    del data["directory"]["bind_secret_file"]
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("COOPCTL_BIND_SECRET", real)
    assert run_with(path, "plan", "list")[0] == 0
    monkeypatch.delenv("COOPCTL_BIND_SECRET")
    code, out = run_with(path, "plan", "list")
    assert code == 5 and "COOPCTL_BIND_SECRET" in out


def test_starttls_with_the_right_ca(coopctl: Coopctl, slapd: LocalDirectory,
                                    tmp_path: Path) -> None:
    assert slapd.tls_dir is not None
    path = variant(coopctl, tmp_path, tls="starttls", ca_file=str(slapd.tls_dir / "ca.crt"))
    code, out = run_with(path, "plan", "list")
    assert code == 0, out


def test_starttls_with_an_unknown_ca_is_refused(coopctl: Coopctl, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other-pki")
    path = variant(coopctl, tmp_path, tls="starttls", ca_file=str(other / "ca.crt"))
    code, out = run_with(path, "plan", "list")
    assert code == 6 and "TLS" in out and "ca_file" in out


def test_starttls_refused_by_a_server_without_tls(tmp_path: Path) -> None:
    plain = LocalDirectory(tmp_path / "plain")
    plain.build()
    plain.start()
    try:
        workdir = tmp_path / "cfg"
        workdir.mkdir()
        data = yaml.safe_load(write_local_config(workdir, plain).read_text())
        data["directory"]["tls"] = "starttls"
        path = workdir / "tls.yaml"
        path.write_text(yaml.safe_dump(data))
        code, out = run_with(path, "plan", "list")
    finally:
        plain.destroy()
    assert code == 6 and "starttls" in out.lower()


def test_ldaps_to_a_plain_port_is_a_tls_failure(coopctl: Coopctl, tmp_path: Path) -> None:
    uri = load(coopctl.config).directory.uri.replace("ldap://", "ldaps://")
    code, out = run_with(variant(coopctl, tmp_path, uri=uri, tls="ldaps"), "member", "list")
    assert code == 6 and "Hint:" in out


def test_cleartext_to_a_remote_server_is_refused(coopctl: Coopctl, tmp_path: Path) -> None:
    code, out = run_with(variant(coopctl, tmp_path, uri="ldap://10.77.250.250", tls="none"),
                         "member", "list")
    assert code == 5 and "in clear" in out


@pytest.mark.parametrize(("text", "where"), [
    ("directory: {uri: ldap://x}\nmail: {domain: demo.coop}\n", "directory: 'base_dn'"),
    ("directory: {uri: http://x, base_dn: dc=a, bind_dn: cn=b}\nmail: {domain: demo.coop}\n",
     "directory.uri"),
    ("directory: {uri: ldap://x, base_dn: dc=a, bind_dn: cn=b, bind_pw: x}\n"
     "mail: {domain: demo.coop}\n", "bind_pw"),
    ("directory: [\n", "not valid YAML"),
])
def test_config_errors_name_the_setting(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, out = run_with(path, "member", "list")
    assert code == 5 and where in out, out


def test_missing_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COOPCTL_CONFIG", raising=False)
    if os.path.exists("/etc/coopctl/coopctl.yaml"):
        pytest.skip("this machine has a system-wide coopctl config")
    result = CliRunner().invoke(cli, ["member", "list"])
    assert result.exit_code == 5 and "--config" in result.output
