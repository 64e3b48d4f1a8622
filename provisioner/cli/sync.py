"""`coopctl sync` and `coopctl journal`: the main job, and what it did.

The plan is printed like `terraform plan` (per service, per kind of change, with counts and the
members concerned) before anything changes; destructive changes (suspend, archive, purge) need
a confirmation or `--yes`; applying shows a progress bar on a terminal and one line per change
otherwise; the run ends with a summary and exits non-zero when a change failed or a service
could not be reached (so cron and monitoring notice).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import click

from provisioner.cli.common import (
    State,
    check_date_option,
    emit,
    handle_errors,
    json_option,
    pass_state,
)
from provisioner.errors import CoopError, InvalidInput

SYMBOLS = {"create": "+", "restore": "+", "welcome": "+", "quota": "~", "groups": "~",
           "update": "~", "suspend": "-", "archive": "-", "purge": "-"}
SHOWN_UIDS = 8


class SyncIncomplete(CoopError):
    exit_code = 8


def render_plan(plan) -> str:
    changes = plan.changes()
    lines = []
    by_service: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for c in changes:
        by_service[c.service][str(c.action)].append(c)
    destructive = len(plan.destructive_members())
    lines.append(f"Plan: {len(changes)} change(s) for {plan.members_read} member(s) read"
                 + (f", {destructive} member(s) with destructive changes" if destructive else ""))
    for service, actions in by_service.items():
        lines.append(f"  {service}")
        for action, items in actions.items():
            shown = ", ".join(_brief(c) for c in items[:SHOWN_UIDS])
            more = f" and {len(items) - SHOWN_UIDS} more" if len(items) > SHOWN_UIDS else ""
            lines.append(f"    {SYMBOLS.get(action, '*')} {action:<8} {len(items):>5}  "
                         f"{shown}{more}")
    for service, sp in plan.services.items():
        if sp.error:
            lines.append(f"  ! {service}: not reachable, nothing planned ({sp.error})")
    findings = plan.all_findings()
    if findings:
        lines.append(f"Findings ({len(findings)}):")
        for f in findings:
            lines.append(f"  {f.severity:<7} {f.service:<9} {f.uid}: {f.message}")
    if not changes:
        lines.append("No changes: every service matches the directory.")
    return "\n".join(lines)


def _brief(change) -> str:
    keep = {k: v for k, v in change.detail.items() if k in ("from", "to", "add", "remove")}
    if not keep:
        return change.uid
    text = " ".join(f"{k} {' '.join(v) if isinstance(v, list | tuple) else v}"
                    for k, v in keep.items())
    return f"{change.uid} ({text})"


@click.command("sync")
@click.option("--dry-run", is_flag=True, help="Show the plan; change nothing anywhere.")
@click.option("--service", "services", multiple=True, metavar="S",
              help="Only this service (repeatable): sso, mail, cloud, pads, wiki.")
@click.option("--member", "members", multiple=True, metavar="UID",
              help="Only this member (repeatable).")
@click.option("--yes", is_flag=True, help="Apply destructive changes without asking.")
@click.option("--force", is_flag=True,
              help="Run even when a guard stops it (few members read, many destructive changes).")
@json_option
@pass_state
@handle_errors
def sync(state: State, dry_run: bool, services: tuple[str, ...], members: tuple[str, ...],
         yes: bool, force: bool, as_json: bool) -> None:
    """Make every service match the directory: plan, confirm, apply, verify."""
    from provisioner.sync import CONNECTORS, Sync

    engine = Sync(state.config)
    plan = engine.plan(services, members, force=force)
    if not as_json:
        click.echo(render_plan(plan))
    changes = plan.changes()
    if dry_run or not changes:
        if not dry_run:
            engine.record_no_changes(plan)
        if as_json:
            emit(True, {"plan": plan.to_dict(), "applied": False}, "")
        _exit_for(plan, None)
        return
    if plan.destructive_members() and not yes:
        if as_json or not sys.stdin.isatty():
            raise InvalidInput(
                f"the plan suspends, archives or purges {len(plan.destructive_members())} "
                "member(s) and there is no terminal to ask for confirmation",
                "check it with `coopctl sync --dry-run`, then run with --yes")
        click.confirm("Apply these changes, destructive ones included?", abort=True)
    summary = engine.apply(plan, _progress(len(changes), as_json))
    # Verify: observe again the services that were changed (the others cannot have moved
    # because of this run), and count what is still to do.
    touched = sorted({c.service for c in changes} & set(CONNECTORS))
    summary.left = len(engine.plan(touched, members, force=True).changes()) if touched else 0
    if as_json:
        emit(True, {"plan": plan.to_dict(), "applied": True, "summary": summary.to_dict()}, "")
    else:
        click.echo(f"Applied {summary.applied} change(s), {len(summary.failed)} failed"
                   + (f", {len(summary.archives)} archive(s) written" if summary.archives else "")
                   + (f", {len(summary.purged)} member(s) purged" if summary.purged else "")
                   + f"; {summary.left} change(s) left for the next run.")
        for path in summary.archives:
            click.echo(f"  archive: {path}")
        for r in summary.failed:
            click.echo(f"  failed  {r.change.service} {r.change.action} {r.change.uid}: "
                       f"{r.error}")
    _exit_for(plan, summary)


def _exit_for(plan, summary) -> None:
    down = [s for s, p in plan.services.items() if p.error]
    failed = summary.failed if summary else []
    if down or failed:
        raise SyncIncomplete(
            ", ".join(filter(None, [
                f"{len(failed)} change(s) failed" if failed else "",
                f"not reachable: {', '.join(down)}" if down else ""])),
            "the next `coopctl sync` retries them; see `coopctl journal` for each failure")


def _progress(total: int, quiet: bool):
    """A progress bar on a terminal, one plain line per change otherwise."""
    done = 0
    bar = None
    if not quiet and sys.stdout.isatty():
        bar = click.progressbar(length=total, label="applying", file=sys.stdout)
        bar.__enter__()

    def step(result) -> None:
        nonlocal done
        done += 1
        if bar is not None:
            bar.update(1)
            if done >= total:
                bar.__exit__(None, None, None)
        elif not quiet:
            c = result.change
            word = "ok" if result.ok else f"FAILED: {result.error}"
            click.echo(f"[{done}/{total}] {c.service} {c.action} {c.uid}: {word}")

    return step


@click.command("journal")
@click.option("--member", "uid", help="Only this member's records.")
@click.option("--since", help="Only records from this date on (YYYY-MM-DD).")
@click.option("--service", help="Only this service's records.")
@json_option
@pass_state
@handle_errors
def journal(state: State, uid: str | None, since: str | None, service: str | None,
            as_json: bool) -> None:
    """Show what coopctl applied to the services: when, who, what, result."""
    from provisioner.journal import Journal

    check_date_option("--since", since)
    book = Journal(state.config.sync.journal)  # type: ignore[union-attr]
    try:
        entries = list(book.entries(uid=uid, since=since, service=service))
    finally:
        book.close()
    emit(as_json, [e.to_dict() for e in entries], lambda: "\n".join(
        f"{e.at}  {e.actor:<10} {e.service:<9} {e.action:<8} {e.uid:<24} {e.result}"
        + (f"  {json.dumps(e.detail, ensure_ascii=False)}" if e.detail else "")
        + (f"  error: {e.error}" if e.error else "")
        for e in entries) or "The journal has no records yet.")
