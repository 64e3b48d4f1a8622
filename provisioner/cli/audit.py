"""`coopctl audit`: the auditors' tool, strictly read-only; `coopctl audit journal`.

The exit status follows `--fail-on` (findings at or above that severity exit 9), so cron or a
monitoring system can run the audit and alert on it; `--fail-on none` always exits 0 when the
audit itself could run.
"""

from __future__ import annotations

import os
from pathlib import Path

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

FAIL_ON = ("info", "low", "medium", "high", "critical", "none")


class AuditFailed(CoopError):
    exit_code = 9


@click.group("audit", invoke_without_command=True)
@click.option("--service", "services", multiple=True, metavar="S",
              help="Only this service (repeatable): sso, mail, cloud, pads, wiki.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text",
              show_default=True, help="text for the terminal, json for machines, html for people.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report to this file (mode 0600) instead of standard output.")
@click.option("--fail-on", type=click.Choice(FAIL_ON), default="high", show_default=True,
              help="Exit 9 when a finding is at least this severe.")
@click.option("--as-of", metavar="DATE",
              help="Access matrix as of this past date (YYYY-MM-DD), from the journal.")
@click.option("--language", type=click.Choice(["en", "fr"]), default="en", show_default=True,
              help="Language of the HTML report's labels.")
@click.option("--checks/--no-checks", "run_checks", default=True, show_default=True,
              help="Run the infrastructure checks on the inventory's hosts.")
@click.pass_context
@pass_state
@handle_errors
def audit(state: State, ctx: click.Context, services: tuple[str, ...], fmt: str,
          output: Path | None, fail_on: str, as_of: str | None, language: str,
          run_checks: bool) -> None:
    """Prove that the servers are in the state the directory says (changes nothing)."""
    if ctx.invoked_subcommand is not None:
        return
    from provisioner.audit import render
    from provisioner.audit.model import Severity
    from provisioner.audit.run import run_audit

    check_date_option("--as-of", as_of)
    if output is not None:
        _check_output(output)
    config = state.config
    checks = None
    if run_checks and config.inventory is not None:
        from provisioner.audit.infra import run_checks as infra_checks

        def checks():
            return infra_checks(config)

    result = run_audit(config, services, as_of=as_of, checks=checks)
    text = {"json": render.render_json, "text": render.render_text}.get(fmt)
    body = text(result) if text else render.render_html(result, language)
    if output is not None:
        _write_private(output, body)
        click.echo(f"audit report written to {output}")
    else:
        click.echo(body)
    if fail_on == "none":
        return
    threshold = Severity.parse(fail_on)
    failing = [f for f in result.findings if f.severity >= threshold]
    if failing:
        raise AuditFailed(f"{len(failing)} finding(s) at or above {fail_on}",
                          "each finding says how to fix it; `--fail-on` sets the threshold")


def _check_output(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise InvalidInput(f"cannot write the report to {path}: {parent} is not a writable "
                           "directory", "choose an existing directory for --output")


def _write_private(path: Path, body: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(body)
    os.chmod(path, 0o600)


@audit.command("journal")
@json_option
@pass_state
@handle_errors
def audit_journal(state: State, as_json: bool) -> None:
    """Verify the journal's hash chain and name the first record edited by hand."""
    from provisioner.audit.run import verify_journal
    from provisioner.journal import Journal

    path = state.config.sync.journal  # type: ignore[union-attr]
    book = Journal(path, readonly=True) if path.exists() else None
    try:
        summary = verify_journal(book)
    finally:
        if book is not None:
            book.close()
    count, broken = summary["records"], summary["first_broken"]
    if broken is not None:
        if as_json:
            emit(True, summary, "")
        raise AuditFailed(
            f"journal record {broken} of {count} does not match the hash chain: it (or the "
            "record before it) was edited or removed outside coopctl",
            f"compare it with a backup of {path}: `coopctl journal --json` shows the records")
    emit(as_json, summary, f"journal: {count} record(s), hash chain verified"
         if count else "The journal has no records yet.")
