"""The journal: append-only records chained by hashes, marks, the last run's member count."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from provisioner.journal import Journal


def test_records_are_kept_in_order_and_filtered(tmp_path: Path) -> None:
    book = Journal(tmp_path / "j.sqlite")
    run = book.start_run()
    book.append(run, "cloud", "ana", "create", {"quota": "5 GB"}, True)
    book.append(run, "mail", "bob", "suspend", {}, False, "host unreachable")
    entries = list(book.entries())
    assert [(e.service, e.uid, e.action, e.result) for e in entries] == [
        ("cloud", "ana", "create", "ok"), ("mail", "bob", "suspend", "failed")]
    assert entries[1].error == "host unreachable"
    assert [e.uid for e in book.entries(uid="bob")] == ["bob"]
    assert [e.uid for e in book.entries(service="cloud")] == ["ana"]
    assert list(book.entries(since="2999-01-01")) == []
    assert (tmp_path / "j.sqlite").stat().st_mode & 0o077 == 0


def test_chain_names_the_first_record_edited_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    book = Journal(path)
    run = book.start_run()
    for uid in ("a", "b", "c"):
        book.append(run, "cloud", uid, "create", {}, True)
    assert book.verify_chain() is None
    book.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE journal SET uid = 'mallory' WHERE id = 2")
    db.commit()
    db.close()
    assert Journal(path).verify_chain() == 2


def test_marks_and_last_successful_member_count(tmp_path: Path) -> None:
    book = Journal(tmp_path / "j.sqlite")
    assert book.last_member_count() is None
    ok = book.start_run()
    book.finish_run(ok, 120, "ok")
    partial = book.start_run()
    book.finish_run(partial, 3, "partial")
    assert book.last_member_count() == 120
    book.mark("mail", "welcome", "ana")
    book.mark("mail", "welcome", "ana")
    assert book.marks("mail", "welcome") == {"ana"}
    book.unmark("mail", "welcome", "ana")
    assert book.marks("mail", "welcome") == set()
