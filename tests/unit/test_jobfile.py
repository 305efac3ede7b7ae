"""Job files: YAML layouts, errors with file:line: path, folders, duplicates, seed 003's form."""

from __future__ import annotations

import json
import re
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from jobwire.jobfile import (
    DefinitionError,
    JobFileError,
    check_paths,
    format_loc,
    from_seed003,
    is_seed003,
    load_path,
    load_text,
    parse_job,
    to_seed003,
)
from jobwire.model import CronTrigger, HttpTarget, LocalTarget
from jobwire.registry import SOURCES

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def plain(text: str) -> str:
    """An error line without its trailing `(job 'name')` (checked on its own below)."""
    return "\n".join(re.sub(r" \(job '[^']*'\)$", "", line) for line in text.splitlines())


def errors_of(text: str, source: str = "jobs.yaml") -> list[str]:
    with pytest.raises(JobFileError) as info:
        load_text(dedent(text), source)
    lines = str(info.value).splitlines()
    assert lines == [str(e) for e in info.value.errors]
    return [plain(line) for line in lines]


def test_errors_name_the_job() -> None:
    with pytest.raises(JobFileError) as info:
        load_text("jobs:\n  - name: nightly\n    target: {type: http, url: ftp://x}\n", "j.yaml")
    assert str(info.value) == (
        "j.yaml:3: jobs[0].target.url: url must be an absolute http:// or https:// URL, got 'ftp://x'"
        " (job 'nightly')"
    )


# --------------------------------------------------------------------------- layouts


def test_jobs_list() -> None:
    jobs = load_text(
        dedent(
            """
            jobs:
              - name: a
                target: {type: local, command: [echo, a]}
              - name: b
                triggers: [api]
                target: {type: http, url: "https://example.com/hook"}
            """
        ),
        "x.yaml",
    )
    assert [j.name for j in jobs] == ["a", "b"]
    assert isinstance(jobs[0].target, LocalTarget) and isinstance(jobs[1].target, HttpTarget)


def test_single_job_and_stream() -> None:
    single = load_text("name: a\ntarget: {type: local, command: [echo]}\n", "x.yaml")
    assert [j.name for j in single] == ["a"]
    stream = load_text(
        dedent(
            """
            name: a
            target: {type: local, command: [echo]}
            ---
            name: b
            target: {type: local, command: [echo]}
            ---
            jobs:
              - name: c
                target: {type: local, command: [echo]}
            ---
            """
        ),
        "x.yaml",
    )
    assert [j.name for j in stream] == ["a", "b", "c"]


def test_empty_files() -> None:
    assert load_text("", "x.yaml") == []
    assert load_text("# nothing yet\n", "x.yaml") == []
    assert load_text("jobs: []\n", "x.yaml") == []
    assert load_text("jobs:\n", "x.yaml") == []


def test_labels_environment_and_anchors_pass_through() -> None:
    jobs = load_text(
        dedent(
            """
            jobs:
              - name: a
                environment: staging
                labels: {team: data, tier: "1"}
                target: &t {type: local, command: [echo, hi]}
              - name: b
                target:
                  <<: *t
                  command: [echo, merged]
            """
        ),
        "x.yaml",
    )
    assert jobs[0].environment == "staging" and jobs[0].labels == {"team": "data", "tier": "1"}
    assert isinstance(jobs[1].target, LocalTarget) and jobs[1].target.command == ["echo", "merged"]


def test_env_references_are_not_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_THING", "leaked")
    (job,) = load_text(
        "name: a\ntarget: {type: local, command: [echo, '${SECRET_THING}'], env: {X: $SECRET_THING}}\n",
        "x.yaml",
    )
    assert isinstance(job.target, LocalTarget)
    assert job.target.command == ["echo", "${SECRET_THING}"] and job.target.env == {"X": "$SECRET_THING"}


# --------------------------------------------------------------------------- errors with lines


def test_cron_error_names_file_line_and_path() -> None:
    lines = errors_of(
        """\
        jobs:
          - name: ok
            target: {type: local, command: [echo]}
          - name: bad-cron
            target: {type: local, command: [echo]}
            triggers:
              - cron: "61 * * * *"
        """,
        "examples/bad.yaml",
    )
    assert lines == [
        "examples/bad.yaml:7: jobs[1].triggers[0].cron: "
        "cron '61 * * * *': minute field '61' is out of range 0-59"
    ]


def test_many_mistakes_all_reported_with_lines() -> None:
    lines = errors_of(
        """\
        jobs:
          - name: one
            triggers:
              - interval: 0s
              - type: hourly
              - every: 5m
            target:
              type: http
              url: ftp://example.com/x
              urll: 3
          - name: two
            target:
              type: local
              command: [echo, "{{nme}}"]
            parameters:
              - name: x
                type: integer
                default: abc
          - name: three
            trigers: []
            target: {type: local, command: [echo]}
          - name: four
          - name: "bad name!"
            target: {type: ftp}
        """
    )
    assert lines == [
        "jobs.yaml:4: jobs[0].triggers[0].interval: interval must be at least 100ms, got '0s'",
        "jobs.yaml:5: jobs[0].triggers[1]: unknown trigger type 'hourly' "
        f"(expected one of: cron, interval, at, api, webhook, after, {', '.join(p.kind for p in SOURCES)})",
        "jobs.yaml:6: jobs[0].triggers[2]: a trigger needs a type: cron, interval, at, api or webhook "
        '(e.g. `- cron: "0 * * * *"` or `- type: api`)',
        "jobs.yaml:9: jobs[0].target.url: url must be an absolute http:// or https:// URL, got 'ftp://example.com/x'",
        "jobs.yaml:10: jobs[0].target.urll: unknown field 'urll' (did you mean 'url'?)",
        "jobs.yaml:14: jobs[1].target.command[1]: {{nme}} is not a parameter of job 'two' (parameters: x)",
        "jobs.yaml:18: jobs[1].parameters[0].default: expected integer, got 'abc'",
        "jobs.yaml:20: jobs[2].trigers: unknown field 'trigers' (did you mean 'triggers'?)",
        "jobs.yaml:22: jobs[3].target: required field is missing",
        "jobs.yaml:23: jobs[4].name: a job name is 1 to 128 letters, digits, '_', '.' or '-', "
        "starting with a letter or digit, got 'bad name!'",
        "jobs.yaml:24: jobs[4].target: unknown target type 'ftp' (expected one of: local, http, kubernetes, spot)",
    ]


def test_model_level_errors_point_at_their_block() -> None:
    lines = errors_of(
        """\
        name: a
        triggers:
          - api
          - webhook:
              tolerance: 1m
        target:
          type: local
          command: "echo {{x}}"
          shell: true
        """
    )
    assert lines[0].startswith("jobs.yaml:4: triggers[1]: a webhook trigger needs `secret_env`")
    assert lines[1].startswith("jobs.yaml:6: target: with shell: true, parameters cannot be templated")


def test_wrong_types_in_nested_fields() -> None:
    lines = errors_of(
        """\
        name: a
        target: {type: local, command: [echo]}
        retry:
          max_attempts: many
        labels:
          team: [a, b]
        timeout: soon
        """
    )
    assert (
        lines[0] == "jobs.yaml:4: retry.max_attempts: Input should be a valid integer, "
        "unable to parse string as an integer, got 'many'"
    )
    assert lines[1] == "jobs.yaml:6: labels.team: Input should be a valid string"
    assert lines[2].startswith("jobs.yaml:7: timeout: expected a duration such as 30s")


def test_yaml_syntax_error_has_line_and_column() -> None:
    (line,) = errors_of("jobs:\n  - name: a\n    target: {type: local, command: [echo]\n")
    assert line.startswith("jobs.yaml:4: YAML syntax error:")
    assert "column" in line
    (line,) = errors_of("name: a\ntriggers:\n  - cron: */5 * * * *\n")
    assert line.startswith("jobs.yaml:3: YAML syntax error:")
    assert "quote values that start with" in line


def test_yaml_indentation_errors_say_to_check_the_indentation() -> None:
    (line,) = errors_of("jobs:\n  - name: a\n    target:\n      type: local\n     command: [echo]\n")
    assert line.startswith("jobs.yaml:5: YAML syntax error:"), line
    assert "check the indentation of line 5" in line
    (line,) = errors_of("jobs:\n  - name: a\n    target: {type: local, command: [echo]}\n   - name: b\n")
    assert "check the indentation of line 4" in line
    (line,) = errors_of("jobs:\n  - name: a\n    target:\n      type: local\n        command: [echo]\n")
    assert "check the indentation of line 5" in line and "quote a value that contains ': '" in line
    (line,) = errors_of("jobs:\n  - name: a\n\ttarget: {type: local, command: [echo]}\n")
    assert "line 3 is indented with a tab: YAML indents with spaces only" in line


def test_check_messages_are_plain_words_not_pydantic_text() -> None:
    lines = errors_of(
        """\
        jobs:
          - name: "Bad Name!"
            target: {type: local, command: [echo]}
          - name: ptype
            parameters: [{name: n, type: integr}, {name: "bad name"}]
            concurrency: {policy: forbidd}
            triggers: [{id: "a b", type: api}]
            target: {type: kubernetes, image: x, namespace: Bad_NS}
        """
    )
    assert sorted(lines) == sorted(
        [
            "jobs.yaml:2: jobs[0].name: a job name is 1 to 128 letters, digits, '_', '.' or '-', starting with "
            "a letter or digit, got 'Bad Name!'",
            "jobs.yaml:5: jobs[1].parameters[0].type: 'integr' is not a parameter type: use one of string, "
            "integer, number, boolean, json (did you mean 'integer'?)",
            "jobs.yaml:5: jobs[1].parameters[1].name: a parameter name is a letter or '_' followed by up to 63 "
            "letters, digits or '_' (it becomes the variable JOBWIRE_PARAM_<NAME>), got 'bad name'",
            "jobs.yaml:7: jobs[1].triggers[0].id: an id is 1 to 64 letters, digits, '_', '.' or '-', got 'a b'",
            "jobs.yaml:8: jobs[1].target.namespace: a Kubernetes name of up to 63 lower-case letters, digits or "
            "'-', starting and ending with a letter or digit, got 'Bad_NS'",
            "jobs.yaml:6: jobs[1].concurrency.policy: 'forbidd' is not a valid policy: use one of allow, forbid, "
            "queue, replace (did you mean 'forbid'?)",
        ]
    )
    for line in lines:
        for noise in ("should match pattern", "Input should be", "^"):
            assert noise not in line, line


def test_program_from_a_parameter_is_reported_with_the_jobs_other_problems() -> None:
    lines = errors_of(
        """\
        jobs:
          - name: both
            parameters: [{name: n, type: integer}]
            triggers: [{cron: "61 * * * *"}]
            target: {type: local, command: ["{{n}}", "x"], timeout: 1m}
        """
    )
    assert sorted(lines) == sorted(
        [
            "jobs.yaml:4: jobs[0].triggers[0].cron: cron '61 * * * *': minute field '61' is out of range 0-59",
            "jobs.yaml:5: jobs[0].target.command[0]: the program (command[0]) cannot come from a parameter; "
            "pass parameters as arguments",
            "jobs.yaml:5: jobs[0].target.timeout: unknown field 'timeout' (known fields: type, command, shell, "
            "env, inherit_env, cwd, log_max_bytes, kill_grace)",
        ]
    )


def test_python_tags_are_refused() -> None:
    for text in (
        "name: !!python/object/apply:os.system [echo pwned]\n",
        "name: a\ntarget: !!python/object:collections.OrderedDict {}\n",
        "name: !!python/name:os.system ''\n",
        "jobs: !custom [1]\n",
    ):
        (line,) = errors_of(text)
        assert "is not allowed: job files hold plain data only" in line


def test_alias_bomb_and_recursion_are_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    prev = "a"
    for i in range(8):
        bomb += f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{prev}"] * 10) + "]\n"
        prev = chr(98 + i)
    (line,) = errors_of(bomb)
    assert "too large" in line
    (line,) = errors_of("a: &a [*a]\n")
    assert "recursive alias" in line


def test_duplicate_keys() -> None:
    lines = errors_of("name: a\nname: b\ntarget: {type: local, command: [echo]}\n")
    assert lines == ["jobs.yaml:2: name: duplicate key 'name' (first at line 1)"]


def test_top_level_shapes() -> None:
    (line,) = errors_of("- name: a\n")
    assert line == "jobs.yaml:1: expected `jobs: [...]` or a single job mapping at the top level, got list"
    lines = errors_of("jobs: {name: a}\n")
    assert lines == ["jobs.yaml:1: jobs: expected a list of jobs"]
    lines = errors_of("version: 2\njobs: []\n")
    assert lines == ["jobs.yaml:1: version: a file with `jobs:` holds nothing else at the top level"]
    lines = errors_of("jobs:\n  - just-a-string\n")
    assert lines == ["jobs.yaml:2: jobs[0]: a job must be a mapping, got str"]


def test_secret_values_not_echoed() -> None:
    lines = errors_of(
        """\
        name: a
        triggers:
          - type: webhook
            secret: 12345
            secret_env: [x]
        target: {type: local, command: [echo]}
        """
    )
    assert all("12345" not in line for line in lines)


# --------------------------------------------------------------------------- folders and duplicates


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dedent(text))
    return path


def test_folder_loading_recursive_sorted(tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", "name: b\ntarget: {type: local, command: [echo]}\n")
    write(tmp_path / "a.yml", "name: a\ntarget: {type: local, command: [echo]}\n")
    write(tmp_path / "sub" / "c.yaml", "jobs:\n  - name: c\n    target: {type: local, command: [echo]}\n")
    write(tmp_path / "notes.txt", "not: [a job\n")
    loaded = load_path(tmp_path)
    assert [(j.name, origin) for j, origin in loaded] == [
        ("a", f"file:{tmp_path / 'a.yml'}"),
        ("b", f"file:{tmp_path / 'b.yaml'}"),
        ("c", f"file:{tmp_path / 'sub' / 'c.yaml'}"),
    ]
    single = load_path(tmp_path / "b.yaml")
    assert [(j.name, o) for j, o in single] == [("b", f"file:{tmp_path / 'b.yaml'}")]


def test_folder_reports_all_errors_of_all_files(tmp_path: Path) -> None:
    write(tmp_path / "1.yaml", "name: a\ntarget: {type: local, command: []}\n")
    write(
        tmp_path / "2.yaml", "jobs:\n  - name: b\n    target: {type: local, command: [echo]}\n    retry: 3\n"
    )
    write(tmp_path / "3.yaml", "jobs: [\n")
    write(tmp_path / "4.yaml", "name: ok\ntarget: {type: local, command: [echo]}\n")
    with pytest.raises(JobFileError) as info:
        load_path(tmp_path)
    sources = [Path(e.source).name for e in info.value.errors]
    assert sources == ["1.yaml", "2.yaml", "3.yaml"]
    assert plain(str(info.value.errors[1])).endswith(
        "2.yaml:4: jobs[0].retry: Input should be a valid dictionary or instance of Retry, got 3"
    )

    jobs, errors = check_paths([tmp_path])
    assert [j.name for j in jobs] == ["ok"]
    assert len(errors) == 3


def test_duplicates_across_files_name_both(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "\n\nname: same\ntarget: {type: local, command: [echo]}\n")
    write(
        tmp_path / "b.yaml",
        "jobs:\n  - name: other\n    target: {type: local, command: [echo]}\n"
        "  - name: same\n    target: {type: local, command: [echo]}\n",
    )
    with pytest.raises(JobFileError) as info:
        load_path(tmp_path)
    (err,) = info.value.errors
    assert plain(str(err)) == (
        f"{tmp_path / 'b.yaml'}:4: jobs[1].name: "
        f"duplicate job name 'same': already defined at {tmp_path / 'a.yaml'}:3"
    )
    jobs, errors = check_paths([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert [j.name for j in jobs] == ["same", "other"] and len(errors) == 1


def test_duplicate_of_an_invalid_job_is_still_a_duplicate() -> None:
    lines = errors_of(
        """\
        jobs:
          - name: x
          - name: x
            target: {type: local, command: [echo]}
        """
    )
    assert lines == [
        "jobs.yaml:2: jobs[0].target: required field is missing",
        "jobs.yaml:3: jobs[1].name: duplicate job name 'x': already defined at jobs.yaml:2",
    ]


def test_missing_path() -> None:
    jobs, errors = check_paths([Path("/nonexistent/jobs.yaml")])
    assert jobs == [] and [str(e) for e in errors] == ["/nonexistent/jobs.yaml: no such file or directory"]
    with pytest.raises(JobFileError):
        load_path(Path("/nonexistent/jobs.yaml"))


def test_definition_error_format() -> None:
    assert str(DefinitionError("a.yaml", 3, "jobs[0].name", "bad")) == "a.yaml:3: jobs[0].name: bad"
    assert str(DefinitionError("api", None, "target.url", "bad")) == "api: target.url: bad"
    assert str(DefinitionError("a.yaml", 1, "", "bad")) == "a.yaml:1: bad"
    assert format_loc(("jobs", 0, "labels", "a.b", "x")) == "jobs[0].labels['a.b'].x"


# --------------------------------------------------------------------------- API bodies and seed 003

SEED: dict[str, Any] = {
    "name": "CLI",
    "description": "From CLI",
    "schedule": "* * * * *",
    "job": {"callback_url": "https://example.com/hook", "http_method": "post", "payload": {"a": 1}},
}


def test_seed003_to_jobwire() -> None:
    assert is_seed003(SEED)
    assert not is_seed003({"name": "x", "target": {}})
    assert not is_seed003(["x"])
    assert from_seed003(SEED) == {
        "name": "CLI",
        "description": "From CLI",
        "triggers": [{"type": "cron", "id": "schedule", "cron": "* * * * *"}],
        "target": {"type": "http", "url": "https://example.com/hook", "method": "POST", "payload": {"a": 1}},
    }
    job = parse_job(SEED)
    assert isinstance(job.triggers[0], CronTrigger) and job.trigger_ids() == ["schedule"]
    assert isinstance(job.target, HttpTarget) and job.target.method == "POST"


def test_seed003_round_trip() -> None:
    job = parse_job(json.loads(json.dumps(SEED)))
    assert to_seed003(job) == SEED
    assert parse_job(to_seed003(job)) == job
    # jobwire-only settings have no place in seed 003's form
    assert to_seed003(job.model_copy(update={"paused": True})) is None
    (local,) = load_text("name: a\ntarget: {type: local, command: [echo]}\n", "x.yaml")
    assert to_seed003(local) is None


def test_seed003_errors_in_its_own_terms() -> None:
    bad: dict[str, Any] = {
        "name": "CLI",
        "schedule": "61 * * * *",
        "job": {"callback_url": "", "http_method": "fetch", "payload": {}},
    }
    with pytest.raises(JobFileError) as info:
        parse_job(bad)
    assert plain(str(info.value)).splitlines() == [
        "api: schedule: cron '61 * * * *': minute field '61' is out of range 0-59",
        "api: job.callback_url: url must be an absolute http:// or https:// URL, got ''",
        "api: job.http_method: method must be one of GET, POST, PUT, PATCH, DELETE, HEAD, got 'FETCH'",
    ]


def test_seed003_extra_keys_rejected_clearly() -> None:
    with pytest.raises(JobFileError) as info:
        parse_job({**SEED, "timezone": "UTC", "job": {**SEED["job"], "headers": {}}})
    text = str(info.value)
    assert "api: timezone: 'timezone' is not part of seed 003's job form" in text
    assert "api: job.headers: 'headers' is not part of seed 003's job form" in text
    with pytest.raises(JobFileError, match=r"job\.callback_url: required field is missing"):
        from_seed003({"name": "x", "schedule": "* * * * *", "job": {}})
    with pytest.raises(JobFileError, match="schedule: required field is missing"):
        parse_job({"name": "x", "job": {"callback_url": "https://example.com"}})


def test_seed003_in_a_file_has_lines() -> None:
    lines = errors_of(
        """\
        jobs:
          - name: ping
            schedule: "*/5 * * *"
            job:
              callback_url: https://example.com/x
              http_method: get
        """
    )
    assert lines[0].startswith("jobs.yaml:3: jobs[0].schedule: cron '*/5 * * *': has 4 fields")


def test_parse_job_jobwire_form_and_errors() -> None:
    job = parse_job(
        {
            "name": "a",
            "target": {"type": "local", "command": ["echo", "{{who}}"]},
            "parameters": [{"name": "who"}],
        }
    )
    assert job.name == "a"
    with pytest.raises(JobFileError) as info:
        parse_job({"name": "a", "target": {"type": "http", "url": "https://x.example/{{who}}"}}, "api")
    (err,) = info.value.errors
    assert err.source == "api" and err.line is None and err.path == "target.url"
    assert plain(str(err)) == "api: target.url: {{who}} is not a parameter of job 'a' (parameters: none)"
    with pytest.raises(JobFileError, match="a job must be a mapping"):
        parse_job([1, 2])


# --------------------------------------------------------------------------- examples


def test_examples_load_cleanly() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert {f.name for f in files} >= {"quickstart.yaml", "http-cron.yaml"}
    for f in files:
        jobs, errors = check_paths([f])
        assert errors == [], "\n".join(map(str, errors))
        assert jobs


def test_quickstart_contents() -> None:
    jobs = {j.name: j for j, _ in load_path(EXAMPLES / "quickstart.yaml")}
    assert {"tick", "greet", "slow-poll", "flaky"} <= set(jobs)
    name = jobs["greet"].param("name")
    assert name is not None and name.is_required
    assert jobs["slow-poll"].concurrency.policy == "forbid"
    assert jobs["flaky"].retry.max_attempts > 1


def test_http_cron_example_is_seed003_shaped() -> None:
    ((job, _),) = load_path(EXAMPLES / "http-cron.yaml")
    assert isinstance(job.target, HttpTarget) and job.target.allow_private
    assert job.trigger_ids() == ["schedule"]
