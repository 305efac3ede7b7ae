"""`fleet_routing.route`: a result for a run another replica holds is forwarded to that replica's
own queue; one for an ended run, a run of this replica or past the hop limit is ignored; a probe's
answer goes to the replica that sent the probe (it names no run)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from jobwire.engine.fleet_routing import MAX_HOPS, personal_queue, route


async def test_results_go_to_their_runs_owner_and_probe_answers_to_their_sender() -> None:
    owners = {"r-theirs": "b", "r-mine": "a", "r-ended": None}
    sent: dict[str, list[dict[str, object]]] = {}

    async def find(run_ids: Sequence[str]) -> dict[str, str | None]:
        assert "" not in run_ids
        return {r: owners.get(r) for r in run_ids}

    async def publish(queue: str, messages: list[tuple[str, bytes]]) -> None:
        sent.setdefault(queue, []).extend(json.loads(body) for _, body in messages)

    strays = [
        {"kind": "outcome", "run_id": "r-theirs", "attempt": 1},
        {"kind": "outcome", "run_id": "r-mine", "attempt": 1},
        {"kind": "outcome", "run_id": "r-ended", "attempt": 1},
        {"kind": "started", "run_id": "r-theirs", "attempt": 1, "hops": MAX_HOPS},
        {"kind": "probe", "name": "probe#c1", "replica": "c"},
    ]
    ignored = await route(strays, "a", find, publish, "jobwire.results")
    assert ignored == 3
    assert [m["run_id"] for m in sent[personal_queue("jobwire.results", "b")]] == ["r-theirs"]
    assert sent[personal_queue("jobwire.results", "c")] == [
        {"kind": "probe", "name": "probe#c1", "replica": "c", "hops": 1}
    ]
