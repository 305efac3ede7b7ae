"""Smaller leaks (issue 7 #10 a, b): secret parameters in errors, passwords in URLs.
The operator's environment in local jobs (#10 c) is in test_local_env.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobwire.api.schemas import mask_job, unmask_job
from jobwire.model import Job
from jobwire.params import ParamError, check_definition, resolve_params
from jobwire.redact import mask_url

CANARY = "CANARY-7f2c9d"


def job(params: list[dict[str, Any]], **extra: Any) -> Job:
    data: dict[str, Any] = {
        "name": "j",
        "target": {"type": "local", "command": ["true"]},
        "parameters": params,
    }
    data.update(extra)
    return Job.model_validate(data)


@pytest.mark.parametrize(
    "param",
    [
        {"name": "pw", "secret": True, "type": "integer", "default": CANARY},  # bad default
        {"name": "pw", "secret": True, "type": "integer", "choices": [CANARY]},  # bad choice
        {"name": "pw", "secret": True, "choices": ["a", "b"], "default": CANARY},  # default not a choice
    ],
)
def test_a_bad_secret_default_or_choice_is_not_echoed(param: dict[str, Any]) -> None:
    problems = check_definition(job([param]))
    assert problems, "the definition should be refused"
    assert all(CANARY not in msg for _, msg in problems), problems


@pytest.mark.parametrize(
    "param",
    [{"name": "pw", "secret": True, "type": "integer"}, {"name": "pw", "secret": True, "choices": ["x"]}],
)
def test_a_bad_secret_value_at_trigger_time_is_not_echoed(param: dict[str, Any]) -> None:
    with pytest.raises(ParamError) as info:
        resolve_params(job([param]), {"pw": CANARY})
    assert CANARY not in str(info.value)
    assert "pw" in str(info.value)


def test_non_secret_errors_still_name_the_value() -> None:
    problems = check_definition(job([{"name": "n", "choices": ["a", "b"], "default": "zz"}]))
    assert any("'zz'" in msg for _, msg in problems)


def test_urls_are_masked_for_display() -> None:
    assert mask_url(f"https://bob:{CANARY}@h.example/x") == "https://bob:****@h.example/x"
    assert mask_url(f"https://h.example/x?day=1&token={CANARY}") == "https://h.example/x?day=1&token=****"
    assert mask_url("https://h.example/x?day=1") == "https://h.example/x?day=1"


def test_job_definitions_show_no_url_password_and_keep_it_when_sent_back() -> None:
    j = Job.model_validate(
        {"name": "h", "target": {"type": "http", "url": f"https://bob:{CANARY}@h.example/hook?sig={CANARY}"}}
    )
    shown = mask_job(j)
    assert CANARY not in str(shown)
    assert shown["target"]["url"] == "https://bob:****@h.example/hook?sig=****"
    back = unmask_job(shown, j)  # GET, edit, PUT: the masked URL means "keep it"
    assert Job.model_validate(back).target.url == j.target.url  # type: ignore[union-attr]


def test_jobwire_check_shows_no_url_password(tmp_path: Path) -> None:
    f = tmp_path / "jobs.yaml"
    f.write_text(f'jobs:\n  - name: h\n    target: {{type: http, url: "https://bob:{CANARY}@h.example/x"}}\n')
    for extra in ([], ["--json"]):
        proc = subprocess.run(
            [sys.executable, "-m", "jobwire", "check", str(f), *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert CANARY not in proc.stdout + proc.stderr
