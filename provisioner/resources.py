"""Where coopctl's data files are, in a source checkout and in an installed wheel alike.

coopctl reads files that are not Python modules: the LDAP schema and the configuration's JSON
Schema (``schemas/``), the Ansible playbooks with their roles and modules (``playbooks/``), the
example and lab inventories and the demo's CSV (``inventories/``), the lab's Nextcloud contract
double (``tests/nextcloud_double/``) and the welcome mail templates. In the repository they stay
where a developer expects them, at the top level; the wheel carries the same trees, with the
same relative paths, under ``provisioner/_data/`` (``pyproject.toml`` maps each of ``SHIPPED``
there, and a test checks that the two lists agree). So every caller asks for ``root() / PATH``
and gets a real directory on disk, which Ansible needs (it reads ``ansible.cfg``, the roles
next to the playbook and each role's ``library/`` from the file system, not from a zip).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The data trees inside an installed wheel (absent from a source checkout).
WHEEL_DATA = PACKAGE_DIR / "_data"
# The repository root, when coopctl runs from a checkout (or an editable install of one).
SOURCE_ROOT = PACKAGE_DIR.parent

# Every path (relative to the repository root) that coopctl reads at run time. The wheel ships
# each of them at provisioner/_data/PATH: keep this list and pyproject.toml's force-include
# table in step (tests/test_packaging.py compares them).
SHIPPED = (
    "playbooks",
    "schemas",
    "inventories/example",
    "inventories/lab/README.md",
    "inventories/lab/group_vars",
    "inventories/lab/demo-members.csv",
    "tests/nextcloud_double",
)


def root() -> Path:
    """The directory holding ``playbooks/``, ``schemas/``, ``inventories/`` (see SHIPPED).

    The wheel's copy when coopctl is installed from one, else the source checkout around this
    package. Never raises: a missing file is reported by whoever needs it, with its path.
    """
    if (WHEEL_DATA / "playbooks").is_dir():
        return WHEEL_DATA
    return SOURCE_ROOT


def installed() -> bool:
    """True when the data comes from an installed wheel rather than a source checkout."""
    return root() == WHEEL_DATA


def playbooks_dir() -> Path:
    """``playbooks/``: site.yml, sync.yml, ansible.cfg and ``roles/``."""
    return root() / "playbooks"


def schemas_dir() -> Path:
    """``schemas/``: coop.ldif, coop.schema, acl.j2, coopctl-config.schema.json."""
    return root() / "schemas"


def inventories_dir() -> Path:
    """``inventories/``: ``example/`` (a production coop) and the lab's ``group_vars/``."""
    return root() / "inventories"


def demo_members_csv() -> Path:
    """The demo coop's sample members, as its ERP would export them."""
    return inventories_dir() / "lab" / "demo-members.csv"


def nextcloud_double_dir() -> Path:
    """The sources of the lab's Nextcloud contract double (packed by artifacts.py)."""
    return root() / "tests" / "nextcloud_double"


def welcome_templates_dir() -> Path:
    """The built-in welcome mail templates (inside the package in both layouts)."""
    return PACKAGE_DIR / "templates" / "welcome"
