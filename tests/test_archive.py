"""Departure archives: a manifest of checksums, verified after writing; damage is caught."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from provisioner import archive


def make(tmp_path: Path) -> Path:
    stage = archive.staging_dir(tmp_path / "archives", "ana")
    (stage / "mail").mkdir()
    (stage / "mail" / "mailbox.tar").write_bytes(b"mail of ana" * 1000)
    (stage / "wiki").mkdir()
    (stage / "wiki" / "wiki.tar").write_bytes(b"pages")
    return archive.pack(stage, tmp_path / "archives", "ana", {"mail": "ana@demo.coop"})


def test_pack_writes_a_verified_archive_with_its_manifest(tmp_path: Path) -> None:
    path = make(tmp_path)
    assert path.stat().st_mode & 0o077 == 0
    manifest = archive.verify(path)
    assert manifest["uid"] == "ana" and manifest["mail"] == "ana@demo.coop"
    assert [f["path"] for f in manifest["files"]] == ["mail/mailbox.tar", "wiki/wiki.tar"]
    assert archive.find_verified(tmp_path / "archives", "ana") == path
    assert not list((tmp_path / "archives").glob("*.partial"))


def test_a_damaged_or_incomplete_archive_does_not_verify(tmp_path: Path) -> None:
    path = make(tmp_path)
    data = bytearray(path.read_bytes())
    spot = data.index(b"mail of ana")
    data[spot] ^= 0xFF  # one flipped byte in the mailbox
    path.write_bytes(bytes(data))
    with pytest.raises(archive.ArchiveError, match="does not match its checksum"):
        archive.verify(path)
    assert archive.find_verified(tmp_path / "archives", "ana") is None
    extra = tmp_path / "extra.tar"
    with tarfile.open(path) as src, tarfile.open(extra, "w") as dst:
        for member in src.getmembers():
            if member.name != "wiki/wiki.tar":
                dst.addfile(member, src.extractfile(member))
    with pytest.raises(archive.ArchiveError, match="files and manifest differ"):
        archive.verify(extra)
