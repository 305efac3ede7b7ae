"""`python -m bench [--quick] [--only SECTION ...]`: every benchmark row in ONE table, then one JSON line.

Each section of bench/bench_core.py runs in its own subprocess (fresh event loop, fresh temporary
data dir, SQLite with the default synchronous=FULL). bench/bench_kube.py's `run()` is called in a
subprocess too when that file exists. The plain scripts bench/bench_store.py and bench/bench_cron.py
are run as they are and their output is shown under the table. Never a pass/fail test: the exit
status is 0 whether or not a floor is met (1 only if the harness itself broke).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.bench_core import REPO, Row, clean_env, compile_jobwire, loadavg
from bench.bench_core import SECTIONS as CORE_SECTIONS
from bench.bench_e2e import E2E_SECTIONS
from bench.bench_scale import SCALE_SECTIONS
from bench.machine import REFERENCE, describe, speed

SECTIONS = {**CORE_SECTIONS, **E2E_SECTIONS, **SCALE_SECTIONS}
"""Every section; the end-to-end ones (bench/bench_e2e.py) run as `python -m bench.bench_e2e`."""

DEFINITIONS = """\
Definitions: "started" = the run's recorded started_at (engine wall clock when Popen (vfork + exec) returned the
pid, i.e. after the exec succeeded) − the client's wall clock just before its request's bytes left (a raw
HTTP/1.1 client, one write per request); "the program's own first clock reading" = the first line printed by the
job's command `date +%s.%N` − the same send time (adds the program's own start-up). Cron fire
lateness (in-process rows) = when the engine released the fire's run to start − its due time (fires
are recorded ahead of their due time, so the event's received_at is earlier than its scheduled_at);
"due → run started" = the run's started_at − scheduled_at as recorded in the store; "due → recorded" = when Engine.submit
returned (event + run committed, fsync) − due time; missed = due times in the window with no recorded run.
"stub target" = the real engine with its `local` target replaced by one that reports started and succeeded
without spawning (see docs/performance.md). Throughput rows count acknowledged runs (committed before the
answer) per wall-clock second and check them against the database. All SQLite rows use synchronous=FULL; rows
"on PostgreSQL" run on a fresh database jwbench_<uuid> (dropped afterwards) of the local server as configured
(synchronous_commit=on here). "CPU per …" = utime + stime of the serve processes and of the database's
PostgreSQL backends over the measured window (/proc), ÷ runs: the figure to compare on a loaded machine."""

SCRIPT_TIMEOUT = 900


def run_section(name: str, quick: bool) -> dict[str, Any]:
    title, _ = SECTIONS[name]
    print(f"▶ {title}", file=sys.stderr, flush=True)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="jobwire-bench-out-") as tmp:
        out = Path(tmp) / "rows.json"
        module = (
            "bench.bench_e2e"
            if name in E2E_SECTIONS
            else "bench.bench_scale"
            if name in SCALE_SECTIONS
            else "bench.bench_core"
        )
        cmd = [sys.executable, "-m", module, name, "--out", str(out)] + (["--quick"] if quick else [])
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), timeout=SCRIPT_TIMEOUT, stdout=sys.stderr)
            if out.exists() and out.stat().st_size:
                result: dict[str, Any] = json.loads(out.read_text())
            else:
                result = {"rows": [Row(title, f"error: exit status {proc.returncode}", "—", False)._asdict()]}
        except subprocess.TimeoutExpired:
            result = {"rows": [Row(title, f"error: no result in {SCRIPT_TIMEOUT}s", "—", False)._asdict()]}
    print(f"  done in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    result["section"] = name
    return result


def run_kube(quick: bool) -> dict[str, Any] | None:
    """bench/bench_kube.py's `run(runs) -> [(row, value, floor, met)]`: 10,000 concurrent runs
    (issue 10's row; ~2 min), 1,000 with --quick."""
    if not (REPO / "bench" / "bench_kube.py").exists():
        return None
    print("▶ Kubernetes target (bench/bench_kube.py)", file=sys.stderr, flush=True)
    runs = 1000 if quick else 10_000
    code = f"import json; from bench.bench_kube import run; print('\\n' + json.dumps(run({runs})))"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=clean_env(),
            timeout=SCRIPT_TIMEOUT,
            capture_output=True,
            text=True,
        )
        rows = json.loads(proc.stdout.strip().splitlines()[-1])
        return {
            "section": "kube",
            "rows": [Row(str(n), str(v), str(f), ok)._asdict() for n, v, f, ok in rows],
        }
    except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return {
            "section": "kube",
            "rows": [Row("bench_kube.run()", f"error: {exc!r}"[:120], "—", False)._asdict()],
        }


def run_replicas(quick: bool) -> dict[str, Any]:
    """bench/bench_replicas.py: replicas on PostgreSQL (failover, runs recorded with 1 and 3 replicas)."""
    print("▶ replicas on PostgreSQL (bench/bench_replicas.py)", file=sys.stderr, flush=True)
    code = (
        "import json; from bench.bench_replicas import run; "
        f"print('\\n' + json.dumps([r._asdict() for r in run({quick!r})]))"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=clean_env(),
            timeout=SCRIPT_TIMEOUT,
            capture_output=True,
            text=True,
        )
        print(proc.stdout[-3000:], file=sys.stderr, flush=True)
        return {"section": "replicas", "rows": json.loads(proc.stdout.strip().splitlines()[-1])}
    except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return {
            "section": "replicas",
            "rows": [Row("bench_replicas.run()", f"error: {exc!r}"[:120], "—", False)._asdict()],
        }


def run_script(args: list[str]) -> str:
    print(f"▶ {' '.join(args)}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(
            [sys.executable, *args],
            cwd=REPO,
            env=clean_env(),
            timeout=SCRIPT_TIMEOUT,
            capture_output=True,
            text=True,
        )
        return proc.stdout + (
            f"\n(exit status {proc.returncode})\n{proc.stderr[-2000:]}" if proc.returncode else ""
        )
    except subprocess.TimeoutExpired:
        return f"(no output within {SCRIPT_TIMEOUT}s)"


def _finite(value: Any) -> Any:
    """NaN/inf → None, so the last line is strict JSON."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter windows and fewer samples (~4 min)")
    parser.add_argument(
        "--only", action="append", choices=list(SECTIONS), help="run only this section (repeatable)"
    )
    parser.add_argument(
        "--no-scripts",
        action="store_true",
        help="skip bench_store.py, bench_cron.py, bench_kube.py, bench_replicas.py",
    )
    args = parser.parse_args()

    compile_jobwire()
    started = time.time()
    load_before = loadavg()
    speed_before = speed()
    print(f"machine speed before the rows: {describe(speed_before)}", file=sys.stderr, flush=True)
    results = [run_section(name, args.quick) for name in (args.only or list(SECTIONS))]
    scripts: dict[str, str] = {}
    if not args.no_scripts:
        kube = run_kube(args.quick)
        if kube is not None:
            results.append(kube)
        results.append(run_replicas(args.quick))
        store_args = ["bench/bench_store.py", "--seconds", "0.5" if args.quick else "1.0"]
        scripts["bench/bench_store.py"] = run_script(store_args)
        scripts["bench/bench_cron.py"] = run_script(["bench/bench_cron.py"])

    console = Console(width=max(140, Console().width))
    table = Table(title=f"jobwire benchmarks{' (--quick)' if args.quick else ''}", show_lines=False)
    table.add_column("row")
    table.add_column("value", justify="right")
    table.add_column("floor", justify="right")
    table.add_column("ok", justify="center")
    for res in results:
        for r in res["rows"]:
            mark = "—" if r["ok"] is None else ("[green]✓[/]" if r["ok"] else "[red]✗[/]")
            table.add_row(r["name"], r["value"], r["floor"], mark)
    console.print(table)
    speed_after = speed()
    machine = f"{os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}"
    console.print(
        f"machine: {machine}; load average before {load_before}, after {loadavg()}", highlight=False
    )
    console.print(
        f"machine speed (bench/machine.py) before the rows: {describe(speed_before)}\n"
        f"machine speed after the rows: {describe(speed_after)}",
        highlight=False,
    )
    console.print(DEFINITIONS, highlight=False)
    for name, out in scripts.items():
        console.print(f"\n[bold]{name}[/]")
        console.print(out.rstrip(), highlight=False, markup=False)

    line = {
        "bench": "jobwire",
        "quick": args.quick,
        "seconds": round(time.time() - started, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": load_before,
            "load_after": loadavg(),
            "speed_before": speed_before,
            "speed_after": speed_after,
            "speed_reference": REFERENCE,
        },
        "rows": [{**r, "section": res["section"]} for res in results for r in res["rows"]],
        "data": {res["section"]: res.get("data", {}) for res in results},
    }
    print(json.dumps(_finite(line), default=str, ensure_ascii=False, allow_nan=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
