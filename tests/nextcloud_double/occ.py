"""``occ`` double: the ``occ user:*`` subset coopctl uses, on the double's store.

Output and exit codes follow Nextcloud's commands: ``user:list``
(``uid: display name``, or a JSON object with ``--output=json``),
``user:info``, ``user:delete``, ``user:disable``, ``user:enable``,
``user:setting`` and ``user:auth-tokens:list|add|delete``. Unknown users:
"User does not exist" (``user:info`` and ``user:auth-tokens:list``: "user not
found"), exit code 1. ``user:delete`` also removes the user's home
(``<data>/<uid>``) and tokens, as Nextcloud does.

``user:auth-tokens:list <uid>`` prints each token's public part (id, name,
lastActivity, type: 0 session / 1 app password, scope), never its secret;
``user:auth-tokens:delete <uid> <id>`` deletes one (no error when it is already
gone: Nextcloud's ``invalidateTokenById`` is silent too), ``user:auth-tokens:delete <uid>
--last-used-before <date>`` every one used before the date (``invalidateLastUsedBefore``, no
check that the user exists); ``user:auth-tokens:add
<uid>`` creates an app password and prints it once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime

from . import DOUBLE_NAME
from .server import OCSError, apply_edit
from .store import DEFAULT_STORE, PERMANENT_TOKEN, Store, storage_info


def _emit(data, output: str) -> None:
    if output == "json":
        print(json.dumps(data, separators=(",", ":")))
    elif output == "json_pretty":
        print(json.dumps(data, indent=4))
    elif isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict):
                print(f"  - {key}:")
                for k, v in value.items():
                    print(f"    - {k}: {v}")
            elif isinstance(value, list):
                print(f"  - {key}:")
                for v in value:
                    print(f"    - {v}")
            else:
                shown = {True: "true", False: "false"}.get(value, value)
                print(f"  - {key}: {shown}")


def _info(user: dict, store: Store) -> dict:
    return {
        "user_id": user["id"],
        "display_name": user.get("displayname") or user["id"],
        "email": user.get("email") or "",
        "cloud_id": f"{user['id']}@localhost",
        "enabled": bool(user["enabled"]),
        "groups": list(user["groups"]),
        "quota": user.get("quota") or "none",
        "storage": storage_info(user, store.used_bytes(user["id"])),
        "last_seen": "1970-01-01T00:00:00+00:00",
        "user_directory": str(store.home(user["id"])),
        "backend": "Database",
    }


def _settings(user: dict) -> dict:
    settings = {app: dict(keys) for app, keys in user.get("settings", {}).items()}
    settings.setdefault("settings", {})
    if user.get("email"):
        settings["settings"]["email"] = user["email"]
    settings.setdefault("files", {})
    if user.get("quota") and user["quota"] != "default":
        settings["files"]["quota"] = user["quota"]
    return {app: keys for app, keys in settings.items() if keys}


def _date_option(text: str) -> int | None:
    """Delete.php's parseDateOption: unix seconds, ISO 8601 without fractions, or YYYY-MM-DD."""
    if text.isdigit() and int(text):
        return int(text)
    for pattern in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"):
        try:
            parsed = datetime.strptime(text, pattern)
        except ValueError:
            continue
        return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())
    return None


def _auth_tokens(store: Store, cmd: str, rest: list[str], output: str,
                 last_used_before: str | None = None) -> int:
    """``occ user:auth-tokens:list|add|delete`` (core/Command/User/AuthTokens); delete takes
    a token id, or ``--last-used-before DATE`` for every token of the user used before it."""
    if not rest:
        missing = "user" if cmd.endswith(":list") else "uid" if cmd.endswith(":delete") else "user"
        print(f'Not enough arguments (missing: "{missing}").', file=sys.stderr)
        return 1
    uid = rest[0]
    if cmd == "user:auth-tokens:list":
        if not store.has_user(uid):
            print("user not found", file=sys.stderr)
            return 1
        tokens = store.tokens_of(uid)
        if output == "plain":
            for t in tokens:
                kind = {0: "temporary", 1: "permanent"}.get(t["type"], t["type"])
                print(
                    f"  - id: {t['id']}, name: {t['name']}, type: {kind}, "
                    f"lastActivity: {t['lastActivity']}"
                )
        else:
            _emit(tokens, output)
        return 0
    if cmd == "user:auth-tokens:add":
        if not store.has_user(uid):
            print("user not found", file=sys.stderr)
            return 1
        secret = store.add_token(uid, "cli", PERMANENT_TOKEN)
        print("app password:")
        print(secret)
        return 0
    if cmd == "user:auth-tokens:delete":
        token_id = int(rest[1]) if len(rest) > 1 and rest[1].isdigit() else 0
        if last_used_before:
            if token_id:
                print("Option --last-used-before cannot be used with [<id>]", file=sys.stderr)
                return 1
            before = _date_option(last_used_before)
            if before is None:
                print('Invalid date format. Acceptable formats are: ISO8601 (w/o fractions), '
                      '"YYYY-MM-DD" and Unix time in seconds.', file=sys.stderr)
                return 1
            store.delete_tokens_last_used_before(uid, before)
            return 0
        if not token_id:
            print("Not enough arguments. Specify the token <id> or use the --last-used-before "
                  "option.", file=sys.stderr)
            return 1
        store.delete_token(token_id, uid)
        return 0
    print(
        f'Command "{cmd}" is not defined in this occ double (a Nextcloud contract double).',
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="occ-double",
        description=f"{DOUBLE_NAME}: occ user:* of a Nextcloud CONTRACT DOUBLE (not Nextcloud)",
    )
    parser.add_argument("--store", default=os.environ.get("NEXTCLOUD_DOUBLE_STORE", DEFAULT_STORE))
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("NEXTCLOUD_DOUBLE_DATA_DIR"),
        help="users' homes (default: data/ next to the store)",
    )
    parser.add_argument("--output", choices=("plain", "json", "json_pretty"), default="plain")
    parser.add_argument("command")
    parser.add_argument("args", nargs="*")
    parser.add_argument("--delete", action="store_true", help="user:setting: delete the key")
    parser.add_argument("--info", "-i", action="store_true", help="user:list: show details")
    parser.add_argument("--last-used-before", help="user:auth-tokens:delete: every token "
                        "of the user last used before this date")
    args = parser.parse_args(argv)
    store = Store(args.store, args.data_dir)
    try:
        with store.transaction():  # one command, one transaction
            return _run(store, args)
    finally:
        store.close()


def _run(store: Store, args: argparse.Namespace) -> int:
    cmd, rest = args.command, args.args

    if cmd == "user:list":
        data = {
            u["id"]: (_info(u, store) if args.info else (u.get("displayname") or u["id"]))
            for u in sorted(store.users(), key=lambda u: u["id"].lower())
        }
        _emit(data, args.output)
        return 0

    if (
        cmd in ("user:info", "user:delete", "user:disable", "user:enable", "user:setting")
        and not rest
    ):
        print('Not enough arguments (missing: "uid").', file=sys.stderr)
        return 1

    if cmd.startswith("user:auth-tokens:"):
        return _auth_tokens(store, cmd, rest, args.output, args.last_used_before)

    if cmd == "user:info":
        user = store.get_user(rest[0])
        if user is None:
            print("user not found", file=sys.stderr)
            return 1
        _emit(_info(user, store), args.output)
        return 0

    if cmd in ("user:delete", "user:disable", "user:enable"):
        user = store.get_user(rest[0])
        if user is None:
            print("User does not exist", file=sys.stderr)
            return 1
        if cmd == "user:delete":
            store.delete_user(rest[0])
            store.remove_home(rest[0])
            print("The specified user was deleted")
        else:
            user["enabled"] = cmd == "user:enable"
            store.save_user(user)
            print(f"The specified user is {'enabled' if user['enabled'] else 'disabled'}")
        return 0

    if cmd == "user:setting":
        uid, app, key, value = [*rest, None, None, None][:4]
        user = store.get_user(uid)
        if user is None:
            print("User does not exist", file=sys.stderr)
            return 1
        if value is None and not args.delete:
            settings = _settings(user)
            if key is None:
                _emit(
                    settings.get(app, {}) if app else settings,
                    args.output if args.output != "plain" else "json_pretty",
                )
                return 0
            if key not in settings.get(app or "", {}):
                print(f'The setting does not exist for user "{uid}".', file=sys.stderr)
                return 1
            print(settings[app][key])
            return 0
        special = {
            ("files", "quota"): "quota",
            ("settings", "email"): "email",
            ("core", "lang"): "language",
        }
        if args.delete:
            if (app, key) == ("files", "quota"):
                user["quota"] = "default"
            elif (app, key) == ("settings", "email"):
                user["email"] = None
            else:
                user.get("settings", {}).get(app, {}).pop(key, None)
        elif (app, key) in special:
            try:
                apply_edit(user, special[(app, key)], value)
            except OCSError as e:
                print(f"Invalid value for {app}/{key} (OCS code {e.code})", file=sys.stderr)
                return 1
        else:
            user.setdefault("settings", {}).setdefault(app, {})[key] = value
        store.save_user(user)
        return 0

    print(
        f'Command "{cmd}" is not defined in this occ double (a Nextcloud contract double).',
        file=sys.stderr,
    )
    return 1
