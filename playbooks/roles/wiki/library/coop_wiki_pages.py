#!/usr/bin/python3
# Role-local module of the wiki role: writes many DokuWiki pages in one module run, each only
# when missing. The sync creates a start page for every new member; with the builtin modules
# that is three module runs per member (directory, stat, copy), some 15 minutes for 1,000 new
# members at about 0.3 s a run; this writes them all in one run (measured in bench_sync.py).
"""Ansible module: coop_wiki_pages."""

from __future__ import annotations

import grp
import os
import pwd
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: coop_wiki_pages
short_description: Create DokuWiki pages that do not exist yet, many at once
description:
  - Each page is a path relative to C(root) (DokuWiki's pages directory) and its text. A page
    that exists is never touched (its member may have edited it); missing directories are
    created. Files are written atomically (temporary file, then rename).
options:
  root: {description: DokuWiki's pages directory., type: path, required: true}
  pages:
    description: Pages to create when missing, each a dict with C(path) and C(content).
    type: list
    elements: dict
    default: []
  members:
    description:
      - Members' start pages, each a dict with C(ns), C(name) and C(language); the page is
        C(user/<ns>/start.txt) and its text C(texts[language]) (else C(texts.en)) with
        C(@@NAME@@) and C(@@NS@@) replaced. Rendering the role's template once per language
        instead of once per member keeps a batch of thousands of new members in seconds.
    type: list
    elements: dict
    default: []
  texts:
    description: Start page text per language, with the placeholders above.
    type: dict
    default: {}
  owner: {description: Owner of new files and directories., type: str, default: www-data}
  group: {description: Group of new files and directories., type: str, default: www-data}
  mode: {description: Mode of new files., type: raw, default: "0644"}
  dir_mode: {description: Mode of new directories., type: raw, default: "0755"}
"""

EXAMPLES = r"""
- name: Start pages of new members
  coop_wiki_pages:
    root: /var/lib/dokuwiki/data/pages
    pages:
      - {path: user/ana/start.txt, content: "====== Ana ======"}
"""

RETURN = r"""
created: {description: Paths written (relative to root)., type: list, returned: always}
"""


def safe_path(root: str, relative: str) -> str:
    """The page's absolute path, refusing anything that leaves root."""
    if not relative or relative.startswith("/") or ".." in relative.split("/"):
        raise ValueError(f"unsafe page path {relative!r}")
    return os.path.join(root, relative)


def member_pages(members: list[dict], texts: dict) -> list[dict]:
    """Each member's start page (path and text) from the per-language texts."""
    pages = []
    for m in members:
        text = texts.get(m.get("language")) or texts.get("en") or ""
        pages.append({"path": f"user/{m['ns']}/start.txt",
                      "content": text.replace("@@NAME@@", str(m.get("name") or m["ns"]))
                                     .replace("@@NS@@", str(m["ns"]))})
    return pages


def write_pages(root: str, pages: list[dict], uid: int, gid: int, mode: int, dir_mode: int,
                check: bool) -> list[str]:
    """Write every missing page; return the relative paths written (or to write, in check)."""
    created = []
    for page in pages:
        path = safe_path(root, str(page["path"]))
        if os.path.lexists(path):
            continue
        created.append(str(page["path"]))
        if check:
            continue
        directory = os.path.dirname(path)
        missing = []
        while not os.path.isdir(directory):
            missing.append(directory)
            directory = os.path.dirname(directory)
        for d in reversed(missing):
            os.mkdir(d, dir_mode)
            os.chown(d, uid, gid)
            os.chmod(d, dir_mode)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".coop-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(str(page["content"]))
            os.chown(tmp, uid, gid)
            os.chmod(tmp, mode)
            os.rename(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    return created


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "required": True},
            "pages": {"type": "list", "elements": "dict", "default": []},
            "members": {"type": "list", "elements": "dict", "default": []},
            "texts": {"type": "dict", "default": {}},
            "owner": {"type": "str", "default": "www-data"},
            "group": {"type": "str", "default": "www-data"},
            "mode": {"type": "raw", "default": "0644"},
            "dir_mode": {"type": "raw", "default": "0755"},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        pages = list(p["pages"]) + member_pages(p["members"], p["texts"])
        created = write_pages(
            p["root"], pages, pwd.getpwnam(p["owner"]).pw_uid,
            grp.getgrnam(p["group"]).gr_gid, int(str(p["mode"]), 8),
            int(str(p["dir_mode"]), 8), module.check_mode)
    except (OSError, KeyError, ValueError) as exc:
        module.fail_json(msg=f"cannot write the wiki pages: {exc}")
    module.exit_json(changed=bool(created), created=created)


if __name__ == "__main__":
    main()
