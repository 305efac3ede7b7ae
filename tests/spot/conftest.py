"""Spot tests: an in-process engine against moto's server over HTTP (`tests.support.aws`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.model import Job, RunState
from jobwire.targets.spot import SpotTarget
from jobwire.targets.spot.ec2 import Ec2
from tests.support.aws import aws_env, moto  # noqa: F401 - fixtures
from tests.support.ec2faults import FaultyEc2
from tests.support.waiting import eventually

AMI = "ami-12c6146b"  # one of moto's default images
SPOT_ENV = {
    "JOBWIRE_SPOT_AMI": AMI,
    "JOBWIRE_SPOT_INSTANCE_TYPES": "t3.micro,t3.small",
    "JOBWIRE_SPOT_POLL_MIN": "20ms",
    "JOBWIRE_SPOT_POLL_MAX": "100ms",
    "JOBWIRE_SPOT_WATCH_INTERVAL": "100ms",
    "JOBWIRE_SPOT_RECONCILE_INTERVAL": "0",
}


@pytest.fixture
def spot_env(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:  # noqa: F811
    for key, value in SPOT_ENV.items():
        monkeypatch.setenv(key, value)
    return {**aws_env, **SPOT_ENV}


_moto_ec2_ready: set[str] = set()


async def warm_moto_ec2(endpoint: str) -> None:
    """moto builds its EC2 backend (images, instance types) on the first EC2 call, which takes
    seconds on a loaded machine: longer than the short timeouts some tests give a run. Done once
    per moto server, before the engine starts."""
    if endpoint in _moto_ec2_ready:
        return
    ec2 = Ec2(None, None)
    try:
        await ec2.describe_instances()
    finally:
        await ec2.close()
    _moto_ec2_ready.add(endpoint)


@pytest.fixture
async def engine(spot_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Engine]:
    await warm_moto_ec2(spot_env.get("AWS_ENDPOINT_URL", ""))
    eng = Engine(Settings(_env_file=None, data_dir=tmp_path / "data", shutdown_grace=timedelta(seconds=2)))
    await eng.start()
    yield eng
    await eng.stop()


def spot_target(engine: Engine) -> SpotTarget:
    target = engine.targets["spot"]
    assert isinstance(target, SpotTarget)
    return target


@pytest.fixture
def faults(engine: Engine) -> Callable[..., FaultyEc2]:
    """`faults(script)`: the engine's spot target talks to moto through a FaultyEc2 from now on."""

    def install(script: list[tuple[str, str]] | None = None) -> FaultyEc2:
        target = spot_target(engine)
        double = FaultyEc2(Ec2(None, None), script)
        target._clients.clear()
        target.ec2_factory = lambda region, endpoint: double  # type: ignore[assignment,return-value]
        return double

    return install


def spot_job(name: str, **kw: Any) -> Job:
    target = {"type": "spot", "image": "busybox:1.36", "env": {"GREETING": "hello"}, **kw.pop("target", {})}
    return Job.model_validate({"name": name, "triggers": ["api"], "target": target, **kw})


async def state_of(engine: Engine, run_id: str, *want: RunState, timeout: float = 15) -> Any:
    async def check() -> Any:
        run = await engine.get_run(run_id)
        return run if run.state in want else None

    return await eventually(check, timeout, f"run {run_id} to be {[w.value for w in want]}")


def seed_states(run: Any) -> list[str]:
    return [h["state"] for h in run.target_status.get("history", [])]


async def instance_state(instance_id: str) -> str:
    ec2 = Ec2(None, None)
    try:
        found = await ec2.describe_instances(ids=[instance_id])
        return str(found[0]["State"]["Name"])
    finally:
        await ec2.close()
