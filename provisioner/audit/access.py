"""Who has access to what: member x service, observed now or reconstructed for a past date.

Now: each cell is what the service's bulk observation holds for the member ("yes": an
account that works, "disabled": kept but locked, "no": nothing, "?": the service could not be
observed). A connector's observation may refine "yes" through an `access(uid)` method (the
cloud knows disabled accounts). As of a past date: the journal holds every change coopctl
applied, so replaying it up to that date gives each member's last state per service (a
change made behind coopctl's back is not in it: the drift section is where that shows).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from provisioner.audit.model import AccessRow
from provisioner.journal import Entry
from provisioner.model import Member
from provisioner.services.base import Phase
from provisioner.sync import SyncPlan

# The state a successfully applied change leaves a member in, per service.
STATE_AFTER = {"create": "yes", "restore": "yes", "suspend": "disabled", "purge": "no"}


def expected_cell(phase: Phase) -> str:
    return "yes" if phase is Phase.ACTIVE else "no"


def observed_cell(observed: object | None, uid: str,
                  accounts: Collection[str] | None = None) -> str:
    """`accounts`: the observation's accounts, computed once by the caller (an observation
    may build them on each access: the wiki's from its rules, 100 ms at 10,000 members)."""
    if observed is None:
        return "?"
    refine = getattr(observed, "access", None)
    if callable(refine):
        return str(refine(uid))
    held = observed.accounts if accounts is None else accounts  # type: ignore[attr-defined]
    return "yes" if uid in held else "no"


def matrix_now(members: Iterable[Member], plan: SyncPlan) -> list[AccessRow]:
    rows = []
    services = list(plan.services)
    observed = {s: plan.services[s].observed for s in services}
    accounts = {s: frozenset(o.accounts) for s, o in observed.items()  # type: ignore[attr-defined]
                if o is not None}  # once per service, not once per member
    for m in sorted(members, key=lambda m: m.uid):
        state = plan.desired.get(m.uid)
        expected = {s: expected_cell(state.phase(s, m.uid in plan.due)) if state else "no"
                    for s in services}
        cells = {s: observed_cell(observed[s], m.uid, accounts.get(s)) for s in services}
        if m.status == "purged":  # nothing may remain: only data actually held counts
            for s in services:
                if s in accounts and m.uid not in accounts[s]:
                    cells[s] = "no"
        rows.append(AccessRow(m.uid, m.status, tuple(m.groups), cells, expected))
    return rows


def matrix_as_of(entries: Iterable[Entry], services: list[str], as_of: str,
                 statuses: Mapping[str, str] | None = None) -> list[AccessRow]:
    """Replay the journal's successful changes up to `as_of` (an ISO date or timestamp).

    A member coopctl never changed in a service shows "?" there: the journal cannot say.
    """
    limit = as_of + "T99" if len(as_of) == 10 else as_of  # a date means its whole day
    cells: dict[str, dict[str, str]] = {}
    groups: dict[str, set[str]] = {}
    for e in entries:
        if e.at > limit or e.result != "ok":
            continue
        if e.action in STATE_AFTER:
            cells.setdefault(e.uid, {})[e.service] = STATE_AFTER[e.action]
        if e.action == "create" and e.detail.get("groups"):
            groups.setdefault(e.uid, set()).update(e.detail["groups"])
        elif e.action == "groups":
            have = groups.setdefault(e.uid, set())
            have.update(e.detail.get("add") or ())
            have.difference_update(e.detail.get("remove") or ())
    rows = []
    for uid in sorted(cells):
        row = {s: cells[uid].get(s, "?") for s in services}
        status = (statuses or {}).get(uid, "?")
        rows.append(AccessRow(uid, status, tuple(sorted(groups.get(uid, ()))), row, {}))
    return rows
