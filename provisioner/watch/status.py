"""How far behind the watcher is: `status.json` and `metrics.prom` in `<state_dir>/watch/`.

Both are rewritten whole (temporary file + rename) after every batch and at every heartbeat,
so a reader never sees half a file. `coopctl watch --status` reads the first; the second is in
Prometheus' text format for node_exporter's textfile collector (no HTTP listener to harden).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.prom"
# A heartbeat older than this many heartbeat intervals means the watcher is not running.
STALE_AFTER = 3

_CSN = re.compile(rb"csn=(\d{14})(?:\.\d+)?Z")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def cookie_time(cookie: bytes | None) -> str | None:
    """The time of the last directory change a cookie covers (its CSN), ISO 8601."""
    if not cookie:
        return None
    found = _CSN.findall(cookie)
    if not found:
        return None
    stamp = max(found).decode()
    return datetime.strptime(stamp, "%Y%m%d%H%M%S").replace(tzinfo=UTC).isoformat()


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)  # read by monitoring; holds no secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _epoch(value: str | None) -> float:
    return datetime.fromisoformat(value).timestamp() if value else 0.0


def write(directory: Path, status: dict[str, Any]) -> None:
    _write(directory / STATUS_FILE, json.dumps(status, indent=2, sort_keys=True) + "\n")
    _write(directory / METRICS_FILE, metrics(status))


def metrics(s: dict[str, Any]) -> str:
    counters = s.get("counters", {})
    last = s.get("last_batch") or {}
    gauges = [
        ("up", "1 while the watcher runs (0 once it stopped)", int(s.get("state") != "stopped")),
        ("connected", "1 while the change stream is open", int(bool(s.get("connected")))),
        ("heartbeat_timestamp_seconds", "last status update", _epoch(s.get("updated"))),
        ("last_change_timestamp_seconds", "time of the last directory change applied "
         "(the stored cookie's CSN)", _epoch(s.get("cookie_time"))),
        ("last_batch_timestamp_seconds", "end of the last applied batch", _epoch(last.get("at"))),
        ("last_batch_duration_seconds", "time the last batch took", last.get("seconds", 0)),
        ("last_full_sync_timestamp_seconds", "end of the last full sync",
         _epoch((s.get("last_full_sync") or {}).get("at"))),
        ("pending_members", "members received and not yet applied", s.get("pending", 0)),
        ("retry_members", "members whose last change failed (retried)", s.get("retry", 0)),
        ("held_members", "members held by the deletion guard", s.get("held", 0)),
        ("alert", "1 when the guard stopped destructive actions", int(bool(s.get("alert")))),
    ]
    lines = []
    for name, help_text, value in gauges:
        lines += [f"# HELP coopctl_watch_{name} {help_text}",
                  f"# TYPE coopctl_watch_{name} gauge", f"coopctl_watch_{name} {value}"]
    for name in ("batches", "members", "changes_applied", "changes_failed", "reconnects",
                 "errors", "full_syncs"):
        lines += [f"# TYPE coopctl_watch_{name}_total counter",
                  f"coopctl_watch_{name}_total {counters.get(name, 0)}"]
    return "\n".join(lines) + "\n"


def read(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stale(status: dict[str, Any], now: datetime | None = None) -> bool:
    """The heartbeat stopped: the watcher died without writing `stopped`."""
    if status.get("state") == "stopped":
        return False
    now = now or datetime.now(UTC)
    beat = status.get("heartbeat_seconds", 30)
    updated = status.get("updated")
    return updated is None or (now - datetime.fromisoformat(updated)).total_seconds() \
        > STALE_AFTER * beat
