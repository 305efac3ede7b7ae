"""Benchmark rows for the `s3` and `sqs` sources, measured the way users run them: `jobwire serve`
as a process, moto's server on this machine over HTTP (the standard `AWS_ENDPOINT_URL`), long
polling (20 s waits that return as soon as a message arrives).

* S3 put → run started: `PutObject` (clock just before it), S3's notification to the queue, the
  run's recorded `started_at` (the local process `date` was spawned) — sequential, 50 ms apart;
* SQS send → run started: `SendMessage` (clock just before it) → `started_at`, 25 ms apart;
* sustained SQS intake: jobwire consumes with the `sqs` trigger's DEFAULT settings (2 pollers,
  batches of 10, 20 s long polls) a queue kept fed — `WINDOW` messages waiting or in flight,
  refilled as they are deleted — until `total` were sent; each batch one submit and one
  `DeleteMessageBatch` after its commit; runs recorded per second between the first and the last
  run's `created_at` (queued behind one running job: intake and durable recording, not process
  spawning). The queue is bench/sqsdouble.py, an in-memory SQS over HTTP, and the feeding is the
  double's own (no producer process: in production producers run elsewhere, here one would take
  the same two cores from jobwire — the earlier botocore producer cost 0.18-0.35 ms of CPU per
  message, half of what jobwire spends). moto's ReceiveMessage computes every queue attribute (each
  an O(depth) scan) for each message it returns (≈2 s per call with 3,000 messages waiting), so
  with moto the row measured moto. The row also reports jobwire serve's CPU time per message and
  how long its threads waited for a CPU (schedstat): those say how much of the rate was this
  shared machine's load.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.bench_core import Ctx, Row


WINDOW = 1000
"""Sustained intake: messages waiting or in flight on the queue (~1 s of work at the floor: the
queue never runs dry, and never grows into a backlog)."""


def _moto(ctx: Ctx, name: str) -> Any:
    from tests.support.aws import MotoServer

    return MotoServer(ctx.tmp / f"moto-{name}.log").start()


class _SqsDouble:
    """`bench/sqsdouble.py` as a process: a minimal in-memory SQS over HTTP (see its docstring)."""

    def __init__(self, ctx: Ctx, delay_ms: float = 0.0) -> None:
        import socket
        import subprocess
        import sys

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.sqsdouble", "--port", str(self.port), "--delay-ms", str(delay_ms)],
            stdout=subprocess.DEVNULL,
            stderr=(ctx.tmp / "sqsdouble.log").open("ab"),
        )
        self.env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the SQS double did not start")

    def feed(self, queue: str, total: int, window: int) -> None:
        """Start the double's own producer on `queue` (`JobwireBenchFeed`, not an SQS action)."""
        import httpx

        headers = {"Content-Type": "application/x-amz-json-1.0"}
        url = f"http://127.0.0.1:{self.port}/"
        got = httpx.post(url, json={"QueueName": queue}, headers={**headers, "X-Amz-Target": "AmazonSQS.GetQueueUrl"})
        got.raise_for_status()
        feed = {"QueueUrl": got.json()["QueueUrl"], "Total": total, "Window": window, "Body": "{}"}
        httpx.post(url, json=feed, headers={**headers, "X-Amz-Target": "AmazonSQS.JobwireBenchFeed"}).raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _aws(env: dict[str, str]) -> Any:
    """An aiobotocore client factory with moto's variables."""
    os.environ.update(env)
    from jobwire.sources.sqs.aws import client

    return client


def s3_to_start(ctx: Ctx) -> list[Row]:
    from bench.bench_core import latency_row, runs_started_after, settle, summary, wait_source_connected
    from jobwire.model import run_id_for
    from tests.support.aws import unique_name
    from tests.support.server import Server

    n, warm, gap = (100, 10, 0.05) if ctx.quick else (300, 20, 0.05)
    base = ctx.tmp / "s3-latency"
    base.mkdir()
    moto = _moto(ctx, "s3")
    try:
        bucket, queue = unique_name("bench"), unique_name("bench")
        jobs = base / "jobs.yaml"
        jobs.write_text(
            "jobs:\n  - name: s3-date\n"
            f"    triggers: [{{s3: {{bucket: {bucket}, queue: {queue}, key_pattern: 'lat/(?P<i>[0-9]+)'}}}}]\n"
            "    target: {type: local, command: [date, '+%s.%N']}\n"
        )
        settle(ctx)
        with Server(base / "data", jobs, **moto.env, JOBWIRE_S3_INTAKE="false") as srv:
            wait_source_connected(srv)
            ctx.progress(f"{warm} warm-up + {n} sequential PutObject, {gap * 1e3:.0f} ms apart")
            client = _aws(moto.env)

            async def put_all() -> dict[str, float]:
                sent: dict[str, float] = {}
                async with client("s3") as s3:
                    for i in range(warm + n):
                        body = str(i).encode()
                        etag = hashlib.md5(body).hexdigest()
                        t0 = time.time()
                        await s3.put_object(Bucket=bucket, Key=f"lat/{i}", Body=body)
                        if i >= warm:
                            sent[run_id_for(f"s3-date/s3/s3://{bucket}/lat/{i}#{etag}/created")] = t0
                        rest = t0 + gap - time.time()
                        if rest > 0:
                            await asyncio.sleep(rest)
                return sent

            started, failed = runs_started_after(srv, asyncio.run(put_all()))
    finally:
        moto.stop()
    ctx.data["s3_latency"] = {"put_to_started_at": summary(started), "failed_runs": failed}
    return [latency_row("S3 put → run started_at (moto, long polling; p50 / p99), local target", started, failed, 50, 200)]


def sqs_to_start(ctx: Ctx) -> list[Row]:
    from bench.bench_core import latency_row, runs_started_after, settle, summary, wait_source_connected
    from jobwire.model import run_id_for
    from tests.support.aws import unique_name
    from tests.support.server import Server

    n, warm, gap = (100, 10, 0.025) if ctx.quick else (500, 30, 0.025)
    base = ctx.tmp / "sqs-latency"
    base.mkdir()
    moto = _moto(ctx, "sqs")
    try:
        queue = unique_name("bench")
        jobs = base / "jobs.yaml"
        jobs.write_text(
            "jobs:\n  - name: sqs-date\n"
            f"    triggers: [{{sqs: {{queue: {queue}, event_key: id}}}}]\n"
            "    target: {type: local, command: [date, '+%s.%N']}\n"
        )
        settle(ctx)
        with Server(base / "data", jobs, **moto.env) as srv:
            wait_source_connected(srv)
            ctx.progress(f"{warm} warm-up + {n} sequential SendMessage, {gap * 1e3:.0f} ms apart")
            client = _aws(moto.env)

            async def send_all() -> dict[str, float]:
                sent: dict[str, float] = {}
                async with client("sqs") as sqs:
                    url = (await sqs.get_queue_url(QueueName=queue))["QueueUrl"]
                    for i in range(warm + n):
                        key = f"lat-{i}"
                        attrs = {"id": {"DataType": "String", "StringValue": key}}
                        t0 = time.time()
                        await sqs.send_message(QueueUrl=url, MessageBody="{}", MessageAttributes=attrs)
                        if i >= warm:
                            sent[run_id_for(f"sqs-date/sqs/k:{key}")] = t0
                        rest = t0 + gap - time.time()
                        if rest > 0:
                            await asyncio.sleep(rest)
                return sent

            started, failed = runs_started_after(srv, asyncio.run(send_all()))
    finally:
        moto.stop()
    ctx.data["sqs_latency"] = {"send_to_started_at": summary(started), "failed_runs": failed}
    return [latency_row("SQS send → run started_at (moto, long polling; p50 / p99), local target", started, failed, 30, 100)]


def _cpu_and_wait(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one), all threads of `pid` summed
    (/proc/PID/task/*/schedstat): the second says how much of a row's time was the machine's load."""
    run = wait = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            on, waiting, _ = (task / "schedstat").read_text().split()
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile
        run, wait = run + int(on) / 1e9, wait + int(waiting) / 1e9
    return run, wait


def sqs_throughput(ctx: Ctx) -> list[Row]:
    from bench.bench_amqp import _ts
    from bench.bench_core import Row, db_rows, loadavg, settle, wait_source_connected
    from tests.support.aws import unique_name
    from tests.support.server import Server

    total = 3000 if ctx.quick else 10000
    base = ctx.tmp / "sqs-intake"
    base.mkdir()
    double = _SqsDouble(ctx)  # moto's ReceiveMessage scans the queue per message: it would measure moto
    try:
        queue = unique_name("bench")
        jobs = base / "jobs.yaml"
        jobs.write_text(  # the trigger's defaults: batch_size 10, wait_time 20, pollers 2
            "jobs:\n  - name: sqs-sink\n"
            f"    triggers: [{{sqs: {{queue: {queue}}}}}]\n"
            "    concurrency: {policy: queue, max_running: 1}\n"
            "    target: {type: local, command: [sleep, '3600']}\n"
        )
        db = base / "data" / "jobwire.db"
        settle(ctx)
        with Server(base / "data", jobs, **double.env, JOBWIRE_SHUTDOWN_GRACE="0.2s") as srv:
            wait_source_connected(srv)
            assert srv.proc is not None
            ctx.progress(
                f"{total:,} messages fed, {WINDOW} kept on the queue, while jobwire serve consumes (default pollers)"
            )
            load = loadavg()
            serve0, double0 = _cpu_and_wait(srv.proc.pid), _cpu_and_wait(double.proc.pid)
            double.feed(queue, total, WINDOW)
            deadline = time.time() + 300
            count = 0
            while time.time() < deadline:
                (count,) = db_rows(db, "SELECT count(*) FROM runs WHERE job = 'sqs-sink'")[0]
                if count >= total:
                    break
                time.sleep(0.1)
            serve1, double1 = _cpu_and_wait(srv.proc.pid), _cpu_and_wait(double.proc.pid)
        first, last = db_rows(db, "SELECT min(created_at), max(created_at) FROM runs WHERE job = 'sqs-sink'")[0]
    finally:
        double.stop()
    span = (_ts(last) - _ts(first)) if first and last else 0.0
    rate = (count - 1) / span if span > 0 else 0.0
    serve_cpu, serve_wait = serve1[0] - serve0[0], serve1[1] - serve0[1]
    per_msg = 1e3 * serve_cpu / max(count, 1)
    ctx.data["sqs_intake"] = {
        "messages": total,
        "runs": count,
        "seconds": span,
        "rate": rate,
        "window": WINDOW,
        "load_average_before": load,
        "serve_cpu_ms_per_message": per_msg,
        "serve_runnable_waiting_s": serve_wait,
        "double_cpu_ms_per_message": 1e3 * (double1[0] - double0[0]) / max(count, 1),
        "double_runnable_waiting_s": double1[1] - double0[1],
    }
    return [
        Row(
            "SQS messages → recorded runs /s (an in-memory SQS double over HTTP, bench/sqsdouble.py; "
            "the trigger's defaults: 2 pollers, batches of 10, delete after commit; queued, no spawn)",
            f"{rate:,.0f} /s ({count:,} of {total:,} runs; jobwire serve {per_msg:.2f} ms CPU per message, "
            f"its threads {serve_wait:.1f} s waiting for a CPU; load {load})",
            "≥ 1,000 /s",
            rate >= 1000 and count == total,
        )
    ]
