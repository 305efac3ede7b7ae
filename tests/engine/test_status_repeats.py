"""A target that reports the same status again (a watch event changing nothing a status document
shows) publishes no second document: seed 000's status consumers saw `running` twice, 0.1 ms apart,
for one Kubernetes Job (found by the issue-13 audit)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import Job, RunState, StatusBlock
from jobwire.targets.base import Outcome, RunContext, Target
from tests.support.waiting import eventually


class Reporting(Target):
    kind = "local"

    async def execute(self, ctx: RunContext) -> Outcome:
        started = datetime(2026, 1, 1, tzinfo=UTC)
        await ctx.started("job-1", StatusBlock(active=1, startTime=started))
        await ctx.report(StatusBlock(active=1, startTime=started))  # nothing new
        await ctx.report(StatusBlock(active=1, startTime=started))  # nothing new
        await ctx.report(StatusBlock(active=0, succeeded=1, startTime=started))  # new
        return Outcome(RunState.succeeded)


async def test_a_repeated_status_report_publishes_nothing(tmp_path: Path) -> None:
    eng = Engine(Settings(_env_file=None, data_dir=tmp_path / "d", shutdown_grace=timedelta(seconds=1)))
    eng.targets["local"] = Reporting(eng.settings)
    await eng.start()
    subscription = eng.hub.subscribe()
    seen: list[tuple[str, int, int]] = []
    try:
        await eng.put_job(Job.model_validate({"name": "j", "target": {"type": "local", "command": ["true"]}}))
        adm = await eng.trigger("j", {})
        assert adm.run is not None

        async def ended() -> bool:
            batch = await subscription.next_batch(timeout=0.05)
            for entry in batch.entries if batch else []:
                doc = entry.doc
                if doc.run_id == adm.run.id:  # type: ignore[union-attr]
                    seen.append((doc.action, doc.status.active, doc.status.succeeded))
            return bool(seen) and seen[-1][0] == "succeeded"

        await eventually(ended, 10, "the run's documents")
        assert seen[:3] == [("pending", 0, 0), ("running", 1, 0), ("running", 0, 1)]
        assert [a for a, _, _ in seen].count("running") == 2
    finally:
        await subscription.aclose()
        await eng.stop()
