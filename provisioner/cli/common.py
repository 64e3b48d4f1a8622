"""What every coopctl command shares: config, connection, output, errors."""

from __future__ import annotations

import functools
import json
import os
import secrets
import string
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import ldap3

from provisioner import config as config_mod
from provisioner.changes import ChangeSet
from provisioner.directory import Directory
from provisioner.errors import CoopError, InvalidInput
from provisioner.ldapconn import CONNECTION_ERRORS, broken_connection, close_quietly, connect


@dataclass
class State:
    config_path: Path | None = None
    _config: config_mod.Config | None = None
    _conn: ldap3.Connection | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> config_mod.Config:
        if self._config is None:
            self._config = config_mod.load(self.config_path)
        return self._config

    @property
    def directory(self) -> Directory:
        if self._conn is None:
            self._conn = connect(self.config.directory)
        return Directory(self.config, self._conn)

    def close(self) -> None:
        """Unbind; a connection that already broke was reported, a second error would hide it."""
        if self._conn is not None:
            close_quietly(self._conn)
            self._conn = None


pass_state = click.make_pass_decorator(State, ensure=True)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def check_date_option(option: str, value: str | None) -> None:
    """Refuse a date option that is not an ISO date, before anything is read."""
    if value is None:
        return
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"{option} {value!r} is not a date", "write it as 2026-06-30") \
            from None


def emit(as_json: bool, data: Any, text: str | Callable[[], str]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    else:
        click.echo(text() if callable(text) else text)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print a CoopError as 'Error: ... / Hint: ...' (or JSON) and exit non-zero."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return func(*args, **kwargs)
            except CONNECTION_ERRORS as exc:
                # A read or write that met a dead server outside the places that check.
                raise broken_connection(exc, "the command") from None
        except CoopError as exc:
            if kwargs.get("as_json"):
                click.echo(json.dumps(exc.to_dict(), ensure_ascii=False), err=True)
            else:
                click.secho(f"Error: {exc.message}", fg="red", err=True)
                if exc.hint:
                    click.echo(f"Hint: {exc.hint}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.secho("Error: interrupted", fg="red", err=True)
            click.echo("Hint: run the command again: a change to the directory is applied "
                       "whole or not at all, and an interrupted import is finished by the next",
                       err=True)
            sys.exit(130)

    return wrapper


def apply_changes(state: State, cs: ChangeSet, dry_run: bool, as_json: bool,
                  extra: dict[str, Any] | None = None) -> None:
    """Show the plan; apply it unless dry-run. One transaction, all or nothing."""
    data = {"dry_run": dry_run, "summary": cs.summary(),
            "changes": [c.to_dict() for c in cs.changes], **(extra or {})}
    if not cs:
        emit(as_json, data, "No changes: the directory already says so.")
        return
    if not dry_run:
        cs.apply(state.directory.conn)
    s = cs.summary()
    tail = (f"\nDry run: {s['create']} to create, {s['change']} to change, nothing written."
            if dry_run else
            f"\nApplied: {s['create']} created, {s['change']} changed.")
    emit(as_json, data, cs.render() + tail)


# -- passwords -----------------------------------------------------------------

password_options = [
    click.option("--password-stdin", is_flag=True,
                 help="Read the password from the first line of standard input."),
    click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
                 help="Read the password from the first line of this file."),
    click.option("--generate-password", is_flag=True,
                 help="Generate a one-time initial password and show it once."),
]


def with_password_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(password_options):
        func = option(func)
    return func


def generate_password(length: int = 16) -> str:
    """Readable one-time password: no look-alike characters."""
    alphabet = "".join(c for c in string.ascii_letters + string.digits if c not in "0O1lI")
    return "".join(secrets.choice(alphabet) for _ in range(length))


def obtain_password(min_length: int, password_stdin: bool, password_file: Path | None,
                    generate: bool) -> tuple[str, bool]:
    """(password, generated). Never from argv: a prompt, stdin, a file, or generated."""
    chosen = sum([password_stdin, password_file is not None, generate])
    if chosen > 1:
        raise InvalidInput("give only one of --password-stdin, --password-file, "
                           "--generate-password")
    if generate:
        return generate_password(max(16, min_length)), True
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError):
            raise InvalidInput(f"cannot read a password from {password_file}") from None
    elif sys.stdin.isatty() and os.environ.get("CI") != "true":
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        raise InvalidInput(
            "no password given and no terminal to ask for one",
            "use --password-stdin, --password-file FILE or --generate-password",
        )
    if len(password) < min_length:
        raise InvalidInput(f"the password is shorter than {min_length} characters")
    if "\x00" in password:
        raise InvalidInput("the password contains a NUL character")
    return password, False


def list_option(name: str, help_text: str) -> Callable[..., Any]:
    return click.option(name, multiple=True, help=help_text + " (repeatable)")
