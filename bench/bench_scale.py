"""100,000 schedules in one `jobwire serve` (issue 10's scale row).

    .venv/bin/python -m bench.bench_scale scale-100k [--quick]   # rows as JSON on stdout

The jobs are job files in a folder (20 files of 5,000), as a user with that many would keep them:
half cron (`m h * * *`, the hour 12 h away from now, so none fires during the run), half interval
(2–9 days, anchored a day ahead, same reason), every job a `local` job (`true <its name>`). Measured, each with
`jobwire serve` as a subprocess (tests/support/server.py, SQLite `synchronous=FULL`):

* **start → ready**, first start (empty store: every job saved) and restart (every job unchanged):
  from the process's spawn until `GET /readyz` answers 200 (polled every 50 ms);
* **RSS** of the process once ready, and its **idle CPU** (utime + stime from /proc) over a window
  in which nothing is due;
* then 100 of the jobs become every-second crons (`* * * * * *`, each an `http` job calling
  bench/httpsink.py; the files edited, the server restarted): **due → start**, the call's arrival
  at the sink − its scheduled second (from the store), p50/p99 over a window after 3 s of warm-up,
  and the fires with no run.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.bench_core import (
    Ctx,
    Row,
    _fire_stats,
    _proc_sample,
    loadavg,
    p50_p99_row,
    section_main,
    settle,
    summary,
)
from bench.bench_e2e import Sink, _due_of

N_JOBS = 100_000
PER_FILE = 5_000
EVERY_SECOND = 100


def write_jobs(folder: Path, every_second: int, sink_url: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    hour = (datetime.now(UTC).hour + 12) % 24
    anchor = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0).isoformat()
    for f in range(N_JOBS // PER_FILE):
        jobs: list[dict[str, Any]] = []
        for i in range(f * PER_FILE, (f + 1) * PER_FILE):
            trigger: dict[str, Any]
            if i < every_second:
                trigger = {"cron": "* * * * * *"}
            elif i % 2:
                trigger = {"cron": f"{i % 60} {hour} * * *"}
            else:
                trigger = {"type": "interval", "interval": f"{2 + i % 8}d", "start": anchor}
            target: dict[str, Any] = {"type": "local", "command": ["true", f"s{i:06d}"]}
            if i < every_second:
                target = {"type": "http", "url": sink_url, "allow_private": True, "timeout": "10s"}
            jobs.append({"name": f"s{i:06d}", "triggers": [trigger], "target": target, "catchup": {"policy": "skip"}})
        (folder / f"jobs-{f:02d}.yaml").write_text(json.dumps({"jobs": jobs}))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_timed(server: Any) -> float:
    t0 = time.monotonic()
    server.start(timeout=300)
    return time.monotonic() - t0


def scale_100k(ctx: Ctx) -> list[Row]:
    from tests.support.server import Server

    idle_s, window = (10, 5) if ctx.quick else (30, 10)
    base = ctx.tmp / "scale"
    folder = base / "jobs"
    settle(ctx)
    ctx.progress(f"writing {N_JOBS:,} jobs into {N_JOBS // PER_FILE} files")
    write_jobs(folder, every_second=0)
    data = base / "data"
    data.mkdir(parents=True)
    server = Server(data, folder)
    ctx.progress("first start (empty store)")
    first = start_timed(server)
    pid = server.proc.pid if server.proc else 0
    try:
        ctx.progress(f"ready after {first:.1f}s; {idle_s}s idle window")
        cpu0, t0 = _proc_sample(pid)[0], time.monotonic()
        time.sleep(idle_s)
        idle = (_proc_sample(pid)[0] - cpu0) / (time.monotonic() - t0)
        rss = rss_mb(pid)
    finally:
        server.stop(120)
    ctx.progress("restart (every job unchanged)")
    server = Server(data, folder)
    restart = start_timed(server)
    rss_restart = rss_mb(server.proc.pid) if server.proc else float("nan")
    server.stop(120)

    with Sink() as sink:
        write_jobs(folder, every_second=EVERY_SECOND, sink_url=sink.url)
        ctx.progress(f"restart with {EVERY_SECOND} of them every second, each an http job → a sink")
        server = Server(data, folder)
        start_timed(server)
        try:
            w0 = math.ceil(time.time()) + 3
            w1 = w0 + window
            time.sleep(max(0.0, w1 + 2 - time.time()))
        finally:
            server.stop(120)
        arrived = sink.arrivals()
    _, made, _ = _fire_stats(data / "jobwire.db", w0, w1)
    dues = _due_of(data / "jobwire.db", "s0000")
    late = [t - dues[rid][1] for rid, t in arrived.items() if rid in dues and w0 <= dues[rid][1] < w1]
    expected = EVERY_SECOND * window
    missed = expected - len(made)
    ctx.data["scale_100k"] = {
        "jobs": N_JOBS,
        "first_start_s": first,
        "restart_s": restart,
        "rss_mb": rss,
        "rss_restart_mb": rss_restart,
        "idle_cpu_fraction": idle,
        "idle_window_s": idle_s,
        "every_second": EVERY_SECOND,
        "due_to_start": summary(late),
        "missed": missed,
        "load": loadavg(),
    }
    row = p50_p99_row(
        f"  … {EVERY_SECOND} of them every second, http → sink ({window}s): due → call arrives (p50 / p99)",
        late,
        10,
    )
    return [
        Row(
            f"{N_JOBS:,} schedules (cron + interval, job files): start → ready, first / restart",
            f"{first:.1f} s / {restart:.1f} s",
            "≤ 10 s",
            first <= 10 and restart <= 10,
        ),
        Row(
            "  … RSS once ready, first / restart",
            f"{rss:.0f} MB / {rss_restart:.0f} MB",
            "≤ 500 MB",
            max(rss, rss_restart) <= 500,
        ),
        Row(f"  … idle CPU ({idle_s}s, nothing due)", f"{idle:.2%} of a core", "≤ 1 %", idle <= 0.01),
        row._replace(ok=row.ok and missed == 0),
        Row(f"  … fires with no run, of {expected:,}", f"{missed}", "0", missed == 0),
    ]


SCALE_SECTIONS = {
    "scale-100k": ("100,000 schedules: start → ready, RSS, idle CPU, every-second lateness", scale_100k)
}


def main(argv: list[str] | None = None) -> None:
    section_main(SCALE_SECTIONS, argv, "Run the scale section (python -m bench runs it too).")


if __name__ == "__main__":
    main()
