"""``python3 -m nextcloud_double serve|occ ...`` (a Nextcloud contract double)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import DOUBLE_NAME
from .server import configure_logging, serve
from .store import DEFAULT_STORE, Store, StoreError


def _serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{DOUBLE_NAME} serve",
        description="Serve a CONTRACT DOUBLE of Nextcloud's OCS provisioning API (not Nextcloud).",
    )
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--store", default=os.environ.get("NEXTCLOUD_DOUBLE_STORE", DEFAULT_STORE))
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("NEXTCLOUD_DOUBLE_DATA_DIR"),
        help="users' homes, <data-dir>/<uid>/files (default: data/ next to the store)",
    )
    parser.add_argument("--admin-user", default="admin")
    parser.add_argument(
        "--admin-password-file",
        type=Path,
        required=True,
        help="file holding the admin's password (never pass it in argv)",
    )
    args = parser.parse_args(argv)
    configure_logging()
    store = Store(args.store, args.data_dir)
    store.ensure_admin(args.admin_user, args.admin_password_file.read_text().strip())
    serve(args.listen, args.port, store)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("serve", "occ"):
        print(
            f"usage: python3 -m nextcloud_double serve|occ ...  ({DOUBLE_NAME}, not Nextcloud)",
            file=sys.stderr,
        )
        return 2
    try:
        if argv[0] == "serve":
            return _serve(argv[1:])
        from .occ import main as occ_main

        return occ_main(argv[1:])
    except StoreError as e:
        print(f"{DOUBLE_NAME}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
