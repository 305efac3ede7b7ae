"""The wheel and sdist as `python -m build` makes them, installed without extras into a fresh venv
(`pip install jobwire`: the core), and used as a user would: `--version`, `check`, `serve`.

The core install has none of the integrations' client libraries, so every plug that needs one
must say which `pip install 'jobwire[<extra>]'` brings it — checked here against the real thing,
not a simulated missing module."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import textwrap
import tomllib
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import httpx
import pytest

from tests.support.server import Server
from tests.support.venvs import REPO, copy_sources, make_venv, offline_env, pip_install, run
from tests.support.waiting import eventually_sync

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
CLIENT_LIBRARIES = ("lightkube", "httpx2", "aio_pika", "aiomqtt", "paho", "asyncpg", "aiobotocore", "botocore")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`python -m build` (sdist, then the wheel from the sdist) on a copy of the sources."""
    src = copy_sources(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    log = run([sys.executable, "-m", "build", "--outdir", out, src], env=offline_env(), timeout=600)
    assert "Successfully built" in log
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.fixture(scope="module")
def core(dist: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed without extras — dependencies and all, not --no-deps."""
    venv = make_venv(tmp_path_factory.mktemp("core") / "venv")
    pip_install(venv, str(dist["wheel"]))
    return venv


def package_files() -> set[str]:
    """Every file of the package in the source tree, as `jobwire/...` (no caches)."""
    root = REPO / "src"
    return {
        p.relative_to(root).as_posix()
        for p in (root / "jobwire").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def test_wheel_holds_every_package_file(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as whl:
        names = set(whl.namelist())
    expected = package_files()
    assert expected - names == set(), "files of src/jobwire missing from the wheel (package-data?)"
    # what jobwire reads at run time besides its modules: the SQL, the static assets, the marker
    for pattern in ("jobwire/store/sql/sqlite/", "jobwire/store/sql/postgres/", "jobwire/api/static/"):
        assert any(n.startswith(pattern) for n in names), pattern
    assert any(n.endswith(".sql") for n in names)
    assert "jobwire/py.typed" in names
    assert {n for n in names if not n.startswith(("jobwire/", f"jobwire-{VERSION}.dist-info/"))} == set()


def test_sdist_holds_the_sources(dist: dict[str, Path]) -> None:
    prefix = f"jobwire-{VERSION}/"
    with tarfile.open(dist["sdist"]) as sdist:
        names = {n.removeprefix(prefix) for n in sdist.getnames()}
    assert {"pyproject.toml", "README.md", "LICENSE"} <= names
    assert {f"src/{f}" for f in package_files()} - names == set()


def test_metadata_core_and_extras(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as whl:
        meta = Parser().parsestr(whl.read(f"jobwire-{VERSION}.dist-info/METADATA").decode())
    assert meta["Version"] == VERSION
    assert set(meta.get_all("Provides-Extra") or []) >= {"kubernetes", "amqp", "mqtt", "postgres", "aws", "all"}
    unconditional = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    libraries = {"lightkube", "aio-pika", "aiomqtt", "asyncpg", "aiobotocore", "boto3"}
    assert [r for r in unconditional if r.split(">")[0].split("[")[0].strip() in libraries] == []


def test_core_install_has_no_client_library(core: Path) -> None:
    code = "import importlib.util, json, sys; print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m)]))"
    found = json.loads(run([core / "bin" / "python", "-c", code, *CLIENT_LIBRARIES]))
    assert found == []


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_from_metadata(core: Path, flag: str) -> None:
    assert run([core / "bin" / "jobwire", flag]).strip() == f"jobwire {VERSION}"


KUBE_AND_AMQP = textwrap.dedent(
    """\
    jobs:
      - name: hello
        triggers: [api]
        target: {type: local, command: ["echo", "hello from the core"]}
      - name: cluster
        triggers: [api]
        target: {type: kubernetes, image: busybox:1.36}
      - name: rabbit
        triggers: [{amqp: {queue: convert.requests}}]
        target: {type: local, command: ["true"]}
    """
)


def test_check_example_and_missing_extras(core: Path, tmp_path: Path) -> None:
    out = run([core / "bin" / "jobwire", "check", REPO / "examples" / "quickstart.yaml"])
    assert "jobs OK" in out and "warning" not in out
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(KUBE_AND_AMQP)
    out = run([core / "bin" / "jobwire", "check", jobs])
    assert "3 jobs OK" in out
    assert f"{jobs}:5: warning: jobs[1].target: job 'cluster': the kubernetes target needs the Python package 'lightkube': pip install 'jobwire[kubernetes]'" in out
    assert "jobs[2].triggers[0]: job 'rabbit': the amqp source needs the Python package 'aio_pika': pip install 'jobwire[amqp]'" in out


@pytest.fixture
def served(core: Path, tmp_path: Path) -> Iterator[Server]:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(KUBE_AND_AMQP)
    with Server(tmp_path / "data", jobs, command=[str(core / "bin" / "jobwire"), "serve"]) as srv:
        yield srv


def ended(c: httpx.Client, ids: list[str]) -> list[dict[str, object]] | None:
    runs = [c.get(f"/runs/{i}").json() for i in ids]
    return runs if all(r["state"] in ("succeeded", "failed") for r in runs) else None


def test_serve_from_the_core_install(served: Server) -> None:
    assert httpx.get(f"{served.url}/healthz").json() == {"status": "ok"}
    page = httpx.get(f"{served.url}/", follow_redirects=True)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "jobwire_events_total" in httpx.get(f"{served.url}/metrics").text
    with served.client() as c:
        ok = c.post("/jobs/hello/runs", json={}).json()
        kube = c.post("/jobs/cluster/runs", json={}).json()
        done = eventually_sync(lambda: ended(c, [ok["id"], kube["id"]]), timeout=30, what="both runs to end")
        by_job = {r["job"]: r for r in done}
        assert by_job["hello"]["state"] == "succeeded"
        assert "hello from the core" in c.get(f"/runs/{ok['id']}/log").text
        assert by_job["cluster"]["state"] == "failed"
        assert by_job["cluster"]["error"] == {
            "message": "the kubernetes target needs the Python package 'lightkube': pip install 'jobwire[kubernetes]'",
            "reason": "PlugMissing",
            "code": None,
        }
    ready = httpx.get(f"{served.url}/readyz").json()
    tasks = {t["task"]: t for t in ready["tasks"]}
    assert "pip install 'jobwire[kubernetes]'" in tasks["jobwire-target-kubernetes"]["last_error"]
    sources = {s["source"]: s for s in ready["sources"]}
    assert "pip install 'jobwire[amqp]'" in sources["amqp"]["last_error"]


def test_postgres_store_without_its_extra(core: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [core / "bin" / "jobwire", "serve", "--port", "1"],
        env=offline_env(JOBWIRE_DATA_DIR=str(tmp_path), JOBWIRE_DATABASE_URL="postgresql://jobwire@127.0.0.1:1/jobwire"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == (
        "error: the PostgreSQL store needs the Python package 'asyncpg': pip install 'jobwire[postgres]'"
    )
    out = subprocess.run(
        [core / "bin" / "jobwire", "db", "upgrade", "--database-url", "postgresql://jobwire@127.0.0.1:1/jobwire"],
        env=offline_env(), capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 2 and "pip install 'jobwire[postgres]'" in out.stderr


PLUGS = textwrap.dedent(
    """\
    import asyncio, json, sys
    from pathlib import Path
    from jobwire.config import MqttSinkSpec, S3LogSinkSpec, Settings
    from jobwire.plug import PlugMissing
    from jobwire.registry import SOURCES
    from jobwire.sinks import build_sink
    from jobwire.targets import build_targets

    out = {}
    for plug in SOURCES:
        try:
            plug.builder()
            out[f"source {plug.kind}"] = "imported"
        except PlugMissing as exc:
            out[f"source {plug.kind}"] = str(exc)
        if plug.sink is not None and plug.kind == "amqp":
            try:
                plug.sink_builder()
                out[f"sink {plug.kind}"] = "imported"
            except PlugMissing as exc:
                out[f"sink {plug.kind}"] = str(exc)
    targets = build_targets(Settings(data_dir=Path(sys.argv[1])))
    for kind, target in targets.items():
        out[f"target {kind}"] = getattr(target, "problem", type(target).__name__)

    async def sinks():
        for name, spec in (("mqtt", MqttSinkSpec()), ("s3log", S3LogSinkSpec(bucket="logs"))):
            sink = build_sink(spec)
            try:
                await sink.start()
                out[f"sink {name}"] = "started"
            except Exception as exc:
                out[f"sink {name}"] = str(exc)
    asyncio.run(sinks())
    print(json.dumps(out))
    """
)


def test_every_plug_names_its_extra(core: Path, tmp_path: Path) -> None:
    """In the core install, each plug that needs a client library is one clear error naming the
    extra; the core's own targets build."""
    out = json.loads(run([core / "bin" / "python", "-c", PLUGS, tmp_path]).strip().splitlines()[-1])
    need = "the {} needs the Python package '{}': pip install 'jobwire[{}]'"
    assert out == {
        "source amqp": need.format("amqp source", "aio_pika", "amqp"),
        "sink amqp": need.format("amqp source", "aio_pika", "amqp"),
        "source mqtt": need.format("mqtt source", "aiomqtt", "mqtt"),
        "source postgres": need.format("postgres source", "asyncpg", "postgres"),
        "source sqs": need.format("sqs source", "aiobotocore", "aws"),
        "source s3": need.format("s3 source", "aiobotocore", "aws"),
        "target local": "LocalTarget",
        "target http": "HttpTarget",
        "target spot": "SpotTarget",
        "target kubernetes": need.format("kubernetes target", "lightkube", "kubernetes"),
        "sink mqtt": need.format("mqtt sink", "aiomqtt", "mqtt"),
        "sink s3log": need.format("s3log sink", "aiobotocore", "aws"),
    }
