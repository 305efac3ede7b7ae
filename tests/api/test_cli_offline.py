"""CLI commands that need no server: check, config, serve's refusal, and error reporting."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from jobwire.cli import app, parse_params

runner = CliRunner()

GOOD = """\
jobs:
  - name: nightly
    triggers:
      - cron: "0 2 * * *"
        timezone: Europe/Amsterdam
      - api
    target:
      type: http
      url: https://example.com/build
  - name: local-echo
    triggers: [api]
    target:
      type: local
      command: [echo, hi]
"""

BAD = """\
jobs:
  - name: broken
    triggers:
      - cron: "61 * * * *"
    target:
      type: http
      url: ftp://example.com
"""

SEED003 = {
    "name": "CLI",
    "description": "From CLI",
    "schedule": "*/5 * * * *",
    "job": {"callback_url": "https://example.com/cb", "http_method": "post", "payload": {}},
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k in list(os.environ):
        if k.startswith("JOBWIRE_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)


def test_check_good_files(tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text(GOOD)
    (tmp_path / "seed.json").write_text(json.dumps(SEED003))
    result = runner.invoke(app, ["check", "jobs.yaml", "seed.json"])
    assert result.exit_code == 0, result.output
    assert "3 jobs OK" in result.output
    for text in ("nightly", "local-echo", "CLI", "cron 0 2 * * * (Europe/Amsterdam)", "cron */5 * * * *"):
        assert text in result.output


def test_check_bad_file_prints_file_line_path_message(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD)
    (tmp_path / "good.yaml").write_text(GOOD)
    result = runner.invoke(app, ["check", "good.yaml", "bad.yaml"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("bad.yaml:")]
    assert len(lines) == 2, result.output
    assert re.fullmatch(r"bad\.yaml:4: jobs\[0\]\.triggers\[0\]\.cron: .*61.*", lines[0]), lines[0]
    assert re.fullmatch(r"bad\.yaml:7: jobs\[0\]\.target\.url: .*http.*", lines[1]), lines[1]
    assert "2 errors" in result.output


def test_check_json_output(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD)
    result = runner.invoke(app, ["check", "--json", "bad.yaml"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False and {e["line"] for e in data["errors"]} == {4, 7}


def test_check_missing_path() -> None:
    result = runner.invoke(app, ["check", "does-not-exist.yaml"])
    assert result.exit_code == 1
    assert "does-not-exist.yaml" in result.output


def test_config_masks_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBWIRE_API_TOKEN", "super-secret-token-value")
    monkeypatch.setenv("JOBWIRE_API_TOKENS", "reader-secret:read")
    monkeypatch.setenv("JOBWIRE_PORT", "9999")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    for secret in ("super-secret-token-value", "reader-secret"):
        assert secret not in result.output
    assert "api_token: '****'" in result.output
    assert "port: 9999" in result.output
    data = json.loads(runner.invoke(app, ["config", "--json"]).stdout)
    assert data["api_tokens"] == [{"name": "token1", "token": "****", "scopes": ["read"]}]


def test_config_shows_each_source_kinds_section_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_URL", "amqp://guest:broker-password@rabbit:5672//")  # seed 000's variable
    monkeypatch.setenv("JOBWIRE_POSTGRES_DSN", "postgresql://app:pg-password@db/app")
    result = runner.invoke(app, ["config", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["amqp"]["url"] == "amqp://guest:****@rabbit:5672//"
    assert data["amqp"]["status_exchange"] == "jobwire.status"
    assert data["postgres"]["dsn"] == "postgresql://app:****@db/app"
    assert "broker-password" not in result.output and "pg-password" not in result.output
    monkeypatch.setenv("JOBWIRE_AMQP_PREFETCH", "0")
    bad = runner.invoke(app, ["config"])
    assert bad.exit_code != 0 and "amqp" in bad.output and "prefetch" in bad.output


def test_serve_with_a_sink_that_cannot_start_is_one_clear_line(tmp_path: Path) -> None:
    # a subprocess: `serve` configures logging for the process, which in-process would leak into
    # other tests' log capture
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBWIRE_") and k != "JW_UNSET_SECRET"}
    env.update(
        JOBWIRE_DATA_DIR=str(tmp_path / "d"),
        JOBWIRE_PORT="0",
        JOBWIRE_SINKS='[{"type": "webhook", "url": "http://127.0.0.1:9/x", "secret_env": "JW_UNSET_SECRET"}]',
    )
    proc = subprocess.run(
        [sys.executable, "-m", "jobwire", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "JW_UNSET_SECRET" in out and "Traceback" not in out


def test_config_reports_bad_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBWIRE_PORT", "not-a-port")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert "port" in result.output


def test_postgresql_url_is_accepted_by_config_and_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBWIRE_DATABASE_URL", "postgresql://jw:db-password@db:5432/jw")
    result = runner.invoke(app, ["config", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["database_url"] == "postgresql://jw:****@db:5432/jw"
    assert data["db_pool_size"] == 10 and data["db_auto_migrate"] is False
    assert "db-password" not in result.output
    monkeypatch.setenv("JOBWIRE_DATABASE_URL", "postgresql+asyncpg://jw@db/jw")
    bad = runner.invoke(app, ["config"])
    assert bad.exit_code == 2 and "postgresql://user:password@host:5432/db" in bad.output


@pytest.mark.parametrize("command", [["serve"], ["db", "upgrade"]])
def test_postgresql_url_is_one_clear_line_not_a_traceback(command: list[str], tmp_path: Path) -> None:
    """An unreachable PostgreSQL: one line naming the database (password masked), exit 1. (A
    subprocess: `serve` configures logging for its process, which in-process would stay cached in
    module loggers and break other tests' log capture.)"""
    with socket.socket() as s:  # a port nothing listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBWIRE_")}
    env.update(JOBWIRE_DATABASE_URL=f"postgresql://jw:db-password@127.0.0.1:{port}/jw", JOBWIRE_DATA_DIR=str(tmp_path / "d"))
    proc = subprocess.run([sys.executable, "-m", "jobwire", *command], env=env, capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert errors[0].startswith(f"error: cannot connect to PostgreSQL at postgresql://jw:****@127.0.0.1:{port}/jw: ")
    assert "Traceback" not in output and "StoreError" not in output
    assert "db-password" not in output


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"JOBWIRE_HEARTBEAT_EXPIRY_SECONDS": "2"}, "shorter than heartbeat_expiry_seconds (2) less a 0.4 s margin"),
        ({"JOBWIRE_LEASE_SECONDS": "3"}, "shorter than lease_seconds (3) less a 0.6 s margin"),
        ({"JOBWIRE_LEASE_RENEW_SECONDS": "10"}, "shorter than heartbeat_expiry_seconds (10) less a 1 s margin"),
    ],
)
def test_a_renewal_slower_than_the_heartbeat_or_the_lease_is_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    """Renewing every 3 s a heartbeat that expires after 2 s got every replica on PostgreSQL
    declared dead (exit 75) seconds after its start; it is refused as a setting instead."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2, result.output
    assert "lease_renew_seconds" in result.output and expected in result.output
    assert "JOBWIRE_LEASE_RENEW_SECONDS" in result.output
    monkeypatch.setenv("JOBWIRE_LEASE_RENEW_SECONDS", "0.5")
    assert runner.invoke(app, ["config"]).exit_code == 0


def test_unknown_database_url_scheme_is_refused_by_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBWIRE_DATABASE_URL", "mysql://db/jw")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert "unsupported database URL scheme 'mysql'" in result.output


@pytest.mark.parametrize(
    ("sinks", "expected"),
    [
        ('[{"type": "nope"}]', "sinks.0 (JOBWIRE_SINKS): unknown sink type 'nope': `type` must be 'webhook'"),
        ('[{"type": "log", "url": "x"}]', "sinks.0.url (JOBWIRE_SINKS): a log sink has no setting 'url'"),
        ('["x"]', "sinks.0 (JOBWIRE_SINKS): a sink is a mapping, got 'x'"),
    ],
)
def test_sink_settings_errors_name_the_allowed_types(
    sinks: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBWIRE_SINKS", sinks)
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: invalid setting {expected}"), result.output
    assert expected in result.output, result.output
    for noise in ("WebhookSinkSpec", "LogSinkSpec", "Input should be", "Extra inputs"):
        assert noise not in result.output, result.output


def test_sink_without_type_is_still_a_webhook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBWIRE_SINKS", '[{"url": "https://example.com/hook"}, {"type": "log"}]')
    data = json.loads(runner.invoke(app, ["config", "--json"]).stdout)
    assert [s["type"] for s in data["sinks"]] == ["webhook", "log"]


def test_serve_refuses_public_bind_without_token(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "JOBWIRE_API_TOKEN is required when binding to 0.0.0.0" in result.output
    assert not (tmp_path / "d").exists()  # refused before anything was started


def test_unreachable_server_says_what_to_do() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = runner.invoke(app, ["jobs", "list", "--url", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 2
    assert f"cannot reach jobwire at http://127.0.0.1:{port}" in result.output
    assert "jobwire serve" in result.output


def test_parse_params() -> None:
    assert parse_params(["a=1", "b=x=y", "c:=[1, 2]", "d:=true", "e="]) == {
        "a": "1",
        "b": "x=y",
        "c": [1, 2],
        "d": True,
        "e": "",
    }
    for bad in ("novalue", "=x", "c:={nope"):
        with pytest.raises(typer.BadParameter):
            parse_params([bad])


def test_logging_masks_secrets_in_json_lines() -> None:
    import io
    import logging

    import structlog

    from jobwire.logging import configure_logging

    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    try:
        structlog.get_logger("t").info(
            "hello",
            api_token="tok-123",
            headers={"Authorization": "Bearer abc"},
            db_password="pw",
            run_id="r1",
        )
        logging.getLogger("uvicorn.error").info("plain %s", "record", extra={"client_secret": "cs"})
        structlog.get_logger("t").debug("hidden at info")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
        logging.getLogger().setLevel(logging.WARNING)
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["api_token"] == "****" and first["db_password"] == "****"
    assert first["headers"] == {"Authorization": "****"} and first["run_id"] == "r1"
    assert second["event"] == "plain record" and second["client_secret"] == "****"
    for secret in ("tok-123", "abc", '"pw"', '"cs"'):
        assert secret not in buf.getvalue()


def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    for flag in ("--version", "-V"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == f"jobwire {version('jobwire')}"


def test_shell_completion_is_enabled() -> None:
    import subprocess
    import sys

    help_text = runner.invoke(app, ["--help"]).output
    assert "--install-completion" in help_text and "--show-completion" in help_text
    exe = Path(sys.executable).with_name("jobwire")
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    shown = subprocess.run(
        [exe, "--show-completion", "bash"], env=env, capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0 and "_JOBWIRE_COMPLETE=complete_bash" in shown.stdout, shown
    env = {
        **os.environ,
        "_JOBWIRE_COMPLETE": "complete_bash",
        "COMP_WORDS": "jobwire runs ",
        "COMP_CWORD": "2",
    }
    done = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["list", "show", "logs", "cancel", "rerun"], done


def test_license_file_matches_pyproject() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    assert tomllib.loads((root / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    text = (root / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000


def test_deployment_says_where_its_image_comes_from() -> None:
    """The image is built from the repository's Dockerfile and published nowhere: the manifest's
    comment and the README say so (tests/packaging/test_docker.py tests the Dockerfile)."""
    root = Path(__file__).resolve().parents[2]
    deployment = (root / "deploy" / "kubernetes" / "deployment.yaml").read_text()
    image_line = next(i for i, line in enumerate(deployment.splitlines()) if "image:" in line)
    comment = "\n".join(deployment.splitlines()[image_line - 3 : image_line])
    assert "Not published: build it from the repository's Dockerfile" in comment
    assert (root / "Dockerfile").is_file()
    readme = (root / "README.md").read_text()
    assert "not built by anything in this repository" not in readme
    assert "No image\nis published: build it from the Dockerfile" in readme


def test_check_warns_about_webhook_secret_env_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHECK_UNSET_HOOK", raising=False)
    monkeypatch.setenv("CHECK_SET_HOOK", "s")
    (tmp_path / "hooks.yaml").write_text(
        "jobs:\n"
        "  - name: deploy\n"
        "    triggers: [{webhook: {secret_env: CHECK_UNSET_HOOK, id: gh}}, {webhook: {secret_env: CHECK_SET_HOOK}}]\n"
        '    target: {type: local, command: ["true"]}\n'
    )
    result = runner.invoke(app, ["check", "hooks.yaml"])
    assert result.exit_code == 0, result.output  # the file loads: the variable may be set later
    warnings = [line for line in result.output.splitlines() if "warning" in line]
    assert len(warnings) == 1, result.output
    assert warnings[0].startswith("hooks.yaml:2: warning: jobs[0].triggers[0].secret_env: ")
    assert "webhook trigger 'gh' of job 'deploy'" in warnings[0] and "CHECK_UNSET_HOOK" in warnings[0]
    assert "1 job OK" in result.output
    data = json.loads(runner.invoke(app, ["check", "--json", "hooks.yaml"]).stdout)
    assert data["ok"] is True and [w["path"] for w in data["warnings"]] == ["jobs[0].triggers[0].secret_env"]
