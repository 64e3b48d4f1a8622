"""The wiki role's own module coop_wiki_pages, on its own: many pages in one run, none kept."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

MODULE = Path(__file__).resolve().parent.parent / "playbooks/roles/wiki/library/coop_wiki_pages.py"


def load():
    spec = importlib.util.spec_from_file_location("coop_wiki_pages", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_writes_missing_pages_and_keeps_existing_ones(tmp_path: Path) -> None:
    m = load()
    (tmp_path / "user" / "bob").mkdir(parents=True)
    (tmp_path / "user" / "bob" / "start.txt").write_text("Bob's own words")
    pages = [{"path": "user/ana/start.txt", "content": "====== Ana ======\n"},
             {"path": "user/bob/start.txt", "content": "template text"}]
    uid, gid = os.getuid(), os.getgid()
    assert m.write_pages(str(tmp_path), pages, uid, gid, 0o640, 0o750, check=True) == [
        "user/ana/start.txt"]
    assert not (tmp_path / "user" / "ana").exists()  # check mode writes nothing
    assert m.write_pages(str(tmp_path), pages, uid, gid, 0o640, 0o750, check=False) == [
        "user/ana/start.txt"]
    assert (tmp_path / "user/ana/start.txt").read_text() == "====== Ana ======\n"
    assert (tmp_path / "user/ana/start.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "user/ana").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "user/bob/start.txt").read_text() == "Bob's own words"
    assert m.write_pages(str(tmp_path), pages, uid, gid, 0o640, 0o750, check=False) == []
    assert not [p for p in (tmp_path / "user/ana").iterdir() if p.name.startswith(".coop-")]


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "user/../../x", ""])
def test_refuses_paths_outside_the_pages_directory(tmp_path: Path, path: str) -> None:
    m = load()
    with pytest.raises(ValueError, match="unsafe page path"):
        m.write_pages(str(tmp_path), [{"path": path, "content": "x"}], os.getuid(),
                      os.getgid(), 0o644, 0o755, check=False)


def test_members_start_pages_come_from_one_text_per_language(tmp_path: Path) -> None:
    m = load()
    texts = {"fr": "====== @@NAME@@ ======\nBienvenue dans user:@@NS@@\n",
             "en": "====== @@NAME@@ ======\nWelcome to user:@@NS@@\n"}
    pages = m.member_pages([{"ns": "ana", "name": "Ana Lima", "language": "fr"},
                            {"ns": "bob", "name": "Bob", "language": "nl"}], texts)
    assert pages == [
        {"path": "user/ana/start.txt",
         "content": "====== Ana Lima ======\nBienvenue dans user:ana\n"},
        {"path": "user/bob/start.txt", "content": "====== Bob ======\nWelcome to user:bob\n"}]
