"""Values checked before anything is written: names, quotas, prices, addresses."""

from __future__ import annotations

import pytest

from provisioner import validate
from provisioner.errors import InvalidInput
from provisioner.naming import derive_uid, first_free_uid


@pytest.mark.parametrize(("given", "family", "uid"), [
    ("Stéphanie", "Dupré-Noël", "stephanie.dupre-noel"),
    ("Jan", "van der Berg", "jan.vanderberg"),
    ("Zoë", "O'Neill", "zoe.oneill"),
    ("Jürgen", "Weiß", "jurgen.weiss"),
    ("Søren", "Ørsted", "soren.orsted"),
    ("Łukasz", "Żółć", "lukasz.zolc"),
    ("José María", "García Márquez", "josemaria.garciamarquez"),
    ("", "Nguyễn", "nguyen"),
    ("Anne-Marie", "D’Arcy", "anne-marie.darcy"),
])
def test_uid_is_derived_from_real_names(given: str, family: str, uid: str) -> None:
    assert derive_uid(given, family) == uid


@pytest.mark.parametrize(("given", "family", "uid"), [
    ("Ivan", "Петров", "ivan.petrov"),               # partly Cyrillic: never cut to "ivan"
    ("Иван", "Petrov", "ivan.petrov"),
    ("Γιώργος", "Παππάς", "giorgos.pappas"),
    ("明", "李", "ming.li"),
    ("محمد", "علي", "mhmd.ly"),                      # the library's spelling, marks dropped
    ("Anne–Marie", "Ngô", "anne-marie.ngo"),         # an en dash is a hyphen
    ("Jan 🌻", "Peeters", "jan.peeters"),             # a sign is not a letter
])
def test_names_in_other_scripts_are_transliterated(given: str, family: str, uid: str) -> None:
    assert derive_uid(given, family) == uid


@pytest.mark.parametrize(("given", "family"), [
    ("Jan", "ا"),        # spelled as nothing: the family name would vanish
    ("𒀀", "Peeters"),    # cuneiform: no reading at all
])
def test_a_name_that_cannot_be_spelled_is_refused_not_cut(given: str, family: str) -> None:
    with pytest.raises(InvalidInput) as err:
        derive_uid(given, family)
    assert "cannot spell" in err.value.message and "--uid" in (err.value.hint or "")


def test_derived_uid_is_capped_and_stays_valid() -> None:
    uid = derive_uid("Maximilian-Alexander", "Hohenzollern-Sigmaringen")
    assert len(uid) <= validate.MAX_UID
    assert validate.uid(uid) == uid


def test_uid_cannot_be_derived_from_symbols_only() -> None:
    with pytest.raises(InvalidInput) as err:
        derive_uid("???", "!!!")
    assert "--uid" in (err.value.hint or "")


def test_taken_uids_get_a_number() -> None:
    taken = {"jan.peeters", "jan.peeters2"}
    assert first_free_uid("jan.peeters", taken.__contains__) == "jan.peeters3"


@pytest.mark.parametrize(("text", "mib"), [
    ("500 MB", 500), ("5GB", 5120), ("5 gb", 5120), ("1 TB", 1024 * 1024), ("0 MB", 0),
])
def test_quotas_in_the_units_members_see(text: str, mib: int) -> None:
    assert validate.quota(text) == mib
    assert validate.quota(validate.format_quota(mib) or "0 MB") == mib


@pytest.mark.parametrize("bad", ["5G", "500MiB", "-1", "lots", "", "5.5 GB", "5 PB", "1e3 MB"])
def test_bad_quotas_are_refused_with_the_expected_form(bad: str) -> None:
    with pytest.raises(InvalidInput) as err:
        validate.quota(bad)
    assert err.value.hint and "5 GB" in err.value.hint


@pytest.mark.parametrize(("text", "cents"), [("2.50", 250), ("6", 600), ("0,99", 99)])
def test_prices(text: str, cents: int) -> None:
    assert validate.price(text) == cents


@pytest.mark.parametrize("bad", ["2.505", "-1", "free", "NaN", "Infinity"])
def test_bad_prices(bad: str) -> None:
    with pytest.raises(InvalidInput):
        validate.price(bad)


@pytest.mark.parametrize("bad", ["*", "a(b", "a)b", "a\\b", "a,b", "a+b", "a\x00b", "x" * 65,
                                 "Bob\nSmith", "a=b"])
def test_names_refuse_dn_and_filter_metacharacters(bad: str) -> None:
    with pytest.raises(InvalidInput):
        validate.text(bad, "family name")


@pytest.mark.parametrize("bad", ["*", "jan*", "a(b)", "a,b", "a+b", "a\\b", "a\x00",
                                 "Jan", "x" * 33, ".jan", "jan..p"])
def test_uids_refuse_anything_outside_the_safe_set(bad: str) -> None:
    with pytest.raises(InvalidInput):
        validate.uid(bad)


@pytest.mark.parametrize("bad", ["plainaddress", "a@b", "a@@b.org", "a b@c.org", "*@demo.coop",
                                 "zoë@demo.coop", "x" * 250 + "@demo.coop"])
def test_bad_mail_addresses(bad: str) -> None:
    with pytest.raises(InvalidInput):
        validate.mail(bad)


def test_idn_domains_are_stored_in_ascii() -> None:
    assert validate.mail("anna@bäckerei.de") == "anna@xn--bckerei-5wa.de"
