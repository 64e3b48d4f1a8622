"""`coopctl watch`: the change feed as a service, `--once` for cron and tests, `--status`."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from provisioner.cli.common import State, emit, handle_errors, json_option, pass_state
from provisioner.errors import InvalidInput

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(option: str, text: str) -> float:
    """Seconds from `250ms`, `30s`, `5m`, `24h`, `1d` or a plain number of seconds."""
    found = _DURATION.match(text)
    if not found:
        raise InvalidInput(f"{option} {text!r} is not a duration",
                           "write it as 250ms, 30s, 5m, 24h or 1d (0 turns it off)")
    return float(found.group(1)) * _UNITS[found.group(2)]


def _age(value: str | None, now: datetime) -> str:
    if not value:
        return "never"
    seconds = (now - datetime.fromisoformat(value)).total_seconds()
    return f"{value} ({seconds:.0f} s ago)" if seconds < 3600 else \
        f"{value} ({seconds / 3600:.1f} h ago)"


def render_status(s: dict[str, Any], stale: bool) -> str:
    now = datetime.now(UTC)
    last = s.get("last_batch") or {}
    full = s.get("last_full_sync") or {}
    error = s.get("last_error") or {}
    state = "not running (no heartbeat)" if stale else s.get("state", "?")
    lines = [
        f"Watcher:          {state} (pid {s.get('pid')}, started {s.get('started')})",
        f"Stream:           {'connected' if s.get('connected') and not stale else 'not connected'}"
        f", {s.get('counters', {}).get('reconnects', 0)} reconnection(s)",
        f"Applied up to:    the directory change of {_age(s.get('cookie_time'), now)}",
        f"Cookie stored:    {_age(s.get('cookie_stored'), now)}",
        f"Last batch:       {_age(last.get('at'), now)}"
        + (f": {last.get('members')} member(s), {last.get('applied')} applied, "
           f"{last.get('failed')} failed, {last.get('seconds')} s" if last else ""),
        f"Pending:          {s.get('pending', 0)} member(s) in hand, {s.get('retry', 0)} to retry",
        f"Last full sync:   {_age(full.get('at'), now)}",
        f"Heartbeat:        {_age(s.get('updated'), now)}",
    ]
    if error:
        lines.append(f"Last error:       {error.get('at')}: {error.get('error')}")
    alert = s.get("alert")
    if alert:
        lines.append(f"ALERT:            {alert.get('at')}: {alert.get('message')} "
                     f"({s.get('held', 0)} member(s) held)")
    return "\n".join(lines)


@click.command("watch")
@click.option("--once", is_flag=True,
              help="Apply what changed since the last run, then exit (cron, tests).")
@click.option("--status", "show_status", is_flag=True,
              help="Show how far behind the running watcher is, from its status file.")
@click.option("--batch-window", default="250ms", show_default=True, metavar="DURATION",
              help="Collect changes this long after the first one before applying them.")
@click.option("--batch-max", default=500, show_default=True, type=click.IntRange(1, 100000),
              help="Apply a batch at once when it holds this many entries.")
@click.option("--full-sync-every", default="24h", show_default=True, metavar="DURATION",
              help="Run a full sync this often from the watcher (0: never).")
@click.option("--heartbeat", default="30s", show_default=True, metavar="DURATION",
              help="Update the status file this often when idle.")
@click.option("--verbose", "-v", is_flag=True, help="Log every stream event.")
@json_option
@pass_state
@handle_errors
def watch(state: State, once: bool, show_status: bool, batch_window: str, batch_max: int,
          full_sync_every: str, heartbeat: str, verbose: bool, as_json: bool) -> None:
    """Follow the directory's changes and sync the members concerned within seconds.

    Runs until stopped (SIGTERM), reconnecting with backoff when the directory goes away;
    the cookie stored after each applied batch lets a restart resume where it stopped.
    """
    from provisioner.watch import status as status_mod
    from provisioner.watch.watcher import WatchError, WatchSettings

    window = parse_duration("--batch-window", batch_window)
    every = parse_duration("--full-sync-every", full_sync_every)
    beat = parse_duration("--heartbeat", heartbeat)
    if beat <= 0:
        raise InvalidInput("--heartbeat must be more than 0", "use e.g. 30s")
    if once and show_status:
        raise InvalidInput("give --once or --status, not both")
    config = state.config
    directory = Path(config.sync.state_dir) / "watch"  # type: ignore[union-attr]
    if show_status:
        current = status_mod.read(directory)
        if current is None:
            raise WatchError(f"no watcher status in {directory}",
                             "start the watcher (systemctl start coopctl-watch, or "
                             "`coopctl watch`); it writes the file at once")
        stale = status_mod.stale(current)
        emit(as_json, {**current, "stale": stale}, lambda: render_status(current, stale))
        if stale:
            raise WatchError("the watcher is not running: its heartbeat stopped",
                             "see `journalctl -u coopctl-watch`; systemd restarts it on failure")
        if current.get("alert"):
            raise WatchError("the watcher's guard is holding destructive changes",
                             "check with `coopctl sync --dry-run`; a successful "
                             "`coopctl sync` (with --force if it is right) clears the alert")
        return
    from provisioner.watch.sink import SyncSink
    from provisioner.watch.watcher import Watcher

    logger = logging.getLogger("coopctl.watch")
    if not logger.handlers:  # journald adds the time; the level is the first word
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    settings = WatchSettings(batch_window=window, batch_max=batch_max, full_sync_every=every,
                             heartbeat=beat)
    watcher = Watcher(config, SyncSink(config), settings)
    watcher.open()
    try:
        with watcher.signals():
            result = watcher.run(once=once)
    finally:
        watcher.close()
    if once:
        c = result["counters"]
        emit(as_json, json.loads(json.dumps(result, default=str)),
             f"Applied {c['changes_applied']} change(s) for {c['members']} member(s) in "
             f"{c['batches']} batch(es), {c['changes_failed']} failed"
             + (f"; {c['full_syncs']} full sync(s)" if c["full_syncs"] else "") + ".")
        if c["changes_failed"] or result.get("retry"):
            raise WatchError(f"{c['changes_failed']} change(s) failed; {result.get('retry', 0)} "
                             "member(s) to retry",
                             "the next `coopctl watch --once` retries them; see "
                             "`coopctl journal` for each failure")
