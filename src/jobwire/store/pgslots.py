"""Concurrency slots shared by every replica on one PostgreSQL database.

In one process the engine's `Slots` (engine/policies.py) decides from memory. With several
replicas a run of another replica holds a slot this replica cannot see, so the decision is made
again in the transaction that records the run: under a transaction-scoped advisory lock of its
(job, concurrency key) — `slot_lock`, taken in a fixed order so two transactions cannot deadlock —
the runs holding a slot (pending, running) and those waiting (queued) are counted, and each new
run of the batch that claims a slot (`Intake.slot`) starts, is queued, is refused (`overlap`) or
replaces the oldest holders, as `Slots.decide` would with every replica's runs in view. The lock is
held until COMMIT, so the next transaction counts this one's runs.

Only runs the engine would start (pending) claim: a run it already queued stays queued. A claim
whose run key is taken already is left alone: the batch records it as a `duplicate`, as without
slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobwire.model import ConcurrencyPolicy, EventOutcome, RunState, Transition, utcnow
from jobwire.store.base import Intake
from jobwire.store.queries import Queries

Q = Queries("postgres")


@dataclass(slots=True)
class _Pair:
    active: list[str] = field(default_factory=list)
    """Ids of the runs holding a slot, oldest first."""
    waiting: int = 0


@dataclass(slots=True)
class Claimed:
    """The batch as it is to be written (runs refused or queued by their slot claims), and the
    victims of each replacing run (by run id)."""

    batch: list[Intake]
    victims: dict[str, list[str]]
    changed: bool


async def apply_claims(conn: Any, batch: list[Intake]) -> Claimed:
    """Decide the slot claims of `batch` inside the caller's transaction (see the module doc)."""
    claims = [
        i
        for i in batch
        if i.slot is not None and i.run is not None and i.run.state == RunState.pending
    ]
    if not claims:
        return Claimed(batch, {}, False)
    taken = {
        r[0]
        for r in await conn.fetch(
            "SELECT key FROM runs WHERE key = ANY($1::text[])", [i.run.key for i in claims if i.run]
        )
    }
    claims = [i for i in claims if i.run is not None and i.run.key not in taken]
    pairs: dict[tuple[str, str | None], _Pair] = {}
    needed: dict[tuple[str, str | None], int] = {}
    """Per pair: its largest limit plus its claims in the batch (the holders a decision can need)."""
    for i in claims:
        if i.run is not None and i.slot is not None:
            pair_key = (i.run.job, i.run.concurrency_key)
            needed[pair_key] = max(needed.get(pair_key, 1), i.slot.limit + 1) + 1
    for job, ckey in sorted(needed, key=lambda p: (p[0], p[1] is not None, p[1] or "")):
        await conn.execute(Q.slot_lock, job, ckey)
        pair = pairs[(job, ckey)] = _Pair()
        # the oldest holders, as many as a decision can need (limit + the batch's claims)
        pair.active = [r[0] for r in await conn.fetch(Q.slot_holders, job, ckey, needed[(job, ckey)])]
        pair.waiting = len(await conn.fetch(Q.slot_first_queued, job, ckey))
    claimed = {id(i) for i in claims}
    out: list[Intake] = []
    victims: dict[str, list[str]] = {}
    changed = False
    for intake in batch:
        run = intake.run
        if id(intake) not in claimed or run is None or intake.slot is None:
            out.append(intake)
            continue
        pair = pairs[(run.job, run.concurrency_key)]
        limit, policy = intake.slot
        if len(pair.active) < limit and not pair.waiting:
            pair.active.append(run.id)
            out.append(intake)
            continue
        changed = True
        if policy == ConcurrencyPolicy.forbid.value:
            reason = f"concurrency policy forbid: already running {', '.join(pair.active)}"
            event = intake.event.model_copy(
                update={"outcome": EventOutcome.overlap, "run_id": None, "reason": reason}
            )
            out.append(Intake(event, None))
        elif policy == ConcurrencyPolicy.replace_.value:
            gone = pair.active[: max(len(pair.active) - limit + 1, 0)]
            victims[run.id] = gone
            pair.active = [*pair.active[len(gone) :], run.id]
            out.append(intake)
        else:  # queue
            now = utcnow()
            queued = run.model_copy(
                update={
                    "state": RunState.queued,
                    "history": [
                        Transition(
                            state=RunState.queued,
                            at=now,
                            reason=f"{len(pair.active)} of {limit} slots held on the replicas",
                        )
                    ],
                }
            )
            pair.waiting += 1
            out.append(Intake(intake.event, queued, intake.slot))
    return Claimed(out, victims, changed)


async def promote(conn: Any, run_id: str, job: str, ckey: str | None, limit: int) -> bool:
    """Move the queued run `run_id` to pending if a slot of (job, ckey) is free on every replica
    and no run queued before it waits (FIFO), in the caller's transaction under the pair's lock."""
    await conn.execute(Q.slot_lock, job, ckey)
    if len(await conn.fetch(Q.slot_holders, job, ckey, limit)) >= limit:
        return False  # no free slot
    first = await conn.fetch(Q.slot_first_queued, job, ckey)
    if not first or first[0][0] != run_id:
        return False  # not queued (any more), or an older queued run goes first
    return bool(await conn.fetch(Q.promote_queued, run_id))
