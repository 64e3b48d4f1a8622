"""The wiki connector without a wiki: ACL encoding, the sync's block, plans, and the batch that
apply() hands to playbooks/sync.yml (hosts and state store are in-memory doubles)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from provisioner.services.base import (
    Action,
    ChangeResult,
    Desired,
    MemberState,
    Phase,
    ServiceUnavailable,
)
from provisioner.services.wiki import (
    AclFile,
    SyncBlock,
    WikiConnector,
    WikiObservation,
    acl_decode,
    acl_encode,
    group_rules,
    page_name,
    parse_observation,
    personal_rules,
)
from tests.sync_helpers import MemoryState, runtime

HEADER = "# acl.auth.php\n# <?php exit()?>\n# Don't modify the lines above\n"
DEPLOY = ("# BEGIN coopctl deploy (wiki_acl)\n*\t@ALL\t0\n*\t@user\t8\n"
          "# END coopctl deploy (wiki_acl)\n")


def member(uid: str, *, groups: tuple[str, ...] = (), status: str = "active") -> MemberState:
    return MemberState(uid=uid, mail=f"{uid}@demo.coop", display_name=f"Name {uid}",
                       language="fr", status=status, services=frozenset({"wiki"}),
                       groups=frozenset(groups), mail_quota=None, cloud_quota=None)


def desired(*members: MemberState, phase: Phase = Phase.ACTIVE) -> dict[str, Desired]:
    return {m.uid: Desired(m, phase) for m in members}


def acl_text(*block: str, extra: str = "") -> str:
    lines = "".join(f"{line}\n" for line in block)
    sync = f"# BEGIN coopctl sync\n{lines}# END coopctl sync\n"
    return HEADER + DEPLOY + sync + extra


def listing(acl: str, namespaces: Sequence[str] = ()) -> str:
    out = acl
    for area in ("pages", "media", "attic", "media_attic", "meta", "media_meta"):
        out += f"\n@@coopctl-wiki-area {area}\n"
        if area == "pages":
            out += "".join(f"{ns}/\n" for ns in namespaces) + "start.txt\n"
    return out


class Hosts:
    def __init__(self, answer: str = "", outcome: Mapping[str, Any] | None = None) -> None:
        self.answer = answer
        self.outcome = outcome or {"ok": True, "error": None, "failed_items": {}, "changed": 1}
        self.reads: list[Sequence[str]] = []
        self.runs: list[dict[str, Any]] = []

    def read(self, group: str, argv: Sequence[str], timeout: float = 60) -> str:
        self.reads.append(argv)
        if self.answer is None:
            raise OSError("unreachable")
        return self.answer

    def playbook(self, name: str, extravars: Mapping[str, Any]) -> dict[str, Any]:
        self.runs.append(dict(extravars))
        return dict(self.outcome)


def connector(hosts: Hosts, state: MemoryState | None = None) -> WikiConnector:
    return WikiConnector(runtime(hosts, state))


def observation(*block: str, namespaces: Sequence[str] = (), created: Sequence[str] = (),
                suspended: Sequence[str] = (), extra: str = "") -> WikiObservation:
    acl = AclFile.parse(acl_text(*block, extra=extra))
    return WikiObservation(block=SyncBlock.parse(acl.sync_block or []), has_block=True,
                           hand_rules=acl.hand_rules, namespaces=set(namespaces),
                           created=set(created), suspended=set(suspended))


# -- names as DokuWiki writes them ---------------------------------------------------------------

def test_acl_encode_follows_auth_nameencode() -> None:
    assert acl_encode("jan.vanderberg") == "jan%2evanderberg"
    assert acl_encode("wiki-editors") == "wiki%2deditors"
    assert acl_encode("a_b c") == "a%5fb%20c"
    assert acl_encode("\t") == "%9"  # dechex: no padding
    assert acl_encode("zoë") == "zoë"  # non-ASCII is left alone
    assert acl_decode(acl_encode("dupre-noel.x_y")) == "dupre-noel.x_y"


def test_page_names_of_valid_names_are_unchanged() -> None:
    assert page_name("jan.vanderberg") == "jan.vanderberg"
    assert page_name("wiki-editors") == "wiki-editors"
    assert page_name("Board Members") == "board_members"


def test_rules_of_a_member_and_a_group() -> None:
    assert personal_rules("jan.vanderberg") == [
        "user:jan.vanderberg:*\t@ALL\t0", "user:jan.vanderberg:*\tjan%2evanderberg\t16"]
    assert group_rules("wiki-editors") == [
        "group:wiki-editors:*\t@ALL\t0", "group:wiki-editors:*\t@wiki%2deditors\t8"]


# -- reading the file ----------------------------------------------------------------------------

def test_file_is_split_by_owner() -> None:
    text = acl_text(*personal_rules("ann"), extra="start\tbob\t16\n")
    acl = AclFile.parse(text)
    assert acl.sync_block == personal_rules("ann")
    assert acl.hand_rules == ["start\tbob\t16"]  # the deployment's block is not "by hand"
    assert AclFile.parse(HEADER + DEPLOY).sync_block is None


def test_observe_is_one_read_and_reports_hand_edits() -> None:
    hosts = Hosts(listing(acl_text(*personal_rules("ann"), extra="secret\tbob\t1\n"),
                          namespaces=["ann", "old.member"]))
    state = MemoryState()
    state.mark("wiki", "created", "ann")
    observed = connector(hosts, state).observe()
    assert len(hosts.reads) == 1
    assert hosts.reads[0][:2] == ["sh", "-c"] and hosts.reads[0][-2:] == [
        "/var/lib/dokuwiki/acl/acl.auth.php", "/var/lib/dokuwiki/data"]
    assert observed.namespaces == {"ann", "old.member"}  # start.txt is a page, not a namespace
    assert observed.created == {"ann"}
    assert set(observed.accounts) == {"ann", "old.member"}
    assert [(f.uid, "edited by hand" in f.message) for f in observed.findings] == [("bob", True)]


def test_observe_unreachable_is_service_unavailable() -> None:
    hosts = Hosts()
    hosts.answer = None  # type: ignore[assignment]
    with pytest.raises(ServiceUnavailable):
        connector(hosts).observe()


def test_parse_observation_without_trailing_newline() -> None:
    acl, namespaces = parse_observation("x\ty\t1\n@@coopctl-wiki-area pages\nann/\n")
    assert acl == "x\ty\t1" and namespaces == {"ann"}


# -- plans ---------------------------------------------------------------------------------------

def test_new_member_gets_namespace_and_group_rules() -> None:
    changes = connector(Hosts()).plan(desired(member("ann", groups=("board",))), observation())
    assert [(c.action, c.uid) for c in changes] == [(Action.CREATE, "ann"), (Action.GROUPS, "ann")]
    assert changes[0].detail["namespace"] == "user:ann"
    assert changes[1].detail == {"add": ["board"]}


def test_in_line_member_needs_nothing() -> None:
    observed = observation(*group_rules("board"), *personal_rules("ann"), namespaces=["ann"],
                           created=["ann"])
    assert connector(Hosts()).plan(desired(member("ann", groups=("board",))), observed) == []


def test_member_who_deleted_their_start_page_gets_no_new_one() -> None:
    observed = observation(*personal_rules("ann"), created=["ann"])  # namespace gone
    assert connector(Hosts()).plan(desired(member("ann")), observed) == []


def test_failed_create_is_retried() -> None:
    observed = observation(*personal_rules("ann"))  # rule written, start page not, no mark
    changes = connector(Hosts()).plan(desired(member("ann")), observed)
    assert [c.action for c in changes] == [Action.CREATE]


def test_suspension_once_then_restore() -> None:
    wiki = connector(Hosts())
    observed = observation(*personal_rules("ann"), namespaces=["ann"], created=["ann"])
    gone = desired(member("ann", status="suspended"), phase=Phase.DISABLED)
    assert [c.action for c in wiki.plan(gone, observed)] == [Action.SUSPEND]
    observed.suspended.add("ann")
    assert wiki.plan(gone, observed) == []  # rule and pages kept, sessions already ended
    back = wiki.plan(desired(member("ann")), observed)
    assert [c.action for c in back] == [Action.RESTORE]


def test_purge_when_anything_is_left() -> None:
    wiki = connector(Hosts())
    leaving = desired(member("ann", status="departed"), phase=Phase.PURGE)
    assert [c.action for c in wiki.plan(leaving, observation(*personal_rules("ann")))] == [
        Action.PURGE]
    assert [c.action for c in wiki.plan(leaving, observation(namespaces=["ann"]))] == [
        Action.PURGE]
    assert [c.action for c in wiki.plan(leaving, observation(extra="x\tann\t1\n"))] == [
        Action.PURGE]
    gone = desired(member("ann", status="purged"), phase=Phase.GONE)
    assert wiki.plan(gone, observation()) == []


def test_narrowed_sync_keeps_the_others_rules() -> None:
    hosts = Hosts(listing(acl_text(*group_rules("board"), *personal_rules("bob"),
                                   *personal_rules("cid")), namespaces=["bob", "cid"]))
    wiki = connector(hosts)
    observed = wiki.observe()
    only_ann = desired(member("ann", groups=("wiki-editors",)))
    changes = wiki.plan(only_ann, observed)
    assert {c.uid for c in changes} == {"ann"}
    wiki.apply(changes, lambda result: None)
    rules = hosts.runs[0]["coop_sync_wiki"]["rules"]
    assert rules == [*group_rules("board"), *group_rules("wiki-editors"), *personal_rules("ann"),
                     *personal_rules("bob"), *personal_rules("cid")]


# -- apply ---------------------------------------------------------------------------------------

def test_apply_is_one_run_with_block_and_items() -> None:
    hosts = Hosts(listing(acl_text(*personal_rules("zed"), extra="start\tzed\t1\n"),
                          namespaces=["zed", "bob"]))
    state = MemoryState()
    state.mark("wiki", "created", "zed")
    wiki = connector(hosts, state)
    plan = wiki.plan({**desired(member("ann", groups=("board",))),
                      **desired(member("bob", status="suspended"), phase=Phase.DISABLED),
                      **desired(member("zed", status="departed"), phase=Phase.PURGE)},
                     wiki.observe())
    results: list[ChangeResult] = []
    wiki.apply(plan, results.append)
    assert len(hosts.runs) == 1
    batch = hosts.runs[0]["coop_sync_wiki"]
    assert batch["rules"] == [*group_rules("board"), *personal_rules("ann")]  # zed's are gone
    assert [(i["uid"], i["action"]) for i in batch["changes"]] == [
        ("ann", "create"), ("bob", "suspend"), ("zed", "purge")]
    assert batch["changes"][0]["language"] == "fr" and batch["changes"][0]["ns"] == "ann"
    assert batch["changes"][2]["acl_user"] == "zed"
    assert all(r.ok for r in results) and len(results) == 4
    assert state.marks("wiki", "created") == {"ann"}
    assert state.marks("wiki", "suspended") == {"bob"}


def test_failed_item_fails_that_member_only() -> None:
    hosts = Hosts(listing(acl_text()),
                  outcome={"ok": True, "error": None, "failed_items": {"bob": "disk full"}})
    wiki = connector(hosts)
    plan = wiki.plan(desired(member("ann"), member("bob")), wiki.observe())
    results: list[ChangeResult] = []
    wiki.apply(plan, results.append)
    assert {(r.change.uid, r.ok, r.error) for r in results} == {
        ("ann", True, None), ("bob", False, "disk full")}
    assert wiki.runtime.state.marks("wiki", "created") == {"ann"}


def test_failed_run_fails_every_change() -> None:
    hosts = Hosts(listing(acl_text()), outcome={"ok": False, "error": "host unreachable",
                                                "failed_items": {}})
    wiki = connector(hosts)
    results: list[ChangeResult] = []
    wiki.apply(wiki.plan(desired(member("ann"), member("bob")), wiki.observe()), results.append)
    assert [r.ok for r in results] == [False, False]
    assert results[0].error == "host unreachable"


def test_restore_alone_runs_no_playbook() -> None:
    hosts = Hosts(listing(acl_text(*personal_rules("ann")), namespaces=["ann"]))
    state = MemoryState()
    state.mark("wiki", "created", "ann")
    state.mark("wiki", "suspended", "ann")
    wiki = connector(hosts, state)
    results: list[ChangeResult] = []
    wiki.apply(wiki.plan(desired(member("ann")), wiki.observe()), results.append)
    assert hosts.runs == [] and [r.ok for r in results] == [True]
    assert state.marks("wiki", "suspended") == set()


def test_export_raises_when_the_run_fails(tmp_path) -> None:
    hosts = Hosts(outcome={"ok": True, "error": None, "failed_items": {"ann": "tar failed"}})
    with pytest.raises(ServiceUnavailable, match="tar failed"):
        connector(hosts).export(member("ann"), tmp_path / "wiki")
    item = hosts.runs[0]["coop_sync_wiki"]["changes"][0]
    assert item["action"] == "export" and item["dest"] == str((tmp_path / "wiki").resolve())
    assert "rules" not in hosts.runs[0]["coop_sync_wiki"]
