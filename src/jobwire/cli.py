"""The `jobwire` command: run the server, check job files offline, and drive a server over its API.

Exit codes: 0 success; 1 a checked file has errors, or a waited-for run did not succeed;
2 usage errors, bad settings, or an API error (the message says what to do).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from jobwire.client import DEFAULT_URL, Client, ClientError

if TYPE_CHECKING:
    from jobwire.config import Settings

app = typer.Typer(
    name="jobwire",
    help="Event-driven job scheduler: events in, exactly one run out, watched to the end.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
)
jobs_app = typer.Typer(help="Jobs on a running server.", no_args_is_help=True)
runs_app = typer.Typer(help="Runs on a running server.", no_args_is_help=True)
events_app = typer.Typer(help="Events (and what they made) on a running server.", no_args_is_help=True)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jobwire")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"jobwire {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            help="Print jobwire's version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Event-driven job scheduler: events in, exactly one run out, watched to the end."""


app.add_typer(jobs_app, name="jobs")
app.add_typer(runs_app, name="runs")
app.add_typer(events_app, name="events")


def _width(stream: Any) -> int | None:
    """A terminal's own width; piped output gets wide tables instead of 80 columns."""
    if hasattr(stream, "isatty") and stream.isatty():
        return None
    return int(os.environ.get("COLUMNS") or 160)


out = Console(highlight=False, markup=False, soft_wrap=True, width=_width(sys.stdout))
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True, width=_width(sys.stderr))

TERMINAL = {"succeeded", "failed", "timed_out", "cancelled", "interrupted"}
STATE_STYLE = {
    "queued": "dim",
    "pending": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "timed_out": "red",
    "cancelled": "magenta",
    "interrupted": "magenta",
}

# ---------------------------------------------------------------------------- shared options

UrlOpt = Annotated[
    str,
    typer.Option("--url", envvar="JOBWIRE_URL", help="The jobwire server.", rich_help_panel="Connection"),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=["JOBWIRE_TOKEN", "JOBWIRE_API_TOKEN"],
        help="API token (env JOBWIRE_TOKEN, else JOBWIRE_API_TOKEN).",
        show_default=False,
        show_envvar=False,
        rich_help_panel="Connection",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


def fail(message: str, hint: str | None = None, code: int = 2) -> NoReturn:
    err.print(Text(f"error: {message}", style="red"))
    if hint:
        err.print(Text(hint, style="dim"))
    raise typer.Exit(code)


@contextlib.contextmanager
def session(url: str, token: str | None) -> Iterator[Client]:
    """A client; any API error ends the command with its message and exit code 2."""
    client = Client(url, token)
    try:
        yield client
    except ClientError as exc:
        for d in exc.details:
            err.print(Text(f"  {d.get('path', '')}: {d.get('message', '')}", style="red"))
        fail(exc.message + (f" ({exc.reason})" if exc.reason else ""), exc.hint)
    finally:
        client.close()


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def when(value: Any) -> str:
    if not value:
        return "-"
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    return dt.strftime("%Y-%m-%d %H:%M:%S%z").replace("+0000", "Z")


def error_text(error: dict[str, Any]) -> str:
    """`message (reason, code 137)`: only the parts a run's error has (no `None`)."""
    extra = [str(error["reason"])] if error.get("reason") not in (None, "") else []
    if error.get("code") not in (None, ""):
        extra.append(f"code {error['code']}")
    message = str(error.get("message") or "")
    return message + (f" ({', '.join(extra)})" if extra else "")


def without_nulls(value: Any) -> Any:
    """A definition for reading: fields left unset (`null`) are left out, as in a job file."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def origin_text(origin: str) -> str:
    """Where a job is defined, the same in `jobs list` and `jobs show`: `api`, or `file:<path>`
    with the path as the server was given it."""
    return origin


def id_column(table: Table, name: str, ids: list[str]) -> None:
    """A column of ids, never cut short to fit the terminal: an id is what the next command
    takes (`jobwire runs show <id>`). A run id is 24 or 35 characters."""
    table.add_column(name, no_wrap=True, min_width=max((len(i) for i in ids), default=len(name)))


def state_text(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


# ---------------------------------------------------------------------------- offline: serve / check / config


def load_settings(**overrides: Any) -> Settings:
    from pydantic import ValidationError

    from jobwire.config import Settings, settings_error_lines

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = settings_error_lines(exc)
        if len(lines) == 1:
            fail(f"invalid setting {lines[0]}", "check the JOBWIRE_* environment and JOBWIRE_CONFIG")
        fail(
            "invalid settings:\n  " + "\n  ".join(lines), "check the JOBWIRE_* environment and JOBWIRE_CONFIG"
        )
    except ValueError as exc:
        fail(f"invalid settings: {exc}")


def format_definition_error(e: Any) -> str:
    """`file:line: path: message` (line and path left out when unknown)."""
    return str(e)


def trigger_summary(t: dict[str, Any]) -> str:
    kind = str(t.get("type", "?"))
    ident = f"[{t['id']}] " if t.get("id") else ""
    if kind == "cron":
        tz = t.get("timezone") or "UTC"
        return f"{ident}cron {t.get('cron')}" + (f" ({tz})" if tz != "UTC" else "")
    if kind == "interval":
        return f"{ident}every {t.get('interval')}"
    if kind == "at":
        return f"{ident}at {when(t.get('at'))}"
    return f"{ident}{kind}"


def target_summary(target: dict[str, Any]) -> str:
    kind = str(target.get("type", "?"))
    if kind == "http":
        return f"http {target.get('method', 'POST')} {target.get('url')}"
    if kind == "local":
        cmd = target.get("command")
        return "local " + (" ".join(cmd) if isinstance(cmd, list) else str(cmd))
    for key in ("image", "template", "url"):
        if target.get(key):
            return f"{kind} {target[key]}"
    return kind


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (JOBWIRE_HOST).", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="Port (JOBWIRE_PORT).", show_default=False)] = None,
    jobs: Annotated[
        list[Path] | None,
        typer.Option("--jobs", help="Job file or folder; repeatable (JOBWIRE_JOBS).", show_default=False),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="SQLite file, lock and run logs (JOBWIRE_DATA_DIR).", show_default=False),
    ] = None,
    reload: Annotated[
        bool | None,
        typer.Option("--reload/--no-reload", help="Re-load job files when they change.", show_default=False),
    ] = None,
    role: Annotated[
        str | None,
        typer.Option(
            help="all (default): record and run; scheduler: record, hand runs to the fleet over "
            "RabbitMQ; runner: run what the scheduler hands over (JOBWIRE_ROLE).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run jobwire: the engine and the API, in one process and one event loop."""
    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "jobs": jobs or None,
        "data_dir": data_dir,
        "reload": reload,
        "role": role,
    }
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    from jobwire.api.auth import BindRefusedError, check_bind

    try:
        check_bind(settings)
    except BindRefusedError as exc:
        fail(str(exc))
    from jobwire.logging import configure_logging

    try:
        configure_logging(settings.log_level, settings.log_format)
    except ValueError as exc:
        fail(str(exc), "set JOBWIRE_LOG_LEVEL to debug, info, warning or error")
    raise typer.Exit(run_in_loop(lambda: serve_async(settings)))


def run_in_loop(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run `main()` on a uvloop event loop (asyncio's own where uvloop is unavailable)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - Windows
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


async def serve_async(settings: Settings) -> int:
    """Engine + uvicorn in one loop:

    1. `engine.start()` (store lock, job files, reconcile, scheduler) — on failure, exit 1 and
       never open the port;
    2. `uvicorn.Server.serve()` — uvicorn's own signal capture is replaced: SIGINT/SIGTERM set
       `server.should_exit` (a second one sets `force_exit` and ends the engine's shutdown grace),
       so uvicorn stops accepting, drains connections and returns;
    3. `engine.stop()` — always, once serving ends, however it ended.
    """
    import structlog
    import uvicorn

    from jobwire.api import create_app
    from jobwire.api.connections import uvicorn_options
    from jobwire.api.rawfront import trigger_front
    from jobwire.engine import Engine
    from jobwire.engine.disk import data_dir_problem
    from jobwire.engine.secret import SecretKeyError
    from jobwire.jobfile import JobFileError
    from jobwire.sinks import SinkConfigError
    from jobwire.store import StoreError

    log = structlog.get_logger("jobwire.serve")
    if settings.role == "runner":
        return await serve_runner(settings)
    try:
        engine = Engine(settings)
    except OSError as exc:  # the data folder cannot be made (read-only, a file in the way, full)
        err.print(Text(f"error: {data_dir_problem(exc, settings.data_dir)}", style="red"))
        return 1
    except StoreError as exc:  # e.g. a postgresql:// URL without the `postgres` extra
        err.print(Text(f"error: {exc}", style="red"))
        return 1
    app = create_app(engine)
    options = uvicorn_options(
        settings.max_connections,
        settings.header_timeout.total_seconds(),
        settings.keepalive_timeout.total_seconds(),
    )
    if not settings.access_log:  # triggers answered on the connection (api/rawfront.py)
        options["http"] = trigger_front(options["http"], engine, app.state.auth, settings.max_body_bytes)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.access_log,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=3,
        **options,
    )
    server = _make_server(config)
    server.check_bound = lambda addresses: _refusal(settings, addresses)

    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        if len(received) == 1:
            log.info("signal received, shutting down", signal=sig.name)
            server.should_exit = True
        else:
            log.warning("second signal, forcing shutdown", signal=sig.name)
            server.force_exit = True
            engine.hurry()  # the runs still running are stopped now, not after the grace

    handled = (signal.SIGINT, signal.SIGTERM)
    for sig in handled:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    try:
        try:
            await engine.start()
        except JobFileError as exc:
            for e in getattr(exc, "errors", []):
                err.print(Text(format_definition_error(e), style="red"))
            err.print(Text("error: job files have errors; jobwire did not start", style="red"))
            return 1
        except (StoreError, SecretKeyError, SinkConfigError) as exc:
            err.print(Text(f"error: {exc}", style="red"))
            return 1
        except OSError as exc:
            err.print(Text(f"error: {data_dir_problem(exc, settings.data_dir)}", style="red"))
            return 1
        try:
            await server.serve()
        except SystemExit:  # uvicorn exits this way when it cannot bind the port (logged above)
            err.print(
                Text(f"error: jobwire could not listen on {settings.host}:{settings.port}", style="red")
            )
            return 1
        finally:
            saved = await _stop_engine(engine)
        if server.refused:
            err.print(Text(f"error: {server.refused}", style="red"))
            return 1
        return 0 if saved else 1
    finally:
        for sig in handled:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


async def serve_runner(settings: Settings) -> int:
    """`--role runner`: the runner (work queue in, results out; no store) and its probes and
    metrics over HTTP, in one loop; SIGINT/SIGTERM: take no more work, finish or hand back what runs."""
    import uvicorn

    from jobwire.api.runner_app import create_runner_app
    from jobwire.engine.runner import Runner

    runner = Runner(settings)
    config = uvicorn.Config(
        create_runner_app(runner),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=settings.access_log,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=3,
    )
    server = _make_server(config)
    server.check_bound = lambda addresses: _refusal(settings, addresses)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if server.should_exit:
            server.force_exit = True
            runner.hurry()  # what still runs goes back to the queue now, not after the grace
        server.should_exit = True

    handled = (signal.SIGINT, signal.SIGTERM)
    for sig in handled:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    try:
        try:
            await runner.start()
        except Exception as exc:
            err.print(Text(f"error: the runner could not start: {exc}", style="red"))
            await runner.stop()
            return 1
        try:
            await server.serve()
        except SystemExit:
            err.print(
                Text(f"error: jobwire could not listen on {settings.host}:{settings.port}", style="red")
            )
            return 1
        finally:
            await runner.stop()
        if server.refused:
            err.print(Text(f"error: {server.refused}", style="red"))
            return 1
        return 0
    finally:
        for sig in handled:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


async def _stop_engine(engine: Any) -> bool:
    """`engine.stop()`; False, after one line saying what was not saved, when the disk is full."""
    from jobwire.engine.disk import StopIncomplete

    try:
        await engine.stop()
    except StopIncomplete as exc:
        err.print(Text(f"error: {exc}", style="red"))
        return False
    return True


def _refusal(settings: Settings, addresses: list[str]) -> str | None:
    """Why the listening `addresses` must not stay open (no token off loopback), or None."""
    from jobwire.api.auth import BindRefusedError, check_listening

    try:
        check_listening(settings, addresses)
    except BindRefusedError as exc:
        return str(exc)
    return None


def _make_server(config: Any) -> Any:
    """uvicorn.Server without its signal capture (which re-raises the signal once serving ends,
    killing the process before the engine could stop). uvicorn is imported here, not at module
    level, so offline commands start fast."""
    import uvicorn

    class Server(uvicorn.Server):
        refused: str | None = None
        """Set by `startup` when `check_bound` refused the listening sockets' addresses."""
        check_bound: Callable[[list[str]], str | None] | None = None

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.check_bound is None or not getattr(self, "servers", None):
                return
            bound = [str(s.getsockname()[0]) for srv in self.servers for s in srv.sockets or ()]
            self.refused = self.check_bound(bound)
            if self.refused:  # stop accepting at once, before a request can be served
                for srv in self.servers:
                    srv.close()
                self.should_exit = True

    return Server(config)


@app.command()
def check(
    paths: Annotated[
        list[Path], typer.Argument(help="Job files or folders (YAML, JSON).", show_default=False)
    ],
    as_json: JsonOpt = False,
) -> None:
    """Validate job files offline: every error as `file:line: path: message`; exit 1 if any."""
    from jobwire.api.schemas import mask_job
    from jobwire.jobfile import check_files

    jobs, errors, warnings = check_files(paths)
    job_list = [j[0] if isinstance(j, tuple) else j for j in jobs]
    if as_json:
        emit_json(
            {
                "ok": not errors,
                "jobs": [mask_job(j) for j in job_list],
                "errors": [
                    {"source": str(e.source), "line": e.line, "path": e.path, "message": e.message}
                    for e in errors
                ],
                "warnings": [
                    {"source": str(w.source), "line": w.line, "path": w.path, "message": w.message}
                    for w in warnings
                ],
            }
        )
        raise typer.Exit(1 if errors else 0)
    for w in warnings:  # the job loads; it will not work as it stands
        where = w.source if w.line is None else f"{w.source}:{w.line}"
        out.print(Text(f"{where}: warning: {w.path}: {w.message}", style="yellow"))
    if errors:
        for e in errors:
            out.print(Text(format_definition_error(e), style="red"))
        n = len(errors)
        out.print(Text(f"{n} error{'s' if n != 1 else ''} in job files", style="red bold"))
        raise typer.Exit(1)
    table = Table(title=f"{len(job_list)} job{'s' if len(job_list) != 1 else ''} OK")
    table.add_column("job", style="bold", no_wrap=True)
    table.add_column("triggers", no_wrap=True)
    table.add_column("target", overflow="fold")
    for job in job_list:
        data = mask_job(job)  # a password in a URL, a webhook secret: shown as ****
        triggers = [trigger_summary(t) for t in data["triggers"]]
        table.add_row(job.name, "\n".join(triggers) or "-", target_summary(data["target"]))
    out.print(table)


@app.command("status")
def status(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Readiness, the runs waiting for a place on their target (the launch backlog, in memory and
    in the store), and the replicas: each one's role, whether it leads (lease token), its last
    heartbeat (docs/replicas.md). Exit 1 when the server is not ready."""
    with session(url, token) as c:
        report = c.readiness()
    if as_json:
        emit_json(report)
        raise typer.Exit(0 if report.get("status") == "ready" else 1)
    out.print(f"{url}: {report.get('status')}")
    for problem in report.get("problems") or []:
        out.print(Text(f"  {problem}", style="red"))
    for kind, b in sorted((report.get("launch_backlog") or {}).items()):
        if b.get("waiting"):  # runs wait for a place on their target (docs/operations.md, "Overload")
            started = b.get("waiting_since")
            since = datetime.fromtimestamp(started, UTC).isoformat() if started else None
            out.print(
                f"launch backlog, {kind}: {b['waiting']:,} waiting ({b.get('in_memory', 0):,} in memory, "
                f"{b.get('in_store', 0):,} in the store) since {when(since)}; "
                f"{b.get('running', 0):,} of {b.get('limit', 0):,} running",
                soft_wrap=True,
            )
            if b.get("read_error"):
                out.print(Text(f"  reading them back from the store fails: {b['read_error']}", style="red"))
    me = report.get("replica") or {}
    if me:
        lead = f"leader (lease token {me.get('lease_token')})" if me.get("leader") else "follower"
        leader = me.get("leader_id") or "-"
        out.print(f"this replica: {me.get('id')} ({me.get('role')}), {lead}; leader: {leader}")
        # one line per replica, not a table: a 32-character id, a host and two times do not fit
        # 80 columns, and a table squeezed to fit them truncated the ids away when piped
        out.print("replicas:")
        for r in me.get("replicas") or []:
            leads = "leader" if r.get("id") == me.get("leader_id") else "-"
            state = "alive" if r.get("alive") else "dead"
            out.print(
                f"  {r.get('id', '')}  {r.get('role', '')}  {state}  {leads}  "
                f"{r.get('host', '')}:{r.get('pid', '')}  started {when(r.get('started_at'))}  "
                f"last heartbeat {when(r.get('last_heartbeat'))}",
                soft_wrap=True,
            )
    raise typer.Exit(0 if report.get("status") == "ready" else 1)


@app.command("config")
def show_config(as_json: JsonOpt = False) -> None:
    """The effective settings (environment, JOBWIRE_CONFIG file, defaults) with secrets masked,
    then each event-source kind's own section (amqp, mqtt, postgres, ...)."""
    data = load_settings().masked()
    data.update(plug_sections())
    if as_json:
        emit_json(data)
    else:
        typer.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip())


def plug_sections() -> dict[str, Any]:
    """Each source kind's settings section (read from the environment), secrets masked."""
    from pydantic import ValidationError

    from jobwire.redact import mask_fields, mask_strings
    from jobwire.registry import SOURCES

    out: dict[str, Any] = {}
    for plug in SOURCES:
        if plug.settings is None:
            continue
        try:
            section = plug.settings().model_dump(mode="json")
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            fail(f"invalid {plug.kind} setting: {problems}")
        out[plug.kind] = mask_strings(mask_fields(section))
    return out


# ---------------------------------------------------------------------------- jobs


def jobs_table(items: list[dict[str, Any]]) -> Table:
    table = Table()
    table.add_column("job", no_wrap=True, min_width=min(40, max(len(j["name"]) for j in items)))
    for col in ("origin", "state", "triggers"):
        table.add_column(col, no_wrap=True)
    table.add_column("target", overflow="fold")
    table.add_column("description")
    for j in items:
        origin = str(j.get("origin", ""))
        table.add_row(
            Text(j["name"], style="bold"),
            origin_text(origin),
            Text("paused", style="yellow") if j.get("paused") else Text("active", style="green"),
            "\n".join(trigger_summary(t) for t in j.get("triggers", [])) or "-",
            target_summary(j.get("target") or {}),
            str(j.get("description", "")),
        )
    return table


def show_job(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(job)  # the API's document as it is
    else:
        shown = without_nulls(job)
        if "origin" in shown:
            shown["origin"] = origin_text(str(shown["origin"]))
        typer.echo(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True).rstrip())


@jobs_app.command("list")
def jobs_list(url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """All jobs, with their triggers and targets."""
    with session(url, token) as c:
        items = c.get("/jobs")["items"]
    if as_json:
        emit_json(items)
    elif not items:
        out.print("no jobs")
    else:
        out.print(jobs_table(items))


@jobs_app.command("show")
def jobs_show(name: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """One job's full definition (secrets masked)."""
    with session(url, token) as c:
        show_job(c.get(f"/jobs/{name}"), as_json)


@jobs_app.command("pause")
def jobs_pause(
    name: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Stop a job's triggers from making runs (its events are still recorded, as `paused`)."""
    with session(url, token) as c:
        job = c.post(f"/jobs/{name}/pause").data
    if as_json:
        emit_json(job)
    else:
        out.print(f"{name}: paused")


@jobs_app.command("resume")
def jobs_resume(
    name: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Let a paused job's triggers make runs again."""
    with session(url, token) as c:
        job = c.post(f"/jobs/{name}/resume").data
    if as_json:
        emit_json(job)
    else:
        out.print(f"{name}: resumed")


# ---------------------------------------------------------------------------- run


def parse_params(values: list[str]) -> dict[str, Any]:
    """`k=v` gives the text v (the server converts it to the parameter's type); `k:=json` a JSON value."""
    params: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.rstrip(":").strip():
            raise typer.BadParameter(f"{item!r}: expected NAME=VALUE (or NAME:=JSON)")
        if key.endswith(":"):
            try:
                params[key[:-1].strip()] = json.loads(value)
            except ValueError as exc:
                raise typer.BadParameter(f"{item!r}: the value after := must be JSON ({exc})") from None
        else:
            params[key.strip()] = value
    return params


def exit_code_for(state: str) -> int:
    return 0 if state == "succeeded" else 1


def _about(data: str, run_id: str) -> bool:
    try:
        return bool(json.loads(data).get("run_id") == run_id)
    except (ValueError, AttributeError):
        return False


def wait_for_run(c: Client, run: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """Follow a run to its end: over /stream (SSE) when the server offers it, else by polling
    GET /runs/{id} every 200 ms. Returns the final run."""
    run_id = run["id"]
    if run["state"] in TERMINAL:
        return run
    with contextlib.ExitStack() as stack:
        status = None if quiet else stack.enter_context(err.status(f"{run_id}: {run['state']}"))

        def done(current: dict[str, Any]) -> bool:
            if status is not None:
                status.update(f"{run_id}: {current['state']}")
            return current["state"] in TERMINAL

        try:
            for ev in c.events(job=run["job"], read_timeout=60.0):
                # on `: connected` (subscribed), on heartbeats, after a gap (`lagged`) and on
                # this run's documents: look
                if ev is None or ev.event == "lagged" or (ev.event == "status" and _about(ev.data, run_id)):
                    current = c.get(f"/runs/{run_id}")
                    if done(current):
                        return dict(current)
        except ClientError as exc:
            if exc.status in (401, 403):
                raise
        # the stream is unavailable or ended: poll
        while True:
            current = c.get(f"/runs/{run_id}")
            if done(current):
                return dict(current)
            time.sleep(0.2)
    raise AssertionError("unreachable")


def print_logs(c: Client, run_id: str, follow: bool) -> None:
    for chunk in c.stream_text(f"/runs/{run_id}/log", {"follow": follow}):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def run_summary(run: dict[str, Any]) -> Text:
    text = Text(f"{run['id']} ")
    text.append_text(state_text(run["state"]))
    if run.get("exit_code") is not None:
        text.append(f" exit code {run['exit_code']}")
    if run.get("http_status") is not None:
        text.append(f" HTTP {run['http_status']}")
    error = run.get("error") or {}
    if error.get("message"):
        text.append(f": {error['message']}", style="red")
    return text


@app.command("run")
def run_job(
    job: str,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="NAME=VALUE, or NAME:=JSON; repeatable.", show_default=False),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="A repeat with the same key returns the first run.", show_default=False)
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the run to end; exit 0 if it succeeded.")
    ] = False,
    follow_logs: Annotated[
        bool, typer.Option("--follow-logs", help="Stream the log until the run ends.")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Trigger a run of JOB and print its id."""
    params = parse_params(param or [])
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    with session(url, token) as c:
        resp = c.post(f"/jobs/{job}/runs", params, headers=headers)
        run: dict[str, Any] = resp.data
        replayed = resp.headers.get("idempotency-replayed") == "true"
        if not as_json:
            out.print(run["id"])
            if replayed:
                err.print(Text("(the existing run for this idempotency key)", style="dim"))
        if not (wait or follow_logs):
            if as_json:
                emit_json(run)
            return
        if follow_logs:
            print_logs(c, run["id"], follow=True)
        final = wait_for_run(c, run, quiet=as_json or follow_logs)
    if as_json:
        emit_json(final)
    else:
        err.print(run_summary(final))
    raise typer.Exit(exit_code_for(final["state"]))


# ---------------------------------------------------------------------------- runs


@runs_app.command("list")
def runs_list(
    job: Annotated[str | None, typer.Option(help="Only this job's runs.", show_default=False)] = None,
    state: Annotated[
        list[str] | None, typer.Option(help="Only runs in this state; repeatable.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="At most this many (newest first).")] = 20,
    cursor: Annotated[
        str | None, typer.Option(help="next_cursor of a previous page.", show_default=False)
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Runs, newest first."""
    with session(url, token) as c:
        page = c.get("/runs", job=job, state=state, limit=limit, cursor=cursor)
    if as_json:
        emit_json(page)
        return
    table = Table()
    id_column(table, "run", [r["id"] for r in page["items"]])
    for col in ("job", "state", "attempt", "trigger", "created", "finished"):
        table.add_column(col, no_wrap=True)
    table.add_column("result")
    for r in page["items"]:
        result = ""
        if r.get("exit_code") is not None:
            result = f"exit {r['exit_code']}"
        elif r.get("http_status") is not None:
            result = f"HTTP {r['http_status']}"
        if (r.get("error") or {}).get("message"):
            result = (result + " " if result else "") + r["error"]["message"]
        table.add_row(
            r["id"],
            r["job"],
            state_text(r["state"]),
            str(r.get("attempt", 1)),
            r.get("trigger", ""),
            when(r.get("created_at")),
            when(r.get("finished_at")),
            result,
        )
    out.print(table if page["items"] else "no runs")
    if page.get("next_cursor"):
        out.print(Text(f"more: --cursor {page['next_cursor']}", style="dim"))


@runs_app.command("show")
def runs_show(
    run_id: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """One run: state history, event, attempts, result, error (secret parameters masked)."""
    with session(url, token) as c:
        r = c.get(f"/runs/{run_id}")
    if as_json:
        emit_json(r)
        return
    out.print(run_summary(r))
    for label, key in (
        ("job", "job"),
        ("trigger", "trigger"),
        ("event", "event_id"),
        ("attempt", "attempt"),
        ("target", "target_ref"),
        ("input", "input_location"),
    ):
        if r.get(key) not in (None, ""):
            out.print(f"  {label:8} {r[key]}")
    if r.get("params"):
        out.print(f"  {'params':8} {json.dumps(r['params'])}")
    error = r.get("error") or {}
    if error:
        out.print(Text(f"  {'error':8} {error_text(error)}", "red"))
    history = Table(title="history", title_justify="left")
    for col in ("at", "state", "attempt", "reason"):
        history.add_column(col)
    for h in r.get("history", []):
        history.add_row(
            when(h.get("at")), state_text(h["state"]), str(h.get("attempt", 1)), h.get("reason") or ""
        )
    out.print(history)


@runs_app.command("logs")
def runs_logs(
    run_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep streaming until the run ends.")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
) -> None:
    """A run's log (stdout and stderr, or the target's log)."""
    with session(url, token) as c:
        print_logs(c, run_id, follow)


@runs_app.command("cancel")
def runs_cancel(
    run_id: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Cancel a queued, pending or running run."""
    with session(url, token) as c:
        r = c.post(f"/runs/{run_id}/cancel").data
    if as_json:
        emit_json(r)
    else:
        out.print(run_summary(r))


@runs_app.command("rerun")
def runs_rerun(
    run_id: str,
    idempotency_key: Annotated[str | None, typer.Option(show_default=False)] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run again with the same parameters (a new run, a new event); prints the new run's id."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    with session(url, token) as c:
        r = c.post(f"/runs/{run_id}/rerun", headers=headers).data
    if as_json:
        emit_json(r)
    else:
        out.print(r["id"])


# ---------------------------------------------------------------------------- events


@events_app.command("list")
def events_list(
    job: Annotated[str | None, typer.Option(help="Only this job's events.", show_default=False)] = None,
    outcome: Annotated[
        list[str] | None,
        typer.Option(
            help="run, duplicate, overlap, filtered, invalid, paused; repeatable.", show_default=False
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    cursor: Annotated[str | None, typer.Option(show_default=False)] = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Events, newest first, with what each made."""
    with session(url, token) as c:
        page = c.get("/events", job=job, outcome=outcome, limit=limit, cursor=cursor)
    if as_json:
        emit_json(page)
        return
    table = Table()
    id_column(table, "event", [e["id"] for e in page["items"]])
    for col in ("received", "job", "trigger", "source", "outcome"):
        table.add_column(col, no_wrap=True)
    id_column(table, "run", [e.get("run_id") or "-" for e in page["items"]])
    table.add_column("reason")
    for e in page["items"]:
        table.add_row(
            e["id"],
            when(e.get("received_at")),
            e.get("job") or "-",
            e.get("trigger", ""),
            e.get("source", ""),
            Text(e.get("outcome", ""), style="green" if e.get("outcome") == "run" else "yellow"),
            e.get("run_id") or "-",
            e.get("reason") or "",
        )
    out.print(table if page["items"] else "no events")
    if page.get("next_cursor"):
        out.print(Text(f"more: --cursor {page['next_cursor']}", style="dim"))


@events_app.command("show")
def events_show(
    event_id: str, url: UrlOpt = DEFAULT_URL, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """One event and its lineage: the run(s) it made, or why it made none."""
    with session(url, token) as c:
        lineage = c.get(f"/events/{event_id}")
    if as_json:
        emit_json(lineage)
        return
    e = lineage["event"]
    out.print(
        Text(f"{e['id']}  {e.get('source')} → {e.get('job') or '-'} / {e.get('trigger')}", style="bold")
    )
    out.print(f"  received  {when(e.get('received_at'))}")
    if e.get("scheduled_at"):
        out.print(f"  scheduled {when(e.get('scheduled_at'))}")
    out.print(f"  outcome   {e.get('outcome')}")
    if lineage.get("reason"):
        out.print(Text(f"  why       {lineage['reason']}", style="yellow"))
    if e.get("payload") is not None:
        out.print(f"  payload   {json.dumps(e['payload'])[:500]}")
    for r in lineage.get("runs", []):
        out.print(Text("  run       ").append_text(run_summary(r)))


# --------------------------------------------------------------------------- db (seed 001)

db_app = typer.Typer(
    help="Database helpers: the PostgreSQL store's schema, the postgres source's trigger.",
    no_args_is_help=True,
)
app.add_typer(db_app, name="db")
DsnOpt = Annotated[
    str | None, typer.Option(help="postgresql://…", envvar="JOBWIRE_POSTGRES_DSN", show_default=False)
]


@db_app.command("upgrade")
def db_upgrade(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="postgresql://… (default: JOBWIRE_DATABASE_URL / the config file).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Apply the PostgreSQL store's migrations up to this jobwire's schema (under an advisory lock;
    idempotent). Migrations are additive: a jobwire of the previous version keeps working on the
    upgraded schema, so upgrade the database first, then the jobwire."""
    from jobwire.redact import mask_url

    url = database_url or load_settings().effective_database_url
    scheme = url.split(":", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        typer.echo(f"{scheme} database: its schema is migrated when jobwire starts; nothing to do")
        return
    try:
        from jobwire.store.postgres import latest_version, upgrade
    except ModuleNotFoundError as exc:
        fail(f"db upgrade needs the Python package {exc.name!r}: pip install 'jobwire[postgres]'")
    from jobwire.store import StoreError

    try:
        before, applied = asyncio.run(upgrade(url))
    except StoreError as exc:
        fail(str(exc), code=1)
    except Exception as exc:
        fail(f"db upgrade on {mask_url(url)}: {type(exc).__name__}: {exc}", code=1)
    latest = latest_version()
    if applied:
        typer.echo(f"migrated {mask_url(url)} from schema version {before} to {latest}")
    else:
        typer.echo(f"{mask_url(url)} is at schema version {latest}: nothing to do")


@db_app.command("install-trigger")
def db_install_trigger(
    dsn: DsnOpt = None,
    table: Annotated[str, typer.Option(help="The table whose inserts and updates notify.")] = "jobs",
    channel: Annotated[str, typer.Option(help="The channel to NOTIFY.")] = "job_scheduler",
    print_only: Annotated[bool, typer.Option("--print", help="Show the SQL; change nothing.")] = False,
) -> None:
    """Install seed 001's notifier function and an AFTER INSERT OR UPDATE trigger on TABLE
    (idempotent: run it again after a change, or on every deploy)."""
    import re

    from jobwire.redact import mask_url
    from jobwire.sources.postgres.spec import IDENT_RE, TABLE_RE
    from jobwire.sources.postgres.sql import install_sql, notifier_names

    if not re.match(TABLE_RE, table):
        fail(f"--table {table!r}: letters, digits and '_' (or schema.table), at most 54 characters")
    if not re.match(IDENT_RE, channel):
        fail(f"--channel {channel!r}: letters, digits and '_', at most 63 characters")
    if print_only:
        typer.echo(install_sql(table, channel).rstrip())
        return
    if not dsn:
        fail("no database: give --dsn or set JOBWIRE_POSTGRES_DSN", hint="--print shows the SQL")
    try:
        from jobwire.sources.postgres.install import install_trigger
    except ModuleNotFoundError as exc:
        fail(f"install-trigger needs the Python package {exc.name!r}: pip install 'jobwire[postgres]'")
    try:
        asyncio.run(install_trigger(dsn, table, channel))
    except Exception as exc:
        fail(f"install-trigger on {mask_url(dsn)}: {type(exc).__name__}: {exc}")
    function, trigger = notifier_names(table)
    typer.echo(f"installed {function}() and trigger {trigger} on {table}: NOTIFY {channel}")

def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
