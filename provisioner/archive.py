"""Departure archives: one tar per member, with a manifest of checksums, verified after writing.

Nothing of a departed member is removed from any service before their archive exists and has
been re-read and checked. The archive is written as ``<uid>-<YYYYMMDD>.tar.partial``, synced
to disk, verified, then renamed: a crash leaves either no archive or a complete one, and a
verified archive is never overwritten (a purge that stopped half-way must not replace a full
archive with one made from what was left).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from provisioner.errors import CoopError

MANIFEST = "MANIFEST.json"


class ArchiveError(CoopError):
    """An archive could not be written, or does not match its manifest."""


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def staging_dir(archive_dir: Path, uid: str) -> Path:
    """An empty directory where each service's export writes (``<stage>/<service>/``)."""
    stage = archive_dir / ".staging" / uid
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True, mode=0o700)
    return stage


def find_verified(archive_dir: Path, uid: str) -> Path | None:
    """The member's newest archive that verifies, if any."""
    for path in sorted(archive_dir.glob(f"{uid}-*.tar"), reverse=True):
        try:
            verify(path)
        except ArchiveError:
            continue
        return path
    return None


def pack(stage: Path, archive_dir: Path, uid: str, about: dict[str, Any]) -> Path:
    """Pack `stage` into the member's archive with a manifest; verify it; return its path."""
    files = sorted(p for p in stage.rglob("*") if p.is_file())
    manifest = {
        "uid": uid,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **about,
        "files": [{"path": p.relative_to(stage).as_posix(), "size": p.stat().st_size,
                   "sha256": _sha256(p)} for p in files],
    }
    day = datetime.now(UTC).strftime("%Y%m%d")
    final = archive_dir / f"{uid}-{day}.tar"
    partial = final.with_suffix(".tar.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        data = json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8")
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mode = len(data), 0o600
        tar.addfile(info, io.BytesIO(data))
        for p in files:
            tar.add(p, arcname=p.relative_to(stage).as_posix(), recursive=False)
        tar.close()
        raw.flush()
        os.fsync(raw.fileno())
    verify(partial)
    os.replace(partial, final)
    shutil.rmtree(stage, ignore_errors=True)
    return final


def verify(path: Path) -> dict[str, Any]:
    """Re-read the archive and check every file against the manifest; return the manifest."""
    try:
        with tarfile.open(path, mode="r") as tar:
            member = tar.extractfile(MANIFEST)
            if member is None:
                raise ArchiveError(f"{path} has no {MANIFEST}")
            manifest = json.loads(member.read())
            names = {m.name for m in tar.getmembers() if m.isfile()} - {MANIFEST}
            listed = {f["path"] for f in manifest["files"]}
            if names != listed:
                raise ArchiveError(f"{path}: files and manifest differ "
                                   f"({sorted(names ^ listed)[:3]})")
            for f in manifest["files"]:
                handle = tar.extractfile(f["path"])
                if handle is None or hashlib.file_digest(handle, "sha256").hexdigest() != \
                        f["sha256"]:
                    raise ArchiveError(f"{path}: {f['path']} does not match its checksum")
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise ArchiveError(f"cannot read the archive {path}: {exc}") from None
    return manifest
