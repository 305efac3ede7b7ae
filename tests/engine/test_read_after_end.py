"""A run's end is published before its commit is written (the group commit lingers a few ms,
longer under load): a reader woken by the `succeeded` document — the dashboard's run page — that
reads the run then must see it ended, not `running` read back from the store (the page then stayed
on `running`: seen once in the browser tests under `-n 2`)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import Job, RunState
from jobwire.store.memory import MemoryStore


async def test_a_run_read_after_its_end_was_published_is_ended_before_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MemoryStore()
    eng = Engine(Settings(_env_file=None, data_dir=tmp_path / "d", shutdown_grace=timedelta(seconds=2)), store)
    await eng.start()
    gate = asyncio.Event()
    commit = store.commit
    held = False

    async def gated(*args: Any, **kw: Any) -> Any:
        if held:
            await gate.wait()
        return await commit(*args, **kw)

    monkeypatch.setattr(store, "commit", gated)
    try:
        await eng.put_job(Job.model_validate({"name": "quick", "target": {"type": "local", "command": ["true"]}}))
        sub = eng.subscribe()
        adm = await eng.trigger("quick", {})
        assert adm.run is not None
        held = True  # the intake is written; what follows waits at the gate
        async with asyncio.timeout(10):
            async for doc in sub:
                if doc.run_id == adm.run.id and doc.action == "succeeded":
                    break
        stored = await store.get_run(adm.run.id)
        assert stored is not None and not stored.state.terminal, "the end is not committed yet"
        assert (await eng.get_run(adm.run.id)).state == RunState.succeeded
    finally:
        gate.set()
        await eng.stop()
    assert eng.run_states.ending == {}, "dropped once committed"
