"""The lab's state directory links the checkout's group_vars, whatever an older checkout left."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.lab.config import LabError
from provisioner.lab.inventory import GROUP_VARS, link_group_vars


def test_a_missing_link_is_made(tmp_path: Path) -> None:
    link = tmp_path / "group_vars"
    link_group_vars(link)
    assert link.resolve() == GROUP_VARS.resolve()


@pytest.mark.parametrize("target", ["gone/inventories/lab/group_vars", "other"])
def test_a_link_left_by_another_checkout_is_replaced(tmp_path: Path, target: str) -> None:
    # CI found a state directory whose link pointed into a checkout that no longer existed
    # (dangling: `exists()` is False) and `lab up` stopped on FileExistsError.
    (tmp_path / "other").mkdir()
    link = tmp_path / "group_vars"
    link.symlink_to(tmp_path / target)
    link_group_vars(link)
    assert link.resolve() == GROUP_VARS.resolve()


def test_a_real_directory_in_the_way_is_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    link = tmp_path / "group_vars"
    link.mkdir()
    (link / "all.yml").write_text("mine: true\n")
    with pytest.raises(LabError, match="move it away"):
        link_group_vars(link)
    assert (link / "all.yml").read_text() == "mine: true\n"
