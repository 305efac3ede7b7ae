"""Seed 004's `jobs.csv` registry: rows → jobs (mqtt trigger + Kubernetes short spec), bad rows
reported by line and column and skipped, duplicates naming both places, `jobwire check`, and the
registry: reload on by default for a CSV, a removed row's job deleted."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobwire.cli import app
from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.jobcsv import CSV_CLEANUP_TTL, parse_csv
from jobwire.jobfile import JobFileError, check_files, load_path, load_paths
from jobwire.model import KubernetesTarget
from jobwire.targets.kubernetes import build

ROOT = Path(__file__).resolve().parents[2]
HEADER = "job_name,mqtt_topic,image,cpu_request,memory_request,gpu,disk_request,cpu_limit,memory_limit,disk_limit\n"
SEED_ROW = "spike-sort,services/spikes/new,braingeneers/spike-sort:latest,2,8Gi,1,20Gi,4,16Gi,40Gi\n"


def write(tmp_path: Path, text: str, name: str = "jobs.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_seed_row_is_an_mqtt_trigger_and_the_kubernetes_short_spec(tmp_path: Path) -> None:
    ((job, origin),), skipped = load_paths([write(tmp_path, HEADER + SEED_ROW)])
    assert skipped == [] and origin == f"file:{tmp_path / 'jobs.csv'}"
    assert job.name == "spike-sort"
    (trigger,) = job.triggers
    assert (trigger.type, trigger.topic, trigger.payload, trigger.qos) == (
        "mqtt",
        "services/spikes/new",
        "raw",
        1,
    )
    assert [(p.name, p.is_required) for p in job.parameters] == [("payload", False)]
    target = job.target
    assert isinstance(target, KubernetesTarget)
    assert target.image == "braingeneers/spike-sort:latest"
    # as in the seed, a finished Job is deleted: nothing kept, gone a minute after it finished
    assert (target.cleanup_min, target.cleanup_ttl) == (0, CSV_CLEANUP_TTL) == (0, timedelta(minutes=1))
    assert build.resources(target) == {
        "requests": {"cpu": "2", "memory": "8Gi", "ephemeral-storage": "20Gi", "nvidia.com/gpu": "1"},
        "limits": {"cpu": "4", "memory": "16Gi", "ephemeral-storage": "40Gi", "nvidia.com/gpu": "1"},
    }


def test_cells_are_stripped_empty_means_unset_and_comments_blank_rows_and_bom_are_skipped(
    tmp_path: Path,
) -> None:
    text = (
        "\ufeff# seed 004's registry\n"
        + HEADER.replace(",", " , ")
        + "\n"
        + "# a comment row\n"
        + " plain , a/+/b ,  img:1 , , 512Mi ,, , , ,\n"
        + "short,x/#,img:2\n"  # fewer cells than columns: the rest are empty
    )
    jobs = {j.name: j for j, _ in load_paths([write(tmp_path, text)])[0]}
    plain, short = jobs["plain"].target, jobs["short"].target
    assert isinstance(plain, KubernetesTarget) and isinstance(short, KubernetesTarget)
    assert jobs["plain"].triggers[0].topic == "a/+/b"
    assert (plain.image, plain.memory_request, plain.cpu_request, plain.gpu, plain.disk_limit) == (
        "img:1",
        "512Mi",
        None,
        None,
        None,
    )
    assert build.resources(short) == {}


def test_a_bad_row_is_reported_by_line_and_column_and_skipped_while_the_others_load(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER
        + SEED_ROW
        + "notes,a/b,img,1,1Gi,,,,,\n"
        + '"multi\nline",a/b,img,,,,,,,\n'  # a quoted cell over two lines: the next row is line 6
        + "ok-2,c/d,img,,,,,,,\n"
        + "bad,e/f,img,2 cores,1Gi,one,,1,,\n",
    )
    jobs, skipped = load_paths([path])
    assert sorted(j.name for j, _ in jobs) == ["notes", "ok-2", "spike-sort"]
    assert [str(e) for e in skipped] == [
        f"{path}:4: column job_name: 'multi\\nline' is not a job name: 1 to 128 letters, digits, '_', '.' "
        "or '-', starting with a letter or digit",
        f"{path}:7: column cpu_request: '2 cores' is not a Kubernetes quantity (such as 500m, 2, 1.5Gi, 512Mi "
        "or 10G) (job 'bad')",
        f"{path}:7: column gpu: 'one' is not a number of GPUs: a whole number from 0 to 1024 (job 'bad')",
    ]
    with pytest.raises(JobFileError) as exc:  # the strict loader still refuses the file
        load_path(path)
    assert len(exc.value.errors) == 3


@pytest.mark.parametrize(
    ("row", "column", "message"),
    [
        (",a/b,img,,,,,,,", "job_name", "empty; every row needs a value here"),
        ("j,,img,,,,,,,", "mqtt_topic", "empty; every row needs a value here"),
        ("j,a/#/b,img,,,,,,,", "mqtt_topic", "'#' must be a whole level and the last one"),
        ("j,a/b,,,,,,,,", "image", "empty; every row needs a value here"),
        ("j,a/b,img,,-1Gi,,,,,", "memory_request", "'-1Gi' is negative"),
        ("j,a/b,img,,,2000,,,,", "gpu", "'2000' is not a number of GPUs"),
        ("j,a/b,img,4,,,,2,,", "cpu_request", "cpu_request (4) must not be more than cpu_limit (2)"),
        ("j,a/b,img,,,,,,,10 GB", "disk_limit", "'10 GB' is not a Kubernetes quantity"),
        ("j,a/b,img,,,,,,,,Bad_NS", "namespace", "'Bad_NS'"),
        ('j,a/b,img,,,,,,,,,"sh -c \'echo"', "command", "cannot split"),
        ("j,a/b,img,,,,,,,,,,[1]", "args", "a JSON array here must hold strings only"),
        ("j,a/b,img,,,,,,,,,,,A=1;oops", "env", "'oops' is not NAME=value"),
        ("j,a/b,img,,,,,,,,,,,,soon", "cleanup", "'soon' is not delete, default or a duration"),
    ],
)
def test_each_bad_cell_names_its_column(tmp_path: Path, row: str, column: str, message: str) -> None:
    header = HEADER.rstrip("\n") + ",namespace,command,args,env,cleanup\n"
    rows, problems = parse_csv(header + row + "\n")
    assert problems == []
    ((found,),) = [r.problems for r in rows]
    assert (found.line, found.column) == (2, column) and message in found.message, found


def test_optional_columns(tmp_path: Path) -> None:
    text = (
        "job_name,mqtt_topic,image,namespace,command,args,env,cleanup\n"
        'a,t/a,img,lab,sh -c "echo hi",--in {{payload}},A=1; B = two words ,2h\n'
        'b,t/b,img,,"[""python"", ""-m"", ""x""]",,"{""C"": ""3""}",default\n'
    )
    jobs = {j.name: j.target for j, _ in load_paths([write(tmp_path, text)])[0]}
    a, b = jobs["a"], jobs["b"]
    assert isinstance(a, KubernetesTarget) and isinstance(b, KubernetesTarget)
    assert (a.namespace, a.command, a.args, a.env) == (
        "lab",
        ["sh", "-c", "echo hi"],
        ["--in", "{{payload}}"],
        {"A": "1", "B": "two words"},
    )
    assert (a.cleanup_min, a.cleanup_ttl) == (0, timedelta(hours=2))
    assert (b.namespace, b.command, b.env) == (None, ["python", "-m", "x"], {"C": "3"})
    assert (b.cleanup_min, b.cleanup_ttl) == (None, None)  # `default`: jobwire's general cleanup policy


def test_header_problems_are_errors_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "job_name,mqtt_topic,imge,memroy_request\nj,a/b,img,1Gi\n")
    with pytest.raises(JobFileError) as exc:
        load_paths([path])
    assert [str(e) for e in exc.value.errors] == [
        f"{path}:1: column imge: unknown column 'imge' (did you mean 'image'?)",
        f"{path}:1: column memroy_request: unknown column 'memroy_request' (did you mean 'memory_request'?)",
        f"{path}:1: column image: the header has no such column; it is required",
    ]
    with pytest.raises(JobFileError, match="no header row"):
        load_paths([write(tmp_path, "# nothing yet\n", "empty.csv")])


def test_duplicate_names_across_rows_and_with_yaml_name_both_places(tmp_path: Path) -> None:
    yaml_file = write(
        tmp_path,
        "jobs:\n  - name: shared\n    triggers: [api]\n    target: {type: local, command: [echo]}\n",
        "a.yaml",
    )
    csv_file = write(tmp_path, HEADER + "twice,a/b,img,,,,,,,\ntwice,c/d,img,,,,,,,\nshared,e/f,img,,,,,,,\n")
    for order in ([yaml_file, csv_file], [csv_file, yaml_file]):  # the YAML job wins either way
        jobs, skipped = load_paths(order)
        assert sorted((j.name, j.target.type) for j, _ in jobs) == [
            ("shared", "local"),
            ("twice", "kubernetes"),
        ]
        messages = sorted(str(e) for e in skipped)
        assert messages[0] == (
            f"{csv_file}:3: column job_name: duplicate job name 'twice': already defined at {csv_file}:2; "
            "this row is skipped"
        )
        assert f"{csv_file}:4: column job_name: duplicate job name 'shared': " in messages[1]
        assert f"{yaml_file}:2" in messages[1] and "this row is skipped" in messages[1]


def test_a_folder_holds_csv_files_beside_yaml(tmp_path: Path) -> None:
    write(tmp_path, "name: y\ntriggers: [api]\ntarget: {type: local, command: [echo]}\n", "y.yaml")
    write(tmp_path, HEADER + SEED_ROW)
    jobs, skipped = load_paths([tmp_path])
    assert sorted(j.name for j, _ in jobs) == ["spike-sort", "y"] and skipped == []


def test_check_lists_every_bad_row_and_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, HEADER + SEED_ROW + "x,a/b,img,2 cores,,,,,,\ny,a/#/b,img,,,,,,,\n")
    result = CliRunner().invoke(app, ["check", "jobs.csv"])
    assert result.exit_code == 1, result.output
    assert "jobs.csv:3: column cpu_request: '2 cores' is not a Kubernetes quantity" in result.output
    assert "jobs.csv:4: column mqtt_topic:" in result.output
    assert "2 errors in job files" in result.output
    _, errors, _ = check_files([Path("jobs.csv")])
    assert [(e.line, e.path) for e in errors] == [(3, "column cpu_request"), (4, "column mqtt_topic")]


def test_the_seed004_example_checks_clean() -> None:
    result = CliRunner().invoke(app, ["check", str(ROOT / "examples" / "seed004" / "jobs.csv")])
    assert result.exit_code == 0, result.output
    jobs, errors, _ = check_files([ROOT / "examples" / "seed004" / "jobs.csv"])
    assert errors == [] and len(jobs) >= 2


# --------------------------------------------------------------------------- the registry


def settings(tmp_path: Path, jobs: Path, **kw: object) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path / "data",
        jobs=[jobs],
        shutdown_grace=timedelta(seconds=0.2),
        kube_cleanup_interval=timedelta(0),
        **kw,
    )


@pytest.fixture
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mqtt source retries a broker that is not there; these tests only look at definitions."""
    monkeypatch.setenv("JOBWIRE_MQTT_URL", "mqtt://127.0.0.1:9")


async def test_a_csv_registry_turns_reload_on_unless_it_was_set(tmp_path: Path, no_broker: None) -> None:
    path = write(tmp_path, HEADER + SEED_ROW)
    engine = Engine(settings(tmp_path, path))
    await engine.start()
    try:
        assert engine.settings.reload is True
        assert "jobwire-reload" in {h.name for h in engine.supervisor.health()}
    finally:
        await engine.stop()
    off = Engine(settings(tmp_path, path, reload=False))
    await off.start()
    try:
        assert off.settings.reload is False
        assert "jobwire-reload" not in {h.name for h in off.supervisor.health()}
    finally:
        await off.stop()
    yaml_only = write(
        tmp_path, "name: y\ntriggers: [api]\ntarget: {type: local, command: [echo]}\n", "y.yaml"
    )
    plain = Engine(settings(tmp_path, yaml_only))
    await plain.start()
    try:
        assert plain.settings.reload is False  # YAML files: development mode only, as before
    finally:
        await plain.stop()


def test_jobwire_reload_false_in_the_environment_counts_as_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the registry looks at to leave an explicit `JOBWIRE_RELOAD=false` alone."""
    assert "reload" not in Settings(_env_file=None).model_fields_set  # type: ignore[call-arg]
    monkeypatch.setenv("JOBWIRE_RELOAD", "false")
    assert "reload" in Settings(_env_file=None).model_fields_set  # type: ignore[call-arg]


async def test_serve_starts_with_bad_rows_and_a_reload_removes_and_adds_rows(
    tmp_path: Path, no_broker: None
) -> None:
    path = write(tmp_path, HEADER + SEED_ROW + "other,x/y,img,,,,,,,\nbad,a/b,img,2 cores,,,,,,\n")
    engine = Engine(settings(tmp_path, path))
    await engine.start()  # a bad row does not stop jobwire from starting
    try:
        assert sorted(engine.jobs) == ["other", "spike-sort"]
        assert engine.jobs["other"].origin == f"file:{path}"
        path.write_text(HEADER + "other,x/y,img,,,,,,,\nnew,n/m,img,,,,,,,\n")
        assert await engine.reload_files() == []
        assert sorted(engine.jobs) == ["new", "other"]
        assert sorted(s.job.name for s in await engine.store.list_jobs()) == ["new", "other"]
        path.write_text("job_name,topic\n")  # the file itself is broken: the definitions in force stay
        errors = await engine.reload_files()
        assert errors and "unknown column 'topic'" in errors[0]
        assert sorted(engine.jobs) == ["new", "other"]
    finally:
        await engine.stop()


def test_a_placeholder_naming_no_parameter_is_a_bad_cell(tmp_path: Path) -> None:
    rows, _ = parse_csv(
        "job_name,mqtt_topic,image,args,env\nj,a/b,img,--in {{file}},\nk,a/b,img,,X={{uuid}}\n"
    )
    assert [(p.line, p.column) for r in rows for p in r.problems] == [(2, "args"), (3, "env")]
    assert all(r.job is None for r in rows)
    assert "file" in rows[0].problems[0].message


def test_a_csv_syntax_error_is_a_bad_row_and_the_reader_goes_on(tmp_path: Path) -> None:
    path = write(tmp_path, 'job_name,mqtt_topic,image\na,t/a,"img"x\nb,t/b,img\nc,t/c,"img\nd,t/d,img\n')
    jobs, skipped = load_paths([path])
    assert [j.name for j, _ in jobs] == ["b"]
    assert [str(e) for e in skipped] == [
        f"{path}:2: CSV syntax error: ',' expected after '\"' (inside a quoted cell, write a '\"' as '\"\"')",
        f"{path}:4: CSV syntax error: a quoted cell is never closed, so lines 4-5 (the rest of the file) were "
        "read as this one row; close the '\"'",
    ]


def test_empty_header_cells_are_ignored_while_their_cells_are_empty(tmp_path: Path) -> None:
    path = write(tmp_path, "job_name,mqtt_topic,image,,\na,t/a,img,,\nb,t/b,img,,oops\n")
    jobs, skipped = load_paths([path])
    assert [j.name for j, _ in jobs] == ["a"]
    assert [str(e) for e in skipped] == [
        f"{path}:3: cell 5 holds 'oops' but its column has no name in the header (job 'b')"
    ]


async def test_a_job_moved_from_the_csv_to_a_yaml_file_gets_its_new_origin(
    tmp_path: Path, no_broker: None
) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()
    csv_file = write(folder, HEADER + "mover,a/b,img:1,,,,,,,\n")
    engine = Engine(settings(tmp_path, folder))
    await engine.start()
    try:
        assert engine.jobs["mover"].origin == f"file:{csv_file}"
        yaml_file = write(
            folder,
            "name: mover\ntriggers: [{type: mqtt, id: mqtt, topic: a/b, payload: raw}]\n"
            "parameters: [{name: payload, default: ''}]\n"
            "target: {type: kubernetes, image: 'img:1', cleanup_min: 0, cleanup_ttl: 1m}\n",
            "mover.yaml",
        )
        csv_file.write_text(HEADER)
        assert await engine.reload_files() == []
        assert engine.jobs["mover"].origin == f"file:{yaml_file}"  # the same definition, now from YAML
        assert (await engine.store.get_job("mover")).origin == f"file:{yaml_file}"
    finally:
        await engine.stop()
