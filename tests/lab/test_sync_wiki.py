"""The wiki connector against the lab's real DokuWiki (host `apps`, authldap on `dir`).

Members are throwaway directory entries; the connector runs with the lab's inventory
(`InventoryHosts`: one SSH read to observe, one sync.yml run per batch) and an in-memory state
store. What members may do is asked of DokuWiki itself, logged in as them over XML-RPC
(`wiki.aclCheck`, `wiki.putPage`), so the test checks the rules as DokuWiki reads them
(encoding of names included), not only the file's text. Members are put in the remote API's
group so that they may call XML-RPC at all; that group is left out of their `MemberState`.
"""

from __future__ import annotations

import secrets
import tarfile
import xmlrpc.client
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from provisioner.services.base import (
    Action,
    ChangeResult,
    Desired,
    MemberState,
)
from provisioner.services.wiki import SYNC_BEGIN, WikiConnector, personal_rules
from tests.lab.helpers import lab_runtime
from tests.lab.test_wiki import REMOTE_GROUP, Wiki, logged_in

ACL_FILE = "/var/lib/dokuwiki/acl/acl.auth.php"
DATA = "/var/lib/dokuwiki/data"
EDIT, UPLOAD, DELETE = 2, 8, 16


@pytest.fixture
def wiki_sync(lab) -> WikiConnector:
    return WikiConnector(lab_runtime(lab, {}))


@pytest.fixture
def people(lab, throwaway_directory, wiki_sync) -> Iterator[Callable[..., dict[str, Any]]]:
    """Makes wiki members (uid, dn, password); purges what the sync left of them afterwards."""
    directory = throwaway_directory(prefix="wsync", given_name="Wiki", services=("wiki",))
    made: list[dict[str, Any]] = []

    def make(status: str = "active") -> dict[str, Any]:
        uid, dn, password = directory.member(status=status)
        directory.add_to_group(REMOTE_GROUP, dn)
        made.append({"uid": uid, "dn": dn, "password": password, "directory": directory})
        return made[-1]

    make.directory = directory  # type: ignore[attr-defined]
    yield make
    leftovers = {p["uid"]: Desired(state(p, "purged"), state(p, "purged").phase("wiki", True))
                 for p in made}
    wiki_sync.apply(wiki_sync.plan(leftovers, wiki_sync.observe()), lambda result: None)
    # Group rules are never removed by the sync (see provisioner/services/wiki.py): the test's
    # throwaway groups are gone from the directory, so their rules and pages go by hand.
    lab.host("apps").run(f"sed -i '/^group:wsync-team-/d' {ACL_FILE}; "
                         f"rm -rf {DATA}/pages/group/wsync-team-* {DATA}/meta/group/wsync-team-* "
                         f"{DATA}/attic/group/wsync-team-*")


def state(person: dict[str, Any], status: str, *groups: str) -> MemberState:
    return MemberState(uid=person["uid"], mail=f"{person['uid']}@demo.coop",
                       display_name=f"Wiki Test {person['uid']}", language="en", status=status,
                       services=frozenset({"wiki"}), groups=frozenset(groups), mail_quota=None,
                       cloud_quota=None)


def desired(*members: MemberState, purge_due: bool = False) -> dict[str, Desired]:
    return {m.uid: Desired(m, m.phase("wiki", purge_due)) for m in members}


def run(conn: WikiConnector, wanted: dict[str, Desired]) -> list[ChangeResult]:
    """Observe, plan and apply once, as the sync does."""
    results: list[ChangeResult] = []
    conn.apply(conn.plan(wanted, conn.observe()), results.append)
    assert all(r.ok for r in results), [(r.change.describe(), r.error) for r in results]
    return results


def rpc_as(lab, person: dict[str, Any]) -> Wiki:
    wiki = Wiki(lab)
    assert wiki.rpc("dokuwiki.login", person["uid"], person["password"]) is True
    return wiki


def acl(lab) -> str:
    return lab.host("apps").file(ACL_FILE).content_string


def test_group_and_personal_namespaces(lab, wiki_sync, people):
    ann, bob = people(), people()
    team = f"wsync-team-{secrets.token_hex(3)}"  # '-' is written %2d in acl.auth.php
    people.directory.add_to_group(team, ann["dn"])  # type: ignore[attr-defined]
    wanted = desired(state(ann, "active", team), state(bob, "active"))

    results = run(wiki_sync, wanted)
    assert {(r.change.action, r.change.uid) for r in results} >= {
        (Action.CREATE, ann["uid"]), (Action.CREATE, bob["uid"]), (Action.GROUPS, ann["uid"])}
    assert wiki_sync.plan(wanted, wiki_sync.observe()) == []  # in line now: nothing to do

    as_ann, as_bob = rpc_as(lab, ann), rpc_as(lab, bob)
    group_page = f"group:{team}:page"
    assert as_ann.rpc("wiki.aclCheck", group_page) >= EDIT
    assert as_bob.rpc("wiki.aclCheck", group_page) == 0
    assert as_ann.rpc("wiki.putPage", group_page, "Team notes\n", {}) is True
    with pytest.raises((xmlrpc.client.Fault, PermissionError)):  # DokuWiki answers 403
        as_bob.rpc("wiki.putPage", group_page, "Not my team\n", {})

    mine = f"user:{ann['uid']}:start"
    assert as_ann.rpc("wiki.aclCheck", mine) == DELETE
    assert as_bob.rpc("wiki.aclCheck", mine) == 0
    assert "Welcome to" in as_ann.rpc("wiki.getPage", mine)
    # Nobody writes in a namespace the sync has not given out yet.
    assert as_bob.rpc("wiki.aclCheck", "user:nobody-yet:start") <= 1

    # A deploy afterwards keeps the sync's rules and changes nothing (one owner per block).
    before = acl(lab)
    recap = lab.deploy(limit="apps")
    assert recap["failed"] == 0 and recap["changed"] == 0, recap
    after = acl(lab)
    assert after == before
    assert SYNC_BEGIN in after and personal_rules(ann["uid"])[1] in after
    assert wiki_sync.plan(wanted, wiki_sync.observe()) == []


def test_narrowed_sync_keeps_the_others(lab, wiki_sync, people):
    ann, bob = people(), people()
    run(wiki_sync, desired(state(ann, "active"), state(bob, "active")))
    run(wiki_sync, desired(state(ann, "active")))  # nothing to do for ann; bob not passed
    text = acl(lab)
    assert personal_rules(bob["uid"])[1] in text and personal_rules(ann["uid"])[1] in text


def test_suspension_ends_the_live_session(lab, wiki_sync, people):
    ann = people()
    run(wiki_sync, desired(state(ann, "active")))
    browser = Wiki(lab)
    assert logged_in(browser.login(ann["uid"], ann["password"]), ann["uid"])

    people.directory.set_status(ann["dn"], "suspended")  # type: ignore[attr-defined]
    results = run(wiki_sync, desired(state(ann, "suspended")))
    assert [r.change.action for r in results] == [Action.SUSPEND]
    # Well within auth_security_timeout of the login: only the deleted session logs them off.
    assert not logged_in(browser.get("/doku.php", id="start").text, ann["uid"])
    assert personal_rules(ann["uid"])[1] in acl(lab)  # nothing deleted
    assert wiki_sync.plan(desired(state(ann, "suspended")), wiki_sync.observe()) == []


def test_export_then_purge(lab, wiki_sync, people, tmp_path):
    ann = people()
    run(wiki_sync, desired(state(ann, "active")))
    assert rpc_as(lab, ann).rpc("wiki.putPage", f"user:{ann['uid']}:notes", "My notes\n",
                                {}) is True

    files = wiki_sync.export(state(ann, "departed"), tmp_path / "wiki")
    assert files == [tmp_path.resolve() / "wiki" / "wiki.tar"]
    with tarfile.open(files[0]) as tar:
        names = tar.getnames()
        notes = tar.extractfile(f"pages/user/{ann['uid']}/notes.txt")
        assert notes is not None and notes.read() == b"My notes\n"
    assert f"pages/user/{ann['uid']}/start.txt" in names
    assert any(n.startswith(f"meta/user/{ann['uid']}/") for n in names)
    apps = lab.host("apps")
    assert apps.run("ls /tmp | grep -c coopctl-wiki- || true").stdout.strip() == "0"

    leaving = desired(state(ann, "departed"), purge_due=True)
    results = run(wiki_sync, leaving)
    assert [r.change.action for r in results] == [Action.PURGE]
    assert ann["uid"] not in acl(lab)
    for area in ("pages", "attic", "meta"):
        assert not apps.file(f"{DATA}/{area}/user/{ann['uid']}").exists, area
    assert wiki_sync.plan(leaving, wiki_sync.observe()) == []
