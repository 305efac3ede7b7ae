"""Kubernetes target benchmarks against the API emulator (run as its own process, so the CPU and
memory measured are jobwire's).

    .venv/bin/python -m bench.bench_kube [--runs 1000] [--creates 200]

* Event → Job create request: `engine.trigger()` (event recorded in SQLite, run dispatched, Job
  built and POSTed) until the emulator has the Job — seen by an observer watching the emulator
  from a thread of this process (same clock). Sequential, `--creates` times; p50 and p99.
* N concurrent runs watched over one watch connection: N runs triggered at once, each a Job that
  sleeps 5 s in the emulator; jobwire's CPU seconds and RSS growth (this process) until all have
  succeeded, and the end-to-end status delay — from the emulator emitting a Job's `Complete` to
  jobwire publishing the run's `succeeded` document — p99.

`run()` returns the rows for `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.logging import configure_logging
from jobwire.model import Job
from jobwire.targets.kubernetes import build

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def emulator(workdir: Path) -> Iterator[tuple[str, Path]]:
    kubeconfig = workdir / "kubeconfig"
    out = workdir / "kubeemu.log"  # a file, not a pipe this process would have to drain
    with out.open("w") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.kubeemu", "--port", "0", "--kubeconfig", str(kubeconfig)],
            cwd=ROOT,
            stdout=logf,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        url = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not url:
            if proc.poll() is not None:
                raise RuntimeError("kubeemu exited before listening: " + out.read_text()[-2000:])
            m = re.search(r"listening on (http://\S+)", out.read_text())
            if m:
                url = m.group(1)
            else:
                time.sleep(0.05)
        if not url:
            raise RuntimeError("kubeemu did not start")
        yield url, kubeconfig
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


class Observer:
    """Watches Jobs in the emulator from a subprocess (`python -m bench.bench_kube observe URL`), so
    that parsing every watch event is not charged to jobwire's process (as a thread here it was a
    third of the samples and held the GIL against the engine); records when each Job appeared and
    completed, in wall-clock time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.created: dict[str, float] = {}
        self.completed: dict[str, float] = {}
        self.ready = threading.Event()
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> Observer:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_kube", "observe", self.url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.ready.wait(10)
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            what, _, rest = line.strip().partition(" ")
            name, _, at = rest.partition(" ")
            if what == "ready":
                self.ready.set()
            elif what == "created":
                self.created.setdefault(name, float(at))
            elif what == "completed":
                self.completed.setdefault(name, float(at))

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)


def observe(url: str) -> None:
    """The observer's process: one line per Job created or completed (`created NAME WALLTIME`)."""
    path = "/apis/batch/v1/namespaces/default/jobs"
    params = {"watch": "1", "labelSelector": build.LABEL_RUN}
    with (
        contextlib.suppress(httpx.HTTPError, KeyboardInterrupt, BrokenPipeError),
        httpx.Client(base_url=url, timeout=None) as c,
        c.stream("GET", path, params=params) as resp,
    ):
        print("ready", flush=True)
        for line in resp.iter_lines():
            if not line:
                continue
            now = time.time()
            ev = json.loads(line)
            obj = ev["object"]
            name = obj["metadata"]["name"]
            if ev["type"] == "ADDED":
                print("created", name, now, flush=True)
            if build.finished(obj.get("status")) == "succeeded":
                print("completed", name, now, flush=True)


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _engine(tmp: Path, kubeconfig: Path, name: str) -> Engine:
    eng = Engine(
        Settings(
            data_dir=tmp / name,
            kubeconfig=kubeconfig,
            kube_namespace="default",
            kube_cleanup_interval=timedelta(0),
            shutdown_grace=timedelta(seconds=0),
        )
    )
    await eng.start()
    return eng


async def bench_create(url: str, kubeconfig: Path, tmp: Path, n: int) -> list[float]:
    obs = Observer(url).start()
    eng = await _engine(tmp, kubeconfig, "create")
    try:
        await eng.put_job(Job.model_validate({"name": "lat", "target": {"type": "kubernetes", "image": "x"}}))
        lat = []
        for _ in range(n):
            t0 = time.time()
            adm = await eng.trigger("lat", {})
            assert adm.run is not None
            name = build.job_name("lat", adm.run.id)
            while name not in obs.created:
                await asyncio.sleep(0.0005)
            lat.append(obs.created[name] - t0)
        return lat
    finally:
        obs.stop()
        await eng.stop()


async def bench_watch(url: str, kubeconfig: Path, tmp: Path, n: int) -> dict[str, float]:
    obs = Observer(url).start()
    eng = await _engine(tmp, kubeconfig, "watch")
    published: dict[str, float] = {}
    succeeded: set[str] = set()
    try:
        await eng.put_job(
            Job.model_validate({"name": "fan", "target": {"type": "kubernetes", "image": "lab/fan:sleep-5"}})
        )

        async def collect() -> None:
            async for doc in eng.subscribe():
                if doc.action in ("succeeded", "failed", "timed_out", "cancelled", "interrupted"):
                    published.setdefault(doc.run_id, time.time())
                if doc.action == "succeeded":
                    succeeded.add(doc.run_id)

        collector = asyncio.create_task(collect())
        await asyncio.sleep(0)
        rss0, cpu0, t0 = _rss_mb(), _cpu(), time.perf_counter()
        adms = await asyncio.gather(*(eng.trigger("fan", {}) for _ in range(n)))
        ids = [a.run.id for a in adms if a.run is not None]
        # a caller keeps what it needs of the answers (the run ids), not the answers: 10,000
        # admissions (an event and a run snapshot each, ~2.8 KB) were ~28 MB of "jobwire's" RSS
        del adms
        deadline = time.monotonic() + 600
        while len(published) < len(ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        wall, cpu, rss = time.perf_counter() - t0, _cpu() - cpu0, _rss_mb()
        collector.cancel()
        delays = [
            published[rid] - obs.completed[build.job_name("fan", rid)]
            for rid in ids
            if rid in succeeded and build.job_name("fan", rid) in obs.completed
        ]
        watches = eng.targets["kubernetes"]
        jw = watches.job_watch("default")  # type: ignore[attr-defined]
        return {
            "runs": len(ids),
            "succeeded": len(succeeded),
            "wall": wall,
            "cpu": cpu,
            "rss_growth": rss - rss0,
            "rss": rss,
            "delay_p50": _pct(delays, 50),
            "delay_p99": _pct(delays, 99),
            "watch_lists": jw.lists,
        }
    finally:
        obs.stop()
        await eng.stop()


def run(runs: int = 1000, creates: int = 200) -> list[tuple[str, str, str, bool | None]]:
    """(row, value, floor, met): the floors are issue 10's, for 10,000 concurrent runs."""
    with tempfile.TemporaryDirectory(prefix="jobwire-bench-kube-") as d:
        tmp = Path(d)
        with emulator(tmp) as (url, kubeconfig):
            lat = asyncio.run(bench_create(url, kubeconfig, tmp, creates))
        with emulator(tmp) as (url, kubeconfig):
            w = asyncio.run(bench_watch(url, kubeconfig, tmp, runs))
    n = int(w["runs"])
    scale = n >= 10_000
    return [
        ("kube: event → Job create request p50", f"{_pct(lat, 50) * 1000:.1f} ms", "—", None),
        ("kube: event → Job create request p99", f"{_pct(lat, 99) * 1000:.1f} ms", "—", None),
        (
            f"kube: {n} concurrent runs, one watch: succeeded",
            f"{int(w['succeeded'])}/{n} in {w['wall']:.1f} s",
            "all",
            int(w["succeeded"]) == n,
        ),
        (f"kube: {n} concurrent runs, one watch: jobwire CPU", f"{w['cpu']:.1f} s", "—", None),
        (
            f"kube: {n} concurrent runs, one watch: RSS",
            f"{w['rss']:.0f} MB (+{w['rss_growth']:.0f} MB)",
            "≤ 300 MB" if scale else "—",
            w["rss"] <= 300 if scale else None,
        ),
        (
            f"kube: {n} concurrent runs, one watch: status delay p50",
            f"{w['delay_p50'] * 1000:.1f} ms",
            "—",
            None,
        ),
        (
            f"kube: {n} concurrent runs, one watch: status delay p99",
            f"{w['delay_p99'] * 1000:.1f} ms",
            "≤ 1 s" if scale else "—",
            w["delay_p99"] <= 1.0 if scale else None,
        ),
    ]


def main() -> None:
    if sys.argv[1:2] == ["observe"]:
        observe(sys.argv[2])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--creates", type=int, default=200)
    args = ap.parse_args()
    os.environ.setdefault("JOBWIRE_LOG_LEVEL", "warning")
    # as `jobwire serve` does: without it structlog printed every debug line (one per Job created,
    # 10,000 of them) from the measured process
    configure_logging(os.environ["JOBWIRE_LOG_LEVEL"])
    for name, value, floor, _ in run(args.runs, args.creates):
        print(f"{name:<60} {value:<24} {floor}")


if __name__ == "__main__":
    main()
