"""Login names derived from real names.

Members are bakers, not sysadmins: their login is `given.family` in plain
ASCII, built the same way every time so that a re-import finds the same
person. Accents are dropped (é→e), letters that do not decompose are spelled
out (ß→ss, ø→o), apostrophes vanish (O'Neill→oneill), hyphens stay
(Dupré-Noël→dupre-noel) and spaces inside a family name are closed up, Dutch
and French particles included (van der Berg→vanderberg).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from provisioner import validate
from provisioner.errors import InvalidInput

_SPELLED_OUT = {
    "ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "đ": "d", "ð": "d", "þ": "th",
    "ł": "l", "ı": "i", "ŋ": "n", "ħ": "h", "ĸ": "k", "ſ": "s",
}  # fmt: skip
_APOSTROPHES = "'’‘`´ʼ"


def ascii_fold(value: str) -> str:
    """Lower-case ASCII rendering of a name part (letters, digits, '-', ' ')."""
    lowered = value.lower()
    for src, dst in _SPELLED_OUT.items():
        lowered = lowered.replace(src, dst)
    decomposed = unicodedata.normalize("NFKD", lowered)
    kept = []
    for char in decomposed:
        if unicodedata.combining(char) or char in _APOSTROPHES:
            continue
        if char.isascii() and (char.isalnum() or char in "-"):
            kept.append(char)
        elif char.isspace() or char in "._":
            kept.append(" ")
    return re.sub(r"\s+", " ", "".join(kept)).strip()


def _part(value: str) -> str:
    folded = ascii_fold(value).replace(" ", "")
    return re.sub(r"-{2,}", "-", folded).strip("-")


def derive_uid(given_name: str, family_name: str) -> str:
    """The preferred uid for a person; may need a suffix if already taken."""
    given, family = _part(given_name), _part(family_name)
    if not given and not family:
        raise InvalidInput(
            f"cannot derive a login from {given_name!r} {family_name!r}",
            "give one explicitly with --uid",
        )
    base = f"{given}.{family}" if given and family else given or family
    if not base[0].isalpha():
        base = "m" + base
    if len(base) > validate.MAX_UID:
        base = base[: validate.MAX_UID].rstrip(".-")
    return validate.uid(base)


def first_free_uid(preferred: str, taken: Callable[[str], bool]) -> str:
    """`preferred`, or `preferred2`, `preferred3`... whichever is free first."""
    if not taken(preferred):
        return preferred
    for n in range(2, 1000):
        suffix = str(n)
        candidate = preferred[: validate.MAX_UID - len(suffix)] + suffix
        if not taken(candidate):
            return candidate
    raise InvalidInput(f"no free uid left near {preferred!r}", "give one explicitly with --uid")
