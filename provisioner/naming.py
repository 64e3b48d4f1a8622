"""Login names derived from real names.

Members are bakers, not sysadmins: their login is `given.family` in plain
ASCII, built the same way every time so that a re-import finds the same
person. Accents are dropped (é→e), letters that do not decompose are spelled
out (ß→ss, ø→o), apostrophes vanish (O'Neill→oneill), hyphens stay
(Dupré-Noël→dupre-noel) and spaces inside a family name are closed up, Dutch
and French particles included (van der Berg→vanderberg).

Letters of other scripts are transliterated by anyascii (ISC licence, tables
generated from Unicode's own data and kept up to date with each Unicode
release): Петров→petrov, Γιώργος→giorgos, 北京→beijing. A letter it cannot
spell is refused with a hint to give the login by hand; a name is never cut
down to the part that happens to be Latin (`Ivan Петров` is `ivan.petrov`,
never `ivan`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from anyascii import anyascii

from provisioner import validate
from provisioner.errors import InvalidInput

_SPELLED_OUT = {
    "ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "đ": "d", "ð": "d", "þ": "th",
    "ł": "l", "ı": "i", "ŋ": "n", "ħ": "h", "ĸ": "k", "ſ": "s",
}  # fmt: skip
_APOSTROPHES = "'’‘`´ʼ"


def ascii_fold(value: str) -> str:
    """Lower-case ASCII rendering of a name part (letters, digits, '-', ' ').

    Latin letters lose their accents; letters and digits of any other script are
    transliterated; dashes become '-'; other signs (an emoji, '&') are left out. A
    letter that cannot be spelled in ASCII is an error, never silently dropped.
    """
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
        elif unicodedata.category(char)[0] in "LN":  # a letter or digit of another script
            spelled = anyascii(char)
            if not spelled and _unknown_to_anyascii(char):
                raise InvalidInput(
                    f"cannot spell {char!r} (U+{ord(char):04X}) of {value!r} in plain ASCII "
                    "for a login",
                    "give the login explicitly with --uid (or a uid column in the CSV)",
                )
            # Only letters and digits stay: a transliteration's marks go like apostrophes
            # (Arabic ain is spelled "`": علي -> ly).
            kept.append("".join(c for c in spelled.lower() if c.isascii() and c.isalnum()))
        elif unicodedata.category(char) == "Pd":  # en dash, Armenian hyphen...
            kept.append("-")
    return re.sub(r"\s+", " ", "".join(kept)).strip()


def _unknown_to_anyascii(char: str) -> bool:
    """A letter anyascii has no reading for (a rare ideograph, a historic script), as opposed
    to one it spells as nothing on purpose (Arabic alef, Thai o ang: silent vowel carriers)."""
    return ord(char) > 0xFFFF or unicodedata.name(char, "").startswith("CJK ")


def _part(value: str) -> str:
    folded = re.sub(r"-{2,}", "-", ascii_fold(value).replace(" ", "")).strip("-")
    if not folded and any(unicodedata.category(c)[0] in "LN" for c in value):
        raise InvalidInput(f"cannot spell {value!r} in plain ASCII for a login",
                           "give the login explicitly with --uid (or a uid column in the CSV)")
    return folded


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


def first_free_uid(preferred: str, taken: Callable[[str], bool],
                   tried: dict[str, int] | None = None) -> str:
    """`preferred`, or `preferred2`, `preferred3`... whichever is free first.

    `tried` remembers, across calls, the last suffix found taken for each name: an import
    of 100,000 members with 200 Jan Peeters then tries each suffix once, not 200 times.
    """
    start = tried.get(preferred, 1) if tried is not None else 1
    if start == 1 and not taken(preferred):
        return preferred
    for n in range(max(start, 2), 100_000):
        suffix = str(n)
        candidate = preferred[: validate.MAX_UID - len(suffix)] + suffix
        if not taken(candidate):
            if tried is not None:
                tried[preferred] = n
            return candidate
    raise InvalidInput(f"no free uid left near {preferred!r}", "give one explicitly with --uid")
