"""The benchmark rows the issue asks for: trigger latency, cron lateness, recording throughput, idle cost.

Each section is one function `f(ctx) -> list[Row]`. `python -m bench` runs every section in a fresh
subprocess (fresh event loop, fresh temporary data dir, SQLite with the default `synchronous=FULL`):

    .venv/bin/python -m bench.bench_core SECTION [--quick] [--out FILE] [--store postgres]

`--store postgres` runs `trigger` and `cron-every-second` on a fresh PostgreSQL database (the
sections `trigger-postgres` and `cron-every-second-postgres`, which `python -m bench` runs beside
the SQLite ones; bench/bench_pg.py).

Definitions (also printed under the table and explained in docs/performance.md):

* trigger → started: the client's wall clock just before it sends `POST /api/v1/jobs/{name}/runs`,
  to the run's recorded `started_at` (the engine's wall clock when `subprocess_exec` returned a pid,
  i.e. after fork+exec succeeded). The job runs `date +%s.%N`, so a second row uses the process's
  own clock reading as "started". Same machine, same wall clock.
* cron fire lateness: when the clock released the fire's run to start − its due time (`_Timed`:
  fires are recorded ahead of their due time, `JOBWIRE_RECORD_AHEAD`, so the event's `received_at`
  is earlier than its `scheduled_at`); beside it, due → the run's `started_at` as recorded.
  due → recorded: the moment `Engine.submit` returned (the event and its run committed) − due time.
  Missed: fire times in the window with no recorded run.
* runs recorded per second: `Engine.trigger` / `POST .../runs` calls that returned (each one a run
  committed with fsync) per wall-clock second, cross-checked against the rows in the database.
* idle: `jobwire serve` with 10,000 jobs whose cron triggers are months away; RSS from
  /proc/PID/status, CPU from /proc/PID/stat (all threads), context switches from /proc/PID/status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parent.parent


class Row(NamedTuple):
    name: str
    value: str
    floor: str
    ok: bool | None
    """True/False against the floor; None for rows without a floor (context for the others)."""


@dataclass
class Ctx:
    quick: bool
    tmp: Path
    data: dict[str, Any] = field(default_factory=dict)
    """Raw numbers for the JSON line (seconds unless the key says otherwise)."""

    out: Path | None = None
    store: str = "sqlite"
    """The store of the `jobwire serve` a section starts: `sqlite` (its data folder) or `postgres`
    (a fresh database, bench_pg.serve_env); only store-selectable sections look at it."""

    def exit_after(self, rows: list[Row]) -> None:
        """Write the result and leave at once (for a section whose event loop cannot be shut down)."""
        text = json.dumps({"rows": [r._asdict() for r in rows], "data": self.data}, default=str)
        if self.out:
            self.out.write_text(text)
        else:
            print(text, flush=True)
        sys.stderr.flush()
        shutil.rmtree(self.tmp, ignore_errors=True)
        os._exit(0)

    def progress(self, msg: str) -> None:
        print(f"    · {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- helpers


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation): p99 of 500 samples is the 495th smallest."""
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 1e3:.2f}"


def summary(xs: list[float]) -> dict[str, float | None]:
    """n, p50, p99, max (None when there are no samples: the JSON line stays strict JSON)."""
    if not xs:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(xs), "p50": pct(xs, 0.50), "p99": pct(xs, 0.99), "max": max(xs)}


def p50_p99_row(name: str, xs: list[float], floor_ms: float | None, extra: str = "") -> Row:
    p50, p99 = pct(xs, 0.5), pct(xs, 0.99)
    value = f"{ms(p50)} / {ms(p99)} ms" + extra
    if floor_ms is None:
        return Row(name, value, "—", None)
    return Row(name, value, f"p99 ≤ {floor_ms:g} ms", bool(xs) and p99 <= floor_ms / 1e3)


def latency_row(name: str, started: list[float], failed: int, p50_ms: float, p99_ms: float) -> Row:
    """A p50/p99 row with floors on both (the event-source rows)."""
    extra = f"  ({failed} runs failed)" if failed else ""
    row = p50_p99_row(name, started, p99_ms, extra)
    p50 = sorted(started)[len(started) // 2] if started else float("inf")
    return row._replace(floor=f"p50 ≤ {p50_ms:g} ms, p99 ≤ {p99_ms:g} ms", ok=bool(row.ok) and p50 <= p50_ms / 1e3)


def wait_source_connected(srv: Any) -> None:
    """Until `jobwire serve`'s /readyz shows an event source connected (30 s at most)."""
    with srv.client() as c:
        for _ in range(600):
            sources = c.get("/readyz").json().get("sources") or []
            if any(s.get("connected") for s in sources):
                return
            time.sleep(0.05)
    raise RuntimeError("the source did not connect")


def runs_started_after(srv: Any, sent: dict[str, float]) -> tuple[list[float], int]:
    """For each run id → the client's send time: recorded `started_at` − send time of the runs that
    succeeded, and how many did not (after 3 such, the others are looked at once, not waited for)."""
    started, failed = [], 0
    with srv.client() as c:
        for rid, t0 in sent.items():
            run = None
            for _ in range(100 if failed < 3 else 1):
                r = c.get(f"/runs/{rid}")
                if r.status_code == 200 and r.json()["state"] in ("succeeded", "failed"):
                    run = r.json()
                    break
                time.sleep(0.05)
            if run is None or run["state"] != "succeeded" or not run["started_at"]:
                failed += 1
                continue
            started.append(datetime.fromisoformat(run["started_at"]).timestamp() - t0)
    return started, failed


def run_loop(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """The same loop `jobwire serve` uses: uvloop where available."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def compile_jobwire() -> None:
    """Write jobwire's bytecode (`__pycache__`) once, as `pip install` does for an installed
    package. The checkout is an editable install, and with PYTHONDONTWRITEBYTECODE set (as on
    this project's machines) every `jobwire serve` a row starts would compile the ~200 modules
    again: ~0.5 s of each start, which a user never pays."""
    import compileall

    compileall.compile_dir(REPO / "src" / "jobwire", quiet=1)


def clean_env() -> dict[str, str]:
    """The environment without JOBWIRE_* settings, so a developer's shell cannot skew a row."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBWIRE_") or k == "JOBWIRE_TEST_POSTGRES"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def settle(ctx: Ctx, seconds: float = 1.0) -> None:
    ctx.progress(f"load average {loadavg()}")
    time.sleep(seconds)


# ---- a no-op HTTP server (the far end of `http` targets), in its own process


class _NoopProtocol(asyncio.Protocol):
    """Answers every request `200` with an empty body, keep-alive, `delay` seconds after it arrived
    (0: at once); parses just enough HTTP/1.1."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            if self.delay:
                asyncio.get_running_loop().call_later(self.delay, self._answer)
            else:
                self._answer()

    def _answer(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")


async def _serve_noop(port: int, delay: float = 0.0) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _NoopProtocol(delay), "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    parent = os.getppid()
    while os.getppid() == parent:  # never outlive the benchmark that started it
        await asyncio.sleep(1)
    server.close()


class NoopServer:
    """The no-op server (or, in a subclass, another far end: `argv`) in its own process."""

    def __init__(self, delay: float = 0.0) -> None:
        self.port = free_port()
        self.delay = delay
        self.proc: subprocess.Popen[str] | None = None

    def argv(self) -> list[str]:
        return ["-m", "bench.bench_core", "noop-server", "--port", str(self.port), "--delay", str(self.delay)]

    def __enter__(self) -> NoopServer:
        self.proc = subprocess.Popen(
            [sys.executable, *self.argv()],
            stdout=subprocess.PIPE,
            text=True,
            env=clean_env(),
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{' '.join(self.argv()[:2])} did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


def http_target(url: str) -> dict[str, Any]:
    return {"type": "http", "url": url, "method": "POST", "allow_private": True, "timeout": "10s"}


# ---- a raw HTTP/1.1 client: the request in ONE write with TCP_NODELAY, so rows measure the server
#
# httpx builds each request in Python (~1–3 ms here) and writes headers and body separately (Nagle
# then holds the body back); that is the client's time, not jobwire's. The clock starts right
# before the request's bytes leave (before `connect` for a new connection).


def http_request(method: str, path: str, body: bytes = b"{}", headers: dict[str, str] | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (head + f"content-length: {len(body)}\r\n\r\n").encode() + body


def _parse_head(head: bytes) -> tuple[int, int]:
    """(status, content-length) of a response head."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, length


class RawConn:
    """One blocking keep-alive connection (or a new one per request with `fresh=True`)."""

    def __init__(self, port: int, fresh: bool = False) -> None:
        self.port, self.fresh = port, fresh
        self.sock: Any = None
        self.buf = b""

    def _connect(self) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, raw: bytes) -> tuple[int, bytes, float, float]:
        """(status, body, t_sent, t_answered): wall-clock times before sending and after the answer."""
        t0 = time.time()
        if self.sock is None or self.fresh:
            self.close()
            self._connect()
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status, length = _parse_head(head)
        while len(self.buf) < length:
            self.buf += self.sock.recv(65536)
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, body, t0, time.time()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


async def raw_async_conn(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    import socket

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def raw_async_send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    writer.write(raw)
    status, length = _parse_head((await reader.readuntil(b"\r\n\r\n"))[:-4])
    await reader.readexactly(length)
    return status


# ---- an in-process engine on a fresh data dir


def make_settings(data_dir: Path, **kw: Any) -> Any:
    from jobwire.config import Settings

    args: dict[str, Any] = {"jobs": [], "shutdown_grace": timedelta(seconds=1), "http_allow_private": True}
    args.update(kw)
    return Settings(data_dir=data_dir, **args)


def quiet_logging(path: Path) -> None:
    """Log at the default level (info), as `jobwire serve` does, but into a file, not the terminal."""
    from jobwire.logging import configure_logging

    path.parent.mkdir(parents=True, exist_ok=True)
    configure_logging("info", "console", stream=path.open("a"))


async def prepopulate(db: Path, jobs: list[dict[str, Any]]) -> None:
    """Write job definitions straight into a new store (synchronous=OFF: setup, not the measurement)."""
    from jobwire.model import Job
    from jobwire.store.sqlite import SQLiteStore

    db.parent.mkdir(parents=True, exist_ok=True)
    store = SQLiteStore(f"sqlite:///{db}", synchronous="OFF")
    await store.open()
    try:
        for j in jobs:
            await store.save_job(Job.model_validate(j), "api")
    finally:
        await store.close()


def db_rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def us(t: float) -> int:
    return round(t * 1e6)


# --------------------------------------------------------------------------- 1. trigger → started


def paced_triggers(
    conn: RawConn, request: bytes, warm: int, n: int, gap: float, measuring: Callable[[], None] = lambda: None
) -> dict[str, tuple[float, float]]:
    """`warm` + `n` triggers on `conn` (closed at the end), one every `gap` seconds, each expecting a
    201: run id → (send time, answer time) of the last `n`; `measuring` is called after the warm-up."""
    sends: dict[str, tuple[float, float]] = {}
    try:
        for i in range(warm + n):
            if i == warm:
                measuring()
            status, body, t0, t1 = conn.send(request)
            if status != 201:
                raise RuntimeError(f"trigger answered {status}: {body[:300]!r}")
            if i >= warm:
                sends[json.loads(body)["id"]] = (t0, t1)
            rest = t0 + gap - time.time()
            if rest > 0:
                time.sleep(rest)  # pacing the client, not waiting for the server
    finally:
        conn.close()
    return sends


def trigger_to_start(ctx: Ctx) -> list[Row]:
    """`jobwire serve` subprocess; sequential `POST /jobs/bench-date/runs`, paced 25 ms apart.
    On `ctx.store` (SQLite, or a fresh PostgreSQL database: bench_pg.serve_env)."""
    from bench.bench_pg import CpuMeter, database_url, serve_env
    from tests.support.server import Server

    n, warm, gap = (100, 10, 0.025) if ctx.quick else (500, 30, 0.025)
    base = ctx.tmp / "trigger"
    base.mkdir()
    rows: list[Row] = []
    on = " on PostgreSQL" if ctx.store == "postgres" else ""
    settle(ctx)
    with serve_env(ctx) as env, Server(base / "data", **env) as srv:
        with srv.client() as c:
            c.put(
                "/jobs/bench-date",
                json={"name": "bench-date", "target": {"type": "local", "command": ["date", "+%s.%N"]}},
            ).raise_for_status()
        modes = [("new connection", "new_conn", True), ("keep-alive", "keepalive", False)]
        request = http_request("POST", "/api/v1/jobs/bench-date/runs")
        for label, key, fresh in modes:
            ctx.progress(f"{warm} warm-up + {n} sequential triggers, {label}")
            assert srv.proc is not None
            meter = CpuMeter(database_url(env), [srv.proc.pid])
            sends = paced_triggers(RawConn(srv.port, fresh=fresh), request, warm, n, gap, meter.start)
            meter.stop()
            with srv.client() as c:
                resp, started, own, created, failed = [], [], [], [], 0
                for rid, (t0, t1) in sends.items():
                    run = c.get(f"/runs/{rid}").json()
                    for _ in range(200):
                        if run["state"] in ("succeeded", "failed"):
                            break
                        time.sleep(0.05)
                        run = c.get(f"/runs/{rid}").json()
                    if run["state"] != "succeeded" or not run["started_at"]:
                        failed += 1
                        continue
                    resp.append(t1 - t0)
                    created.append(datetime.fromisoformat(run["created_at"]).timestamp() - t0)
                    started.append(datetime.fromisoformat(run["started_at"]).timestamp() - t0)
                    text = c.get(f"/runs/{rid}/log").text.strip()
                    try:
                        own.append(float(text.splitlines()[0]) - t0)
                    except (ValueError, IndexError):
                        failed += 1
            ctx.data[key] = {
                "send_to_201": summary(resp),
                "send_to_started_at": summary(started),
                "send_to_process_clock": summary(own),
                "send_to_created_at": summary(created),
                "failed_runs": failed,
            }
            ctx.data[key]["load"] = loadavg()
            ctx.data[key]["cpu"] = meter.as_data(n)
            per = meter.per_run(n)
            extra = f"  ({failed} runs failed)" if failed else ""
            name = f"API trigger → run started_at{on} (p50 / p99), {label}"
            if on:  # issue 9's floor for PostgreSQL: p50 and p99
                rows.append(latency_row(name, started, failed, 3, 10))
            else:
                rows.append(p50_p99_row(name, started, 5, extra))
            # context, not the floor: it adds the program's own start-up (the dynamic loader and libc
            # of `date`, ~1 ms here) to the moment the exec succeeded, which `started_at` records
            rows.append(p50_p99_row(f"  … to the program's own first clock reading, {label}", own, None))
            rows.append(p50_p99_row(f"API trigger → 201 (run recorded){on} (p50 / p99), {label}", resp, None))
            rows.append(
                Row(
                    f"  … CPU per trigger, {label}: serve" + (" / PostgreSQL backends" if on else ""),
                    f"{per['serve']:.0f}" + (f" / {per['postgres']:.0f}" if on else "") + " µs",
                    "—",
                    None,
                )
            )
    return rows


# --------------------------------------------------------------------------- 2. cron lateness


class _Timed:
    """Wraps the intake's `_admit` (called once per event, right after the transaction that holds it
    committed, by `submit` and `submit_many` alike) to note when each time-triggered fire was durable,
    and the `until` of the engine's `_start_due` (`engine/due.py` hands it the runs recorded ahead at,
    or for a big group ahead of, their due time) to note when each due time's runs were released.

    The clock's **fire lateness** of a fire is when its run was released to start − its due time:
    for a fire recorded ahead (`JOBWIRE_RECORD_AHEAD`), when `_start_due` let its due time's runs
    go (its `until` returned); for one recorded after its due time (a burst the lead did not
    cover), its commit (it is launched as it is admitted)."""

    def __init__(self, engine: Any) -> None:
        from jobwire.engine import dispatch, due

        self.orig = engine.intake._admit
        self.done: list[tuple[float, float, str]] = []  # (due, committed, outcome)
        self.released: dict[float, float] = {}  # due → when `_start_due` let its runs go
        engine.intake._admit = self
        until = due.until  # the function itself: `dispatch.until` may be another _Timed's wrapper

        def released(due: float) -> None:
            # a group of `due.BIG` runs or more is handed to `_start_due` ahead of its due time, sorted,
            # and let go when this returns: the handover's own time came up to 8 ms early
            until(due)
            self.released.setdefault(due, time.time())

        dispatch.until = released

    def __call__(self, prepared: Any, rec: Any) -> Any:
        result = self.orig(prepared, rec)
        if rec.event.scheduled_at is not None:
            self.done.append((rec.event.scheduled_at.timestamp(), time.time(), rec.event.outcome.value))
        return result

    def lateness(self, w0: float, w1: float) -> list[float]:
        """The fire lateness (above) of each fire due in [w0, w1) that made a run."""
        out = []
        for due, committed, outcome in self.done:
            if outcome != "run" or not w0 <= due < w1:
                continue
            release = self.released.get(due) if committed < due else committed
            if release is not None:
                out.append(release - due)
        return out


def _fire_stats(db: Path, w0: float, w1: float) -> tuple[list[float], set[tuple[str, int]], dict[str, int]]:
    """(fire lateness of each run that started: its `started_at` − its scheduled second; the (job,
    due) pairs that made a run; run states). Fires are recorded ahead of their due time
    (`JOBWIRE_RECORD_AHEAD`), so the event's `received_at` says when it was recorded, not when the
    job started."""
    rows = db_rows(
        db,
        "SELECT e.job, e.scheduled_at, r.started_at, e.outcome, r.state FROM events e "
        "LEFT JOIN runs r ON r.id = e.run_id "
        "WHERE e.source = 'cron' AND e.scheduled_at >= ? AND e.scheduled_at < ?",
        us(w0),
        us(w1),
    )
    late = [(started - due) / 1e6 for _, due, started, _, _ in rows if started is not None]
    made = {(job, due) for job, due, _, outcome, state in rows if outcome == "run" and state is not None}
    states: dict[str, int] = {}
    for *_, state in rows:
        states[str(state)] = states.get(str(state), 0) + 1
    return late, made, states


def install_stub_target(engine: Any) -> None:
    """Replace the engine's `local` target by one that starts nothing: `started` then `succeeded` at once.

    Everything else is the real engine: the event and run recorded in one committed transaction,
    the attempt task, the running/succeeded transitions persisted and published. Used where
    spawning (or calling) 1,000s of targets per second on a 2-core machine would measure the
    machine, not the scheduler; the row name says "stub target" wherever it is used."""
    from jobwire.model import RunState
    from jobwire.targets.base import Outcome, Target

    class StubTarget(Target):
        kind = "local"

        async def execute(self, ctx: Any) -> Outcome:
            await ctx.started("stub")
            return Outcome(state=RunState.succeeded, exit_code=0)

    engine.targets["local"] = StubTarget(engine.settings)


SATURATED = 100
"""Active runs left when the measurement ends above which the engine counts as saturated."""


async def stop_or_abandon(
    ctx: Ctx, engine: Any, rows: list[Row], cleanup: Callable[[], None] | None = None
) -> None:
    """Stop the engine, or, if it is saturated (thousands of runs still in flight), write the rows
    and leave the process without stopping it: stopping would push every one of those runs through
    the same saturated code (see docs/performance.md) and take minutes."""
    backlog = len(engine.runs)
    if backlog > SATURATED:
        ctx.progress(f"engine saturated: {backlog:,} runs still active; reporting without a clean stop")
        if cleanup:
            cleanup()
        ctx.exit_after(rows)
    await engine.stop()


def watchdog(
    ctx: Ctx, at: float, rows: Callable[[], list[Row]], cleanup: Callable[[], None] | None = None
) -> None:
    """At wall-clock time `at`, report from a thread and leave, if the event loop has not finished by
    then: a saturated loop can take many minutes to get back to the benchmark's own coroutine."""
    import threading

    def fire() -> None:
        ctx.progress("event loop still saturated at the deadline; reporting from a watchdog thread")
        result = rows()
        if cleanup:
            cleanup()
        ctx.exit_after(result)

    timer = threading.Timer(max(0.0, at - time.time()), fire)
    timer.daemon = True
    timer.start()


def _every_second(ctx: Ctx, variant: str) -> list[Row]:
    """1,000 jobs `* * * * * *`. variant `stub`: stub target; `http`: http target → a no-op server."""
    n_jobs, window = (1000, 5) if ctx.quick else (1000, 10)
    base = ctx.tmp / f"cron1-{variant}"
    settle(ctx)
    noop = NoopServer().__enter__() if variant == "http" else None
    target = http_target(noop.url) if noop else {"type": "local", "command": ["true"]}
    jobs = [
        {
            "name": f"sec-{i:04d}",
            "triggers": [{"cron": "* * * * * *"}],
            "target": target,
            "catchup": {"policy": "skip"},
        }
        for i in range(n_jobs)
    ]
    label = "http → no-op server" if noop else "stub target"
    ctx.progress(f"{n_jobs} jobs every second, {label}; {window}s window after 3s warm-up")
    db = base / "data" / "jobwire.db"

    def report(timed: _Timed, w0: float, w1: float, cpu: float, backlog: int) -> list[Row]:
        started, made, states = _fire_stats(db, w0, w1)
        late = timed.lateness(w0, w1)
        expected = n_jobs * window
        missed = expected - len(made)
        recorded = [ret - due for due, ret, outcome in timed.done if w0 <= due < w1 and outcome == "run"]
        ctx.data[f"every_second_{variant}"] = {
            "jobs": n_jobs,
            "window_s": window,
            "expected_fires": expected,
            "missed": missed,
            "fire_lateness": summary(late),
            "due_to_started": summary(started),
            "due_to_recorded": summary(recorded),
            "due_to_recorded_count": len(recorded),
            "run_states": states,
            "engine_cpu_fraction": cpu,
            "active_runs_after": backlog,
        }
        row = p50_p99_row(
            f"cron 1,000 × every second ({window}s), {label}: fire lateness (p50 / p99)", late, 10
        )
        done = states.get("succeeded", 0)
        return [
            row._replace(ok=row.ok and missed == 0),
            Row(
                f"  … fires with no run recorded by window end + 3s, of {expected:,}",
                f"{missed}",
                "0",
                missed == 0,
            ),
            p50_p99_row("  … due → run started (`started_at`, p50 / p99)", started, None),
            p50_p99_row(
                f"  … due → run durably recorded (p50 / p99; {len(recorded):,} seen by +3s)", recorded, None
            ),
            Row(
                "  … runs succeeded by window end + 3s",
                f"{done:,} of {expected:,} (engine CPU {cpu:.0%} of a core)",
                "—",
                None,
            ),
        ]

    async def main() -> list[Row]:
        from jobwire.engine import Engine

        quiet_logging(base / "engine.log")
        await prepopulate(db, jobs)
        engine = Engine(make_settings(base / "data"))
        if noop is None:
            install_stub_target(engine)
        await engine.start()
        timed = _Timed(engine)
        w0 = math.ceil(time.time()) + 3
        w1 = w0 + window
        cpu0 = time.process_time() + 1e9  # set at the window's start
        watchdog(
            ctx,
            w1 + 20,
            lambda: report(
                timed, w0, w1, (time.process_time() - cpu0) / (time.time() - w0), len(engine.runs)
            ),
            noop.__exit__ if noop else None,
        )
        await asyncio.sleep(w0 - time.time() - 0.2)
        cpu0 = time.process_time()
        await asyncio.sleep(max(0.0, w1 - time.time()))
        cpu = (time.process_time() - cpu0) / (time.time() - w0 + 0.2)
        await asyncio.sleep(3)  # let the window's runs finish
        rows = report(timed, w0, w1, cpu, len(engine.runs))
        await stop_or_abandon(ctx, engine, rows, noop.__exit__ if noop else None)
        return rows

    try:
        return list(run_loop(main))
    finally:
        if noop:
            noop.__exit__()


def cron_every_second(ctx: Ctx) -> list[Row]:
    return _every_second(ctx, "stub")


def cron_every_second_http(ctx: Ctx) -> list[Row]:
    return _every_second(ctx, "http")


def cron_same_minute(ctx: Ctx) -> list[Row]:
    """10,000 jobs all due at the same instant; stub target (see `install_stub_target`)."""
    n_jobs = 10_000
    base = ctx.tmp / "cron10k"
    settle(ctx)
    now = time.time()
    # Starting an engine with 10,000 jobs takes ~20-30 s on the 2-core bench machine: leave room.
    if ctx.quick:
        due = math.floor(now) + 50
        d = datetime.fromtimestamp(due, UTC)
        expr = f"{d.second} {d.minute} * * * *"
    else:
        due = (math.floor(now / 60) + 1) * 60
        if due - now < 60:
            due += 60
        expr = f"{datetime.fromtimestamp(due, UTC).minute} * * * *"
    jobs = [
        {
            "name": f"min-{i:05d}",
            "triggers": [{"cron": expr}],
            "target": {"type": "local", "command": ["true"]},
            "catchup": {"policy": "skip"},
        }
        for i in range(n_jobs)
    ]
    ctx.progress(f"{n_jobs:,} jobs `{expr}` (UTC), stub target, due in {due - now:.0f}s")

    def report(timed: _Timed, ready_ahead: float, all_recorded: float, all_done: float) -> list[Row]:
        started, made, states = _fire_stats(base / "data" / "jobwire.db", due, due + 1)
        late = timed.lateness(due, due + 1)
        missed = n_jobs - len(made)
        recorded = [ret - d for d, ret, outcome in timed.done if outcome == "run"]
        ctx.data["same_minute"] = {
            "jobs": n_jobs,
            "cron": expr,
            "engine_ready_before_due_s": ready_ahead,
            "missed": missed,
            "fire_lateness": summary(late),
            "due_to_started": summary(started),
            "due_to_recorded": summary(recorded),
            "due_to_recorded_count": len(recorded),
            "all_recorded_after_s": all_recorded,
            "all_finished_after_s": all_done,
            "run_states": states,
        }
        if ready_ahead <= 0:
            return [
                Row(
                    "cron 10,000 due at once",
                    f"not measured: engine start took until {-ready_ahead:.1f}s after due",
                    "p99 ≤ 10 ms",
                    False,
                )
            ]
        row = p50_p99_row(
            f"cron 10,000 due at once (`{expr}`), stub target: fire lateness (p50 / p99)", late, 10
        )
        done = states.get("succeeded", 0)
        return [
            row._replace(ok=row.ok and missed == 0),
            Row(f"  … fires missed of {n_jobs:,}", f"{missed}", "0", missed == 0),
            p50_p99_row("  … due → run started (`started_at`, p50 / p99)", started, None),
            p50_p99_row("  … due → run durably recorded (p50 / p99)", recorded, None),
            Row(
                "  … all 10,000 recorded after / runs succeeded",
                f"{all_recorded:.2f} s / {done:,} by {all_done:.0f} s",
                "—",
                None,
            ),
        ]

    async def main() -> list[Row]:
        from jobwire.engine import Engine

        quiet_logging(base / "engine.log")
        await prepopulate(base / "data" / "jobwire.db", jobs)
        engine = Engine(make_settings(base / "data"))
        install_stub_target(engine)
        t0 = time.time()
        await engine.start()
        ready_ahead = due - time.time()
        ctx.data["same_minute_engine_start_s"] = time.time() - t0
        ctx.progress(f"engine started with {len(engine.jobs):,} jobs, {ready_ahead:.1f}s before due")
        timed = _Timed(engine)
        deadline = due + (30 if ctx.quick else 60)
        watchdog(ctx, deadline + 20, lambda: report(timed, ready_ahead, math.nan, math.nan))
        await asyncio.sleep(max(0.0, due - time.time() - 0.5))
        cpu0 = time.process_time()
        while len(timed.done) < n_jobs and time.time() < deadline:
            await asyncio.sleep(0.01)
        all_recorded = time.time() - due
        while (engine.runs or engine.attempts.count) and time.time() < deadline:
            await asyncio.sleep(0.02)
        all_done = time.time() - due
        ctx.data["same_minute_cpu_s"] = time.process_time() - cpu0
        await engine.committer.flush()  # the runs' ends, as the rows read them from the store
        rows = report(timed, ready_ahead, all_recorded, all_done)
        await stop_or_abandon(ctx, engine, rows)
        return rows

    return list(run_loop(main))


# --------------------------------------------------------------------------- 3. throughput


SINK_JOB: dict[str, Any] = {
    "name": "sink",
    "target": {"type": "local", "command": ["sleep", "3600"]},
    "concurrency": {"policy": "queue", "max_running": 1},
}
"""Runs are recorded (event + run, one transaction, fsync) and queued behind one running `sleep`:
the row measures intake and durable recording, not process spawning."""


def throughput_inprocess(ctx: Ctx) -> list[Row]:
    """One producer: `Engine.trigger` from 256 concurrent coroutines in a tight loop."""
    seconds, conc = (3.0, 256) if ctx.quick else (10.0, 256)
    base = ctx.tmp / "tput"
    settle(ctx)
    ctx.progress(f"{conc} concurrent Engine.trigger loops for {seconds:g}s (+1s warm-up)")

    async def main() -> dict[str, Any]:
        from jobwire.engine import Engine
        from jobwire.model import Job

        quiet_logging(base / "engine.log")
        engine = Engine(make_settings(base / "data", shutdown_grace=timedelta(seconds=0.2)))
        await engine.start()
        await engine.put_job(Job.model_validate(SINK_JOB))
        count = 0
        stop_at = time.time() + 1 + seconds

        async def producer() -> None:
            nonlocal count
            while time.time() < stop_at:
                await engine.trigger("sink", {})
                count += 1

        try:
            tasks = [asyncio.create_task(producer()) for _ in range(conc)]
            await asyncio.sleep(1)
            c0, t0, cpu0 = count, time.time(), time.process_time()
            await asyncio.sleep(seconds)
            c1, t1, cpu1 = count, time.time(), time.process_time()
            await asyncio.gather(*tasks)
            total = count
        finally:
            await engine.stop()
        return {
            "rate": (c1 - c0) / (t1 - t0),
            "cpu_us_per_run": (cpu1 - cpu0) / max(1, c1 - c0) * 1e6,
            "total": total,
        }

    res = run_loop(main)
    (in_db,) = db_rows(base / "data" / "jobwire.db", "SELECT count(*) FROM runs WHERE job = 'sink'")[0]
    res["runs_in_db"] = in_db
    ctx.data["inprocess"] = res
    durable = in_db >= res["total"]
    return [
        Row(
            "runs recorded/s, one in-process producer (Engine.trigger ×256 concurrent; queued, no spawn)",
            f"{res['rate']:,.0f} /s ({res['cpu_us_per_run']:.0f} µs CPU per run)",
            "≥ 2,000 /s",
            res["rate"] >= 2000 and durable,
        ),
        Row(
            "  … every acknowledged run is in the database",
            f"{in_db:,} rows ≥ {res['total']:,} acked",
            "all",
            durable,
        ),
    ]


def throughput_http(ctx: Ctx) -> list[Row]:
    """One producer over HTTP: 32 keep-alive connections, one request in flight on each (raw client)."""
    return _throughput_http(ctx, stream_clients=0)


def throughput_http_stream(ctx: Ctx) -> list[Row]:
    """The same producer while 200 clients follow `GET /stream` (every status document to each)."""
    return _throughput_http(ctx, stream_clients=200)


async def _stream_reader(port: int, stats: dict[str, int], ready: asyncio.Event, want: int) -> None:
    """One `/stream` client that reads everything and counts status documents and `lagged` events."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/v1/stream HTTP/1.1\r\nHost: bench\r\n\r\n")
    buf = b""
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            buf = buf[-32:] + chunk
            stats["docs"] += chunk.count(b"event: status")
            stats["lagged"] += chunk.count(b"event: lagged")
            if b": connected" in chunk:
                stats["connected"] += 1
                if stats["connected"] == want:
                    ready.set()
    finally:
        writer.close()


def _throughput_http(ctx: Ctx, stream_clients: int) -> list[Row]:
    from tests.support.server import Server

    seconds, conc = (3.0, 32) if ctx.quick else (10.0, 32)
    base = ctx.tmp / "tput-http"
    base.mkdir()
    settle(ctx)
    srv = Server(base / "data", JOBWIRE_SHUTDOWN_GRACE="0.2s")
    with srv:
        with srv.client() as c:
            c.put("/jobs/sink", json=SINK_JOB).raise_for_status()
        readers = f", {stream_clients} /stream clients" if stream_clients else ""
        ctx.progress(f"{conc} concurrent POST /jobs/sink/runs for {seconds:g}s (+1s warm-up){readers}")

        async def main() -> dict[str, Any]:
            count = errors = 0
            stop_at = time.time() + 1 + seconds
            request = http_request("POST", "/api/v1/jobs/sink/runs")
            stats = {"docs": 0, "lagged": 0, "connected": 0}
            ready = asyncio.Event()
            followers = [
                asyncio.create_task(_stream_reader(srv.port, stats, ready, stream_clients))
                for _ in range(stream_clients)
            ]
            if followers:
                await asyncio.wait_for(ready.wait(), 60)

            async def producer() -> None:
                nonlocal count, errors
                reader, writer = await raw_async_conn(srv.port)
                try:
                    while time.time() < stop_at:
                        if await raw_async_send(reader, writer, request) == 201:
                            count += 1
                        else:
                            errors += 1
                finally:
                    writer.close()

            tasks = [asyncio.create_task(producer()) for _ in range(conc)]
            await asyncio.sleep(1)
            c0, t0 = count, time.time()
            await asyncio.sleep(seconds)
            c1, t1 = count, time.time()
            await asyncio.gather(*tasks)
            for f in followers:
                f.cancel()
            await asyncio.gather(*followers, return_exceptions=True)
            return {"rate": (c1 - c0) / (t1 - t0), "total": count, "errors": errors, **stats}

        res = run_loop(main)
    (in_db,) = db_rows(base / "data" / "jobwire.db", "SELECT count(*) FROM runs WHERE job = 'sink'")[0]
    res["runs_in_db"] = in_db
    ctx.data["http-stream" if stream_clients else "http"] = res
    durable = in_db >= res["total"] and not res["errors"]
    if stream_clients:
        per_client = res["docs"] / stream_clients
        return [
            Row(
                f"runs recorded/s, one HTTP client (as above) with {stream_clients} /stream clients",
                f"{res['rate']:,.0f} /s",
                "≥ 2,000 /s",
                res["rate"] >= 2000 and durable,
            ),
            Row(
                "  … status documents per stream client (lagged notices)",
                f"{per_client:,.0f} ({res['lagged']} lagged)",
                "—",
                None,
            ),
        ]
    return [
        Row(
            f"runs recorded/s, one HTTP client ({conc} in flight, keep-alive; queued, no spawn)",
            f"{res['rate']:,.0f} /s",
            "≥ 2,000 /s",
            res["rate"] >= 2000 and durable,
        ),
        Row(
            "  … every 201 is in the database",
            f"{in_db:,} rows ≥ {res['total']:,} acked"
            + (f", {res['errors']} errors" if res["errors"] else ""),
            "all",
            durable,
        ),
    ]


# --------------------------------------------------------------------------- 4. idle


def _proc_sample(pid: int) -> tuple[float, int, int]:
    """(CPU seconds of all threads, RSS bytes, context switches)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = switches = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
            switches += int(line.split()[1])
    return cpu, rss, switches


def _thread_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def idle(ctx: Ctx) -> list[Row]:
    """`jobwire serve` with 10,000 jobs (cron `0 0 1 1 *`: next fire on 1 January)."""
    from tests.support.server import Server

    n_jobs = 10_000
    windows = [10.0] if ctx.quick else [10.0, 61.0]
    base = ctx.tmp / "idle"
    jobs = [
        {
            "name": f"idle-{i:05d}",
            "triggers": [{"cron": "0 0 1 1 *"}],
            "target": {"type": "local", "command": ["true"]},
        }
        for i in range(n_jobs)
    ]
    ctx.progress(f"writing {n_jobs:,} job definitions")
    run_loop(lambda: prepopulate(base / "data" / "jobwire.db", jobs))
    settle(ctx)
    rows: list[Row] = []
    t0 = time.time()
    with Server(base / "data") as srv:
        startup = time.time() - t0
        assert srv.proc is not None
        pid = srv.proc.pid
        ctx.progress(f"serve ready in {startup:.1f}s; settling 3s")
        time.sleep(3)
        for w in windows:
            ctx.progress(f"sampling {w:g}s of idle")
            cpu0, _, _ = _proc_sample(pid)
            sw0 = _thread_switches(pid)
            time.sleep(w)
            cpu1, rss, _ = _proc_sample(pid)
            sw1 = _thread_switches(pid)
            frac = (cpu1 - cpu0) / w
            wake = (sw1 - sw0) / w
            ctx.data[f"idle_{w:g}s"] = {"cpu_fraction": frac, "rss_bytes": rss, "ctx_switches_per_s": wake}
            label = "10 s" if w == 10 else f"{w:g} s (includes one retention sweep)"
            rows.append(
                Row(
                    f"idle with 10,000 jobs, {label}: CPU",
                    f"{frac:.2%} of a core ({wake:.1f} context switches/s)",
                    "≈ 0 (≤ 1%)",
                    frac <= 0.01,
                )
            )
        rows.append(Row("idle with 10,000 jobs: RSS", f"{rss / 2**20:.0f} MB", "—", None))
        rows.append(Row("  … `jobwire serve` start → ready with 10,000 jobs", f"{startup:.1f} s", "—", None))
        ctx.data["idle_startup_s"] = startup
    return rows


# --------------------------------------------------------------------------- registry

from bench.bench_amqp import (  # noqa: E402 - uses the helpers above
    amqp_status,
    amqp_throughput,
    amqp_to_start,
    mqtt_to_start,
    postgres_to_start,
)
from bench.bench_aws import s3_to_start, sqs_throughput, sqs_to_start  # noqa: E402
from bench.bench_dashboard import dashboard_api  # noqa: E402
from bench.bench_fleet import fleet_scaling  # noqa: E402
from bench.bench_pg import cron_every_second_pg  # noqa: E402
from bench.bench_spot import spot_latency  # noqa: E402

SECTIONS: dict[str, tuple[str, Callable[[Ctx], list[Row]]]] = {
    "trigger": ("API trigger → local process started", trigger_to_start),
    "trigger-postgres": ("API trigger → local process started on PostgreSQL", trigger_to_start),
    "cron-every-second": ("cron lateness: 1,000 every-second schedules, stub target", cron_every_second),
    "cron-every-second-postgres": (
        "cron lateness: 1,000 every-second schedules on PostgreSQL (serve, job file, http target)",
        cron_every_second_pg,
    ),
    "cron-every-second-http": (
        "cron lateness: 1,000 every-second schedules, http target",
        cron_every_second_http,
    ),
    "cron-same-minute": ("cron lateness: 10,000 schedules due at once", cron_same_minute),
    "throughput": ("runs recorded per second: in-process producer", throughput_inprocess),
    "throughput-http": ("runs recorded per second: HTTP producer", throughput_http),
    "throughput-http-stream": (
        "runs recorded per second: HTTP producer, 200 stream clients",
        throughput_http_stream,
    ),
    "idle": ("idle with 10,000 jobs", idle),
    "amqp-latency": ("AMQP publish → local process started", amqp_to_start),
    "amqp-intake": ("AMQP messages recorded per second", amqp_throughput),
    "amqp-status": ("status documents published to RabbitMQ per second", amqp_status),
    "mqtt-latency": ("MQTT publish → local process started", mqtt_to_start),
    "postgres-latency": ("row INSERT → local process started", postgres_to_start),
    "s3-latency": ("S3 put → local process started (moto)", s3_to_start),
    "sqs-latency": ("SQS send → local process started (moto)", sqs_to_start),
    "sqs-intake": ("SQS messages recorded per second (SQS double)", sqs_throughput),
    "spot-latency": ("spot (moto): due time → request sent; callback → terminate sent", spot_latency),
    "dashboard": ("dashboard API calls: 10,000 jobs, 1,000,000 runs (p99)", dashboard_api),
    "fleet": ("runner fleet over RabbitMQ: HTTP runs/s with 1 / 2 / 4 runners", fleet_scaling),
}


STORE_SELECTABLE = {"trigger": "trigger-postgres", "cron-every-second": "cron-every-second-postgres"}
"""Sections that run on PostgreSQL too (`--store postgres`), and the name of that variant."""


def run_section(name: str, quick: bool, out: Path | None = None, store: str = "sqlite") -> dict[str, Any]:
    """Run one section in this process, on a fresh temporary directory (and, with `store`
    postgres or a `…-postgres` section, a fresh PostgreSQL database)."""
    if store == "postgres":
        if name not in STORE_SELECTABLE and name not in STORE_SELECTABLE.values():
            raise SystemExit(f"section {name} has no PostgreSQL variant: {', '.join(STORE_SELECTABLE)}")
        name = STORE_SELECTABLE.get(name, name)
    if name in STORE_SELECTABLE.values():
        store = "postgres"
    _, fn = SECTIONS[name]
    with tempfile.TemporaryDirectory(prefix=f"jobwire-bench-{name}-") as tmp:
        ctx = Ctx(quick=quick, tmp=Path(tmp), out=out, store=store)
        rows = fn(ctx)
    return {"section": name, "rows": [r._asdict() for r in rows], "data": ctx.data}


def section_main(
    sections: dict[str, tuple[str, Callable[[Ctx], list[Row]]]], argv: list[str] | None, description: str
) -> None:
    """`python -m bench.<module> SECTION [--quick] [--out FILE]` for a module's sections: one
    section in this process on a fresh temporary directory, its rows as JSON (to FILE or stdout)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("section", choices=list(sections))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here (default: stdout)")
    args = parser.parse_args(argv)
    _, fn = sections[args.section]
    compile_jobwire()
    with tempfile.TemporaryDirectory(prefix=f"jobwire-bench-{args.section}-") as tmp:
        ctx = Ctx(quick=args.quick, tmp=Path(tmp), out=args.out)
        rows = fn(ctx)
    result = {"section": args.section, "rows": [r._asdict() for r in rows], "data": ctx.data}
    _emit(result, args.out)


def _emit(result: dict[str, Any], out: Path | None) -> None:
    text = json.dumps(result, default=str)
    if out:
        out.write_text(text)
    else:
        print(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one benchmark section (python -m bench runs them all).")
    parser.add_argument("section", choices=[*SECTIONS, "noop-server"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here (default: stdout)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="noop-server: answer this many seconds late")
    parser.add_argument(
        "--store",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help=f"the store of the sections that have a choice ({', '.join(STORE_SELECTABLE)}); postgres: "
        "a fresh database jwbench_<uuid> on JOBWIRE_TEST_POSTGRES, dropped afterwards",
    )
    args = parser.parse_args(argv)
    if args.section == "noop-server":
        run_loop(lambda: _serve_noop(args.port, args.delay))
        return
    compile_jobwire()
    _emit(run_section(args.section, args.quick, args.out, args.store), args.out)


if __name__ == "__main__":
    main()
