"""kill -9 `jobwire serve` while it consumes the notifications of a burst of 500 S3 uploads
(moto's server over HTTP, given to the subprocess through its environment), restart it: every
upload exactly one run, no process run twice — a notification is deleted only after its run is
committed, and a redelivered one finds its run key (bucket, key, ETag, category) taken."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import sys
from pathlib import Path

import pytest

from jobwire.model import run_id_for
from tests.support.aws import MotoServer, moto, unique_name  # noqa: F401 - fixture
from tests.support.server import Server, all_runs
from tests.support.waiting import eventually_sync

N = 500
TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "interrupted"}


async def upload(env: dict[str, str], bucket: str, n: int) -> None:
    import os

    from jobwire.sources.sqs.aws import client

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        async with client("s3") as s3:
            for start in range(0, n, 50):
                await asyncio.gather(
                    *(
                        s3.put_object(Bucket=bucket, Key=f"burst/{i}", Body=str(i).encode())
                        for i in range(start, min(n, start + 50))
                    )
                )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slow
def test_kill9_during_a_burst_of_uploads_loses_and_doubles_nothing(tmp_path: Path, moto: MotoServer) -> None:  # noqa: F811
    bucket, queue = unique_name("crash"), unique_name("crash")
    ledger = tmp_path / "ledger.txt"
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(
        f"""
jobs:
  - name: work
    triggers: [{{s3: {{bucket: {bucket}, queue: {queue}, key_pattern: 'burst/(?P<n>[0-9]+)', visibility_timeout: 5}}}}]
    parameters: [{{name: n}}]
    target: {{type: local, shell: true, command: 'echo "$JOBWIRE_RUN_ID" >> {ledger}'}}
"""
    )
    env = {**moto.env, "JOBWIRE_S3_INTAKE": "false"}
    data = tmp_path / "data"

    # the first start makes the bucket, the queue and the notification; the burst then waits
    srv = Server(data, jobs, **env).start()
    with srv.client() as c:
        eventually_sync(
            lambda: any(s.get("connected") for s in c.get("/readyz").json().get("sources") or []),
            30,
            "the s3 source to bootstrap",
        )
    srv.stop()
    asyncio.run(upload(moto.env, bucket, N))

    srv = Server(data, jobs, port=srv.port, **env).start()
    lines = lambda: len(ledger.read_text().split()) if ledger.exists() else 0  # noqa: E731
    eventually_sync(lambda: lines() >= N // 3, 120, "a third of the burst to run")
    srv.kill9()
    assert lines() < N, "killed mid-burst"

    srv = Server(data, jobs, port=srv.port, **env).start()
    try:
        with srv.client() as c:

            runs = eventually_sync(
                lambda: (r := all_runs(c, "work")) and len(r) >= N and all(x["state"] in TERMINAL for x in r) and r,
                180,
                "every upload's run to end",
            )
        etag = lambda i: hashlib.md5(str(i).encode()).hexdigest()  # noqa: E731 - S3's ETag
        expected = {run_id_for(f"work/s3/s3://{bucket}/burst/{i}#{etag(i)}/created") for i in range(N)}
        assert {r["id"] for r in runs} == expected, "every upload exactly one run"
        assert len(runs) == N
        counts = collections.Counter(ledger.read_text().split())
        doubled = {rid: n for rid, n in counts.items() if n > 1}
        assert not doubled, f"processes ran twice: {doubled}"
        states = collections.Counter(r["state"] for r in runs)
        lost = [r for r in runs if r["state"] == "failed"]
        assert all((r["error"] or {}).get("reason") == "Lost" for r in lost), states
        assert states["succeeded"] + len(lost) == N, states
    finally:
        srv.stop()
        print(srv.output()[-2000:], file=sys.stderr)
