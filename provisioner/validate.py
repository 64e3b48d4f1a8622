"""Validation of every value that may reach the directory.

Values are checked before any write, so a bad value never leaves a half-done
change behind. Identifiers (uid, plan and group names, services) are limited
to characters that are inert in LDAP DNs and filters; free text (names) may
hold any letter of any language but no control character and none of the
characters that have a meaning in DNs or filters, which no real name needs.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from provisioner.errors import InvalidInput

SERVICES = ("mail", "cloud", "pads", "wiki", "sso")
STATUSES = ("active", "suspended", "departed", "purged")
# `purged` is set by `coopctl sync` alone, after the member's data was archived and removed.
SETTABLE_STATUSES = ("active", "suspended", "departed")

MAX_UID = 32
MAX_NAME = 64
MAX_MAIL = 254
MAX_DESCRIPTION = 256
MAX_MEMBER_NUMBER = 32

_UID = re.compile(r"^[a-z][a-z0-9._-]*[a-z0-9]$|^[a-z]$")
_IDENT = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_MEMBER_NUMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
# Characters with a meaning in DNs (RFC 4514) or filters (RFC 4515), and what
# a terminal or a log would misread.
_FORBIDDEN_IN_TEXT = set('*()\\,+;<>="#') | {chr(c) for c in range(32)} | {"\x7f"}
_QUOTA = re.compile(r"^\s*(\d+)\s*(MB|GB|TB)\s*$", re.IGNORECASE)
_QUOTA_FACTORS = {"MB": 1, "GB": 1024, "TB": 1024 * 1024}
_MAIL_LOCAL = re.compile(r"^[A-Za-z0-9._+'-]+$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


def _describe(value: str) -> str:
    """A printable rendering of a bad value for an error message."""
    shown = value if len(value) <= 40 else value[:37] + "..."
    return repr(shown)


def uid(value: str) -> str:
    """A login name: lower-case ASCII letters, digits, dot, hyphen, underscore."""
    if not value:
        raise InvalidInput("the uid is empty", "give a uid such as 'jan.peeters'")
    if len(value) > MAX_UID:
        raise InvalidInput(
            f"the uid {_describe(value)} is {len(value)} characters long; at most {MAX_UID}",
            "choose a shorter uid with --uid",
        )
    if not _UID.match(value) or ".." in value:
        raise InvalidInput(
            f"the uid {_describe(value)} is not valid",
            "a uid starts with a letter and holds only a-z, 0-9, '.', '-' and '_'",
        )
    return value


def identifier(value: str, what: str) -> str:
    """A plan or group name: short, lower-case, safe in a DN."""
    if not value or len(value) > MAX_NAME or not _IDENT.match(value):
        raise InvalidInput(
            f"the {what} name {_describe(value)} is not valid",
            f"a {what} name holds 1 to {MAX_NAME} characters among a-z, 0-9, '-' and '_'",
        )
    return value


def text(value: str, what: str, max_length: int = MAX_NAME, required: bool = True) -> str:
    """A human name or description, in any script."""
    value = value.strip()
    if not value:
        if required:
            raise InvalidInput(f"the {what} is empty", f"give a {what}")
        return value
    if len(value) > max_length:
        raise InvalidInput(
            f"the {what} {_describe(value)} is {len(value)} characters long; at most {max_length}"
        )
    bad = sorted(set(value) & _FORBIDDEN_IN_TEXT)
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise InvalidInput(
            f"the {what} {_describe(value)} contains {shown}",
            "names may not contain control characters nor any of * ( ) \\ , + ; < > = \" #",
        )
    return value


def mail(value: str, what: str = "mail address") -> str:
    """An ASCII mail address (LDAP's mail attribute is IA5), domain in IDNA form.

    email-validator knows RFC 5321/5322 and IDNA far better than a regex would;
    deliverability checks are off because they would query DNS.
    """
    from email_validator import EmailNotValidError, validate_email  # 45 ms: only when needed

    value = value.strip()
    if len(value) > MAX_MAIL:
        raise InvalidInput(f"the {what} {_describe(value)} is longer than {MAX_MAIL} characters")
    try:
        result = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise InvalidInput(f"the {what} {_describe(value)} is not valid: {exc}") from None
    ascii_mail = result.ascii_email or result.normalized
    local, _, domain = ascii_mail.rpartition("@")
    if not _MAIL_LOCAL.match(local):
        raise InvalidInput(
            f"the {what} {_describe(value)} has characters coopctl does not accept",
            "before the @, use letters, digits and . _ + ' - only",
        )
    return f"{local}@{domain.lower()}"


def quota(value: str | int, what: str = "quota") -> int:
    """A quota written as members see it in their apps ('500 MB', '5 GB'), in MiB.

    MB/GB/TB are binary multiples, as Dovecot and Nextcloud read them. Bare
    numbers, single letters ('5G') and IEC spellings ('500MiB') are refused so
    that nobody has to guess which unit was meant.
    """
    if isinstance(value, int):
        if value < 0:
            raise InvalidInput(f"the {what} {value} is negative")
        return value
    match = _QUOTA.match(value)
    if not match:
        raise InvalidInput(
            f"the {what} {_describe(value)} is not understood",
            "write a whole number and a unit, e.g. '500 MB', '5 GB' or '1 TB'",
        )
    amount = int(match.group(1)) * _QUOTA_FACTORS[match.group(2).upper()]
    if amount > 1024 * 1024 * 1024:
        raise InvalidInput(f"the {what} {_describe(value)} is larger than 1024 TB")
    return amount


FOLLOW_PLAN = "plan"


def quota_setting(value: str, what: str = "quota") -> int | None:
    """A quota as a CSV cell or option sets it: a size, or the word `plan` (None):
    drop the hand-set value and follow the plan's quota again."""
    if value.strip().lower() == FOLLOW_PLAN:
        return None
    try:
        return quota(value, what)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, "write a whole number and a unit, e.g. '500 MB', "
                           "'5 GB' or '1 TB', or 'plan' to follow the plan's quota") from None


def format_quota(mib: int | None) -> str:
    """The inverse of `quota`, choosing the largest exact unit."""
    if mib is None:
        return ""
    for unit in ("TB", "GB"):
        factor = _QUOTA_FACTORS[unit]
        if mib and mib % factor == 0:
            return f"{mib // factor} {unit}"
    return f"{mib} MB"


def price(value: str) -> int:
    """A monthly price such as '2.50', in cents."""
    try:
        amount = Decimal(value.strip().replace(",", "."))
    except InvalidOperation:
        raise InvalidInput(
            f"the price {_describe(value)} is not a number", "write it like 2.50"
        ) from None
    if not amount.is_finite() or amount < 0 or amount != amount.quantize(Decimal("0.01")):
        raise InvalidInput(
            f"the price {_describe(value)} is not valid",
            "give a non-negative amount with at most two decimals, like 2.50",
        )
    if amount > Decimal("100000"):
        raise InvalidInput(f"the price {_describe(value)} is implausibly high")
    return int(amount * 100)


def format_price(cents: int | None, currency: str | None) -> str:
    if cents is None:
        return ""
    return f"{cents // 100}.{cents % 100:02d} {currency or ''}".strip()


def currency(value: str) -> str:
    value = value.strip().upper()
    if not _CURRENCY.match(value):
        raise InvalidInput(f"the currency {_describe(value)} is not an ISO 4217 code like EUR")
    return value


def service(value: str) -> str:
    value = value.strip().lower()
    if value not in SERVICES:
        raise InvalidInput(
            f"unknown service {_describe(value)}", f"services are: {', '.join(SERVICES)}"
        )
    return value


def services(values: list[str]) -> list[str]:
    return sorted({service(v) for v in values})


def past_date(value: str, what: str) -> datetime:
    """A day in the past or today, as midnight UTC."""
    try:
        day = datetime.strptime(value.strip(), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidInput(f"{what} {value!r} is not a date", "write it as 2026-06-30") from None
    if day > datetime.now(UTC):
        raise InvalidInput(f"{what} {value} is in the future", "give the day it happened")
    return day


LANGUAGES = ("fr", "nl", "en")


def language(value: str) -> str:
    """A member's language (welcome mail, later the member's page): fr, nl or en."""
    value = value.strip().lower()
    if value not in LANGUAGES:
        raise InvalidInput(f"unknown language {_describe(value)}",
                           f"a language is one of: {', '.join(LANGUAGES)}")
    return value


def status(value: str) -> str:
    value = value.strip().lower()
    if value not in STATUSES:
        raise InvalidInput(
            f"unknown status {_describe(value)}", f"a status is one of: {', '.join(STATUSES)}"
        )
    return value


def member_number(value: str) -> str:
    value = value.strip()
    if len(value) > MAX_MEMBER_NUMBER or not _MEMBER_NUMBER.match(value):
        raise InvalidInput(
            f"the member number {_describe(value)} is not valid",
            f"at most {MAX_MEMBER_NUMBER} characters among letters, digits, '.', '/', '-', '_'",
        )
    return value
