"""A run's end leaves the engine's memory at once and reaches the store with the next group commit
(a few ms, longer under load). Its `succeeded` document is therefore told only after that commit: a
reader woken by it — the dashboard's run page — that reads the run then reads it ended, not
`running` read back from the store (the page stayed on `running`: seen once in the browser tests
under `-n 2`)."""

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


async def test_a_runs_end_is_told_only_once_it_is_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
        rid = adm.run.id
        held = True  # the intake is written; what follows waits at the gate
        async with asyncio.timeout(10):
            while rid in eng.runs:  # the run ended: it left memory, its end waits at the gate
                await asyncio.sleep(0.005)
        _, told, _ = eng.hub.ring.read(eng.hub.ring.first - 1, 10_000)
        assert [e.doc.action for e in told if e.doc.run_id == rid and e.doc.action == "succeeded"] == []
        stored = await store.get_run(rid)
        assert stored is not None and not stored.state.terminal, "the end is not committed yet"
        gate.set()
        async with asyncio.timeout(10):
            async for doc in sub:
                if doc.run_id == rid and doc.action == "succeeded":
                    break
        assert (await eng.get_run(rid)).state == RunState.succeeded
        stored = await store.get_run(rid)
        assert stored is not None and stored.state == RunState.succeeded
    finally:
        gate.set()
        await eng.stop()
