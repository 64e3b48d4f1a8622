"""The coop's objects as coopctl sees them, and how they map to LDAP entries.

Members carry their *effective* quotas (what Dovecot and Nextcloud read off
the entry); `quota_overrides` says which of them were set by hand and so no
longer follow the plan. Plans and groups are entries too, so an ERP can feed
everything through LDAP alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from provisioner import validate

MEMBER_ATTRIBUTES = [
    "uid", "cn", "sn", "givenName", "displayName", "mail", "employeeNumber",
    "coopMemberStatus", "coopStatusChanged", "coopDepartureDate", "coopPlan",
    "coopCloudQuota", "coopMailQuota", "coopQuotaOverride", "coopService",
    "coopMailAlias", "coopMailForward", "coopRecoveryMail", "preferredLanguage",
]  # fmt: skip
BRIEF_MEMBER_ATTRIBUTES = ["uid", "givenName", "sn", "coopMemberStatus", "coopPlan", "coopService"]
PLAN_ATTRIBUTES = [
    "cn", "description", "coopCloudQuota", "coopMailQuota", "coopPriceCents",
    "coopCurrency", "coopService",
]  # fmt: skip
GROUP_ATTRIBUTES = ["cn", "description", "member"]


def ldap_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")


def parse_ldap_time(value: str) -> datetime:
    return datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _first(raw: dict[str, list[bytes]], name: str) -> str | None:
    values = raw.get(name)
    return values[0].decode("utf-8") if values else None


def _all(raw: dict[str, list[bytes]], name: str) -> list[str]:
    return sorted(v.decode("utf-8") for v in raw.get(name, []))


# Values that repeat across members (a status, a plan, a service, a first name) are decoded
# once and shared: 100,000 members then hold 100,000 references to "active", not 100,000
# copies. Bounded, so that a directory of unique values cannot make it grow without end.
_SHARED: dict[bytes, str] = {}
_SHARED_MAX = 20_000


def _shared(value: bytes) -> str:
    text = _SHARED.get(value)
    if text is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        text = _SHARED[value] = value.decode("utf-8")
    return text


_PLAN_NAMES: dict[bytes, str] = {}


def _plan_name(dn: bytes) -> str:
    """`small` from the plan's DN, shared by every member on the plan."""
    name = _PLAN_NAMES.get(dn)
    if name is None:
        if len(_PLAN_NAMES) >= _SHARED_MAX:
            _PLAN_NAMES.clear()
        name = _PLAN_NAMES[dn] = rdn_value(dn.decode("utf-8"))
    return name


def _first_shared(raw: dict[str, list[bytes]], name: str) -> str | None:
    values = raw.get(name)
    return _shared(values[0]) if values else None


def _all_shared(raw: dict[str, list[bytes]], name: str) -> list[str]:
    values = raw.get(name)
    return sorted(_shared(v) for v in values) if values else []


def _int(raw: dict[str, list[bytes]], name: str) -> int | None:
    value = _first(raw, name)
    return int(value) if value is not None else None


def rdn_value(dn: str) -> str:
    """`jan` from `uid=jan,ou=people,...` (our RDN values never need escaping)."""
    return dn.split(",", 1)[0].split("=", 1)[1]


@dataclass
class Plan:
    name: str
    description: str = ""
    cloud_quota: int | None = None
    mail_quota: int | None = None
    price_cents: int | None = None
    currency: str | None = None
    services: list[str] = field(default_factory=list)

    @classmethod
    def from_raw(cls, raw: dict[str, list[bytes]]) -> Plan:
        return cls(
            name=_first(raw, "cn") or "",
            description=_first(raw, "description") or "",
            cloud_quota=_int(raw, "coopCloudQuota"),
            mail_quota=_int(raw, "coopMailQuota"),
            price_cents=_int(raw, "coopPriceCents"),
            currency=_first(raw, "coopCurrency"),
            services=_all(raw, "coopService"),
        )

    def attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "objectClass": ["coopPlan"],
            "cn": self.name,
            "description": self.description or None,
            "coopCloudQuota": self.cloud_quota,
            "coopMailQuota": self.mail_quota,
            "coopPriceCents": self.price_cents,
            "coopCurrency": self.currency,
            "coopService": self.services or None,
        }
        return {k: v for k, v in attrs.items() if v not in (None, [], "")}

    def label(self) -> str:
        """'5 GB cloud, 1 GB mail for 2.50 EUR/month', the way a member reads it."""
        parts = []
        if self.cloud_quota is not None:
            parts.append(f"{validate.format_quota(self.cloud_quota)} cloud")
        if self.mail_quota is not None:
            parts.append(f"{validate.format_quota(self.mail_quota)} mail")
        text = ", ".join(parts) or "no quota"
        if self.price_cents is not None:
            text += f" for {validate.format_price(self.price_cents, self.currency)}/month"
        return text

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["label"] = self.label()
        return data


@dataclass(slots=True)
class Member:
    uid: str
    given_name: str
    family_name: str
    mail: str
    display_name: str = ""
    status: str = "active"
    plan: str | None = None
    services: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    forwards: list[str] = field(default_factory=list)
    mail_quota: int | None = None
    cloud_quota: int | None = None
    quota_overrides: list[str] = field(default_factory=list)
    member_number: str | None = None
    recovery_mail: str | None = None
    language: str | None = None  # preferredLanguage (RFC 2798): fr, nl, en
    status_changed: datetime | None = None
    departure_date: datetime | None = None

    @property
    def full_name(self) -> str:
        return f"{self.given_name} {self.family_name}".strip()

    @classmethod
    def from_raw(cls, raw: dict[str, list[bytes]], groups: list[str]) -> Member:
        plan_dn = raw.get("coopPlan")
        changed = _first(raw, "coopStatusChanged")
        departed = _first(raw, "coopDepartureDate")
        return cls(
            uid=_first(raw, "uid") or "",
            given_name=_first_shared(raw, "givenName") or "",
            family_name=_first_shared(raw, "sn") or "",
            display_name=_first(raw, "displayName") or "",
            mail=_first(raw, "mail") or "",
            status=_shared((raw.get("coopMemberStatus") or [b"active"])[0].lower()),
            plan=_plan_name(plan_dn[0]) if plan_dn else None,
            services=_all_shared(raw, "coopService"),
            groups=sorted(groups),
            aliases=_all(raw, "coopMailAlias"),
            forwards=_all(raw, "coopMailForward"),
            mail_quota=_int(raw, "coopMailQuota"),
            cloud_quota=_int(raw, "coopCloudQuota"),
            quota_overrides=_all_shared(raw, "coopQuotaOverride"),
            member_number=_first(raw, "employeeNumber"),
            recovery_mail=_first(raw, "coopRecoveryMail"),
            language=_first_shared(raw, "preferredLanguage"),
            status_changed=parse_ldap_time(changed) if changed else None,
            departure_date=parse_ldap_time(departed) if departed else None,
        )

    def attributes(self, plans_dn: str) -> dict[str, Any]:
        """Every attribute coopctl owns on the entry (None = absent)."""
        return {
            "cn": self.full_name,
            "sn": self.family_name,
            "givenName": self.given_name or None,
            "displayName": self.display_name or self.full_name,
            "mail": self.mail,
            "employeeNumber": self.member_number,
            "coopMemberStatus": self.status,
            "coopStatusChanged": ldap_time(self.status_changed) if self.status_changed else None,
            "coopDepartureDate": ldap_time(self.departure_date) if self.departure_date else None,
            "coopPlan": f"cn={self.plan},{plans_dn}" if self.plan else None,
            "coopService": sorted(self.services) or None,
            "coopMailAlias": sorted(self.aliases) or None,
            "coopMailForward": sorted(self.forwards) or None,
            "coopMailQuota": self.mail_quota,
            "coopCloudQuota": self.cloud_quota,
            "coopQuotaOverride": sorted(self.quota_overrides) or None,
            "coopRecoveryMail": self.recovery_mail,
            "preferredLanguage": self.language,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("status_changed", "departure_date"):
            data[key] = data[key].isoformat() if data[key] else None
        data["mail_quota_text"] = validate.format_quota(self.mail_quota)
        data["cloud_quota_text"] = validate.format_quota(self.cloud_quota)
        return data


@dataclass
class Group:
    name: str
    description: str = ""
    members: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
