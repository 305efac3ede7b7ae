"""Parameters: resolve (coercion, defaults, choices, fixed values), masking, env, templating."""

from __future__ import annotations

import json
import math
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from jobwire.model import Job
from jobwire.params import (
    MASK,
    ParamError,
    check_definition,
    coerce,
    mask_params,
    param_env,
    placeholders,
    render,
    render_argv,
    render_headers,
    render_text,
    render_url,
    resolve_params,
)


def make_job(params: list[dict[str, Any]], **extra: Any) -> Job:
    data: dict[str, Any] = {
        "name": "j",
        "target": {"type": "local", "command": ["echo", "x"]},
        "parameters": params,
    }
    data.update(extra)
    return Job.model_validate(data)


JOB = make_job(
    [
        {"name": "name", "type": "string"},
        {"name": "times", "type": "integer", "default": 1},
        {"name": "ratio", "type": "number", "required": False},
        {"name": "loud", "type": "boolean", "default": False},
        {"name": "cfg", "type": "json", "required": False},
        {"name": "color", "choices": ["red", "green"], "default": "red"},
        {"name": "token", "secret": True, "required": False},
    ]
)


# --------------------------------------------------------------------------- resolve


def test_defaults_and_order() -> None:
    out = resolve_params(JOB, {"name": "Ada"})
    assert out == {
        "name": "Ada",
        "times": 1,
        "ratio": None,
        "loud": False,
        "cfg": None,
        "color": "red",
        "token": None,
    }
    assert list(out) == [p.name for p in JOB.parameters]


def test_text_is_coerced_for_cli_and_query_strings() -> None:
    out = resolve_params(JOB, {"name": "Ada", "times": " 42 ", "ratio": "0.5", "loud": "TRUE"})
    assert out["times"] == 42 and out["ratio"] == 0.5 and out["loud"] is True
    assert resolve_params(JOB, {"name": "x", "ratio": "3"})["ratio"] == 3
    assert resolve_params(JOB, {"name": "x", "loud": "no"})["loud"] is False
    assert resolve_params(JOB, {"name": 7})["name"] == "7"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("times", "abc", "parameter 'times': expected integer, got 'abc'"),
        ("times", True, "parameter 'times': expected integer, got true"),
        ("times", 1.5, "parameter 'times': expected integer, got 1.5"),
        ("times", "1_000", "parameter 'times': expected integer, got '1_000'"),
        ("ratio", "nan", "parameter 'ratio': expected number, got 'nan'"),
        ("ratio", False, "parameter 'ratio': expected number, got false"),
        ("loud", 1, "parameter 'loud': expected boolean (true or false), got 1"),
        ("loud", "maybe", "parameter 'loud': expected boolean (true or false), got 'maybe'"),
        ("name", True, "parameter 'name': expected string, got true"),
        ("name", ["a"], "parameter 'name': expected string, got [\"a\"]"),
        ("color", "blue", "parameter 'color': must be one of 'red', 'green', got 'blue'"),
    ],
)
def test_bad_values(key: str, value: Any, expected: str) -> None:
    supplied = {"name": "Ada", key: value}
    with pytest.raises(ParamError) as info:
        resolve_params(JOB, supplied)
    assert str(info.value) == expected
    assert info.value.errors == [(key, expected.split(": ", 1)[1])]


def test_json_accepts_any_json_value_and_keeps_strings() -> None:
    for v in ({"a": [1, 2]}, [1, "x"], "text", 3, True):
        assert resolve_params(JOB, {"name": "x", "cfg": v})["cfg"] == v
    with pytest.raises(ParamError, match="expected a JSON value"):
        resolve_params(JOB, {"name": "x", "cfg": {"a": float("inf")}})


def test_all_errors_are_collected() -> None:
    with pytest.raises(ParamError) as info:
        resolve_params(JOB, {"times": "x", "loud": "y", "color": "blue", "nope": 1, "other": 2})
    names = [n for n, _ in info.value.errors]
    assert names == ["name", "times", "loud", "color", "nope", "other"]
    text = str(info.value)
    assert "parameter 'name': required string parameter is missing" in text
    assert "parameter 'nope': not a parameter of job 'j'" in text
    assert isinstance(info.value, ValueError)


def test_undeclared_keys_ignored_when_not_strict() -> None:
    out = resolve_params(JOB, {"name": "x", "bucket": "b", "key": "k"}, strict=False)
    assert "bucket" not in out and out["name"] == "x"


def test_payload_not_an_object() -> None:
    with pytest.raises(ParamError) as info:
        resolve_params(JOB, ["a"])  # type: ignore[arg-type]
    assert info.value.errors[0][0] == "payload"
    assert "payload: expected an object of parameters, got an array" in str(info.value)


def test_null_counts_as_not_supplied() -> None:
    assert resolve_params(JOB, {"name": "x", "times": None})["times"] == 1
    with pytest.raises(ParamError, match="'name': required"):
        resolve_params(JOB, {"name": None})


def test_fixed_wins_and_supplying_it_is_not_an_error() -> None:
    out = resolve_params(JOB, {"name": "Ada", "times": 5}, {"times": "9"})
    assert out["times"] == 9
    # a fixed value also satisfies a required parameter
    assert resolve_params(JOB, None, {"name": "cron"})["name"] == "cron"


def test_fixed_undeclared_is_an_error() -> None:
    with pytest.raises(ParamError, match="'zzz': fixed by the trigger"):
        resolve_params(JOB, {"name": "x"}, {"zzz": 1})


def test_secret_values_never_in_errors() -> None:
    job = make_job([{"name": "pin", "type": "integer", "secret": True}])
    with pytest.raises(ParamError) as info:
        resolve_params(job, {"pin": "hunter2"})
    assert "hunter2" not in str(info.value)
    assert "got ****" in str(info.value)


def test_job_without_parameters() -> None:
    job = make_job([])
    assert resolve_params(job, None) == {}
    assert resolve_params(job, {"x": 1}, strict=False) == {}
    with pytest.raises(ParamError, match="declares no parameters"):
        resolve_params(job, {"x": 1})


def test_choices_keep_booleans_apart_from_numbers() -> None:
    job = make_job([{"name": "n", "type": "json", "choices": [1, 2]}])
    with pytest.raises(ParamError, match="must be one of"):
        resolve_params(job, {"n": True})
    assert resolve_params(job, {"n": 2}) == {"n": 2}


# --------------------------------------------------------------------------- property tests

integers = st.integers(min_value=-(10**30), max_value=10**30)
floats = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | integers | floats | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(integers)
def test_integer_round_trips(n: int) -> None:
    job = make_job([{"name": "n", "type": "integer"}])
    assert resolve_params(job, {"n": n})["n"] == n
    assert resolve_params(job, {"n": str(n)})["n"] == n
    env = param_env(resolve_params(job, {"n": n}))
    assert resolve_params(job, {"n": env["JOBWIRE_PARAM_N"]})["n"] == n


@given(floats)
def test_number_round_trips(x: float) -> None:
    job = make_job([{"name": "x", "type": "number"}])
    out = resolve_params(job, {"x": x})["x"]
    assert out == x
    again = resolve_params(job, {"x": param_env({"x": out})["JOBWIRE_PARAM_X"]})["x"]
    assert again == x and math.isfinite(again)


@given(st.booleans())
def test_boolean_round_trips(b: bool) -> None:
    job = make_job([{"name": "b", "type": "boolean"}])
    assert resolve_params(job, {"b": b})["b"] is b
    text = param_env({"b": b})["JOBWIRE_PARAM_B"]
    assert text == ("true" if b else "false")
    assert resolve_params(job, {"b": text})["b"] is b


@given(st.text())
def test_string_round_trips(s: str) -> None:
    job = make_job([{"name": "s"}])
    out = resolve_params(job, {"s": s})["s"]
    assert out == s
    assert param_env({"s": out})["JOBWIRE_PARAM_S"] == s


@given(json_values.filter(lambda v: v is not None))
def test_json_round_trips(v: Any) -> None:
    job = make_job([{"name": "v", "type": "json"}])
    out = resolve_params(job, {"v": v})["v"]
    assert out == v
    if isinstance(v, dict | list):
        assert json.loads(param_env({"v": out})["JOBWIRE_PARAM_V"]) == v


@given(
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.text(alphabet="xyz", min_size=1), min_size=1)
)
def test_resolve_reports_every_bad_value(bad: dict[str, str]) -> None:
    job = make_job([{"name": n, "type": "integer"} for n in "abcd"])
    with pytest.raises(ParamError) as info:
        resolve_params(job, bad)
    assert sorted(n for n, _ in info.value.errors if n in bad) == sorted(bad)
    missing = {"a", "b", "c", "d"} - set(bad)
    assert {n for n, _ in info.value.errors} == set(bad) | missing


@given(st.text(), st.text())
def test_fixed_always_wins(supplied: str, fixed: str) -> None:
    job = make_job([{"name": "p"}])
    assert resolve_params(job, {"p": supplied}, {"p": fixed})["p"] == fixed


# --------------------------------------------------------------------------- templating

nasty = st.one_of(
    st.text(),
    st.sampled_from(
        [
            "{{a}}",
            "{{ b }}",
            "$(rm -rf /)",
            "`id`",
            "; shutdown -h now",
            "a && b || c | d > /etc/passwd",
            "'\"\\",
            "\n\r\0",
            "{{{{a}}}}",
            "%s%n",
        ]
    ),
    st.text(alphabet=string.punctuation + " {}ab"),
)


@given(nasty, nasty)
@settings(max_examples=300)
def test_render_never_reexpands_or_executes(a: str, b: str) -> None:
    params = {"a": a, "b": b}
    assert render_argv(["prog", "--a={{a}}", "{{ b }}"], params) == ["prog", f"--a={a}", b]
    assert render("{{a}}", params) == a
    assert render("x{{a}}y{{b}}z", params) == f"x{a}y{b}z"
    assert render_text("{{b}}", params) == b
    assert render({"k{{a}}": ["{{a}}", 1, None]}, params) == {"k{{a}}": [a, 1, None]}


@given(nasty)
def test_render_url_values_cannot_escape_their_segment(v: str) -> None:
    out = render_url("https://api.example.com/items/{{v}}?q={{v}}", {"v": v})
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(out)
    assert parts.hostname == "api.example.com"
    assert parts.path.count("/") == 2
    assert unquote(parts.path.split("/")[2]) == v
    assert not parts.fragment


def test_lone_placeholder_keeps_its_type() -> None:
    params = {"n": 3, "b": True, "cfg": {"a": [1, 2]}, "s": "x", "none": None}
    payload = {"count": "{{n}}", "flag": "{{ b }}", "cfg": "{{cfg}}", "msg": "n={{n}} b={{b}} cfg={{cfg}}"}
    assert render(payload, params) == {
        "count": 3,
        "flag": True,
        "cfg": {"a": [1, 2]},
        "msg": 'n=3 b=true cfg={"a":[1,2]}',
    }
    assert render("{{none}}", params) is None
    assert render("[{{none}}]", params) == "[]"
    assert render_text("{{n}}", params) == "3"
    assert render_argv(["x", "{{b}}"], params) == ["x", "true"]
    assert render(5, params) == 5


def test_not_placeholders_stay_literal() -> None:
    # docker-style templates and anything that is not `{{ identifier }}` pass through unchanged
    params = {"a": "A"}
    for text in ["{{.State.Status}}", "{{ a | upper }}", "{{a.b}}", "{{ 1 }}", "{a}", "{{}}"]:
        assert render(text, params) == text
    assert placeholders(["{{.State}}", "{{ a }}", {"k": "{{b}}x{{c}}"}]) == {"a", "b", "c"}


def test_unknown_placeholder() -> None:
    with pytest.raises(ParamError) as info:
        render(["{{x}}", "a{{y}}", "{{x}}"], {"a": 1})
    assert [n for n, _ in info.value.errors] == ["x", "y"]


def test_render_url_encodes() -> None:
    url = render_url("https://h.example/a/{{p}}?q={{q}}&n={{n}}", {"p": "x/../y", "q": "a b&c=d#e", "n": 3})
    assert url == "https://h.example/a/x%2F..%2Fy?q=a%20b%26c%3Dd%23e&n=3"


def test_render_headers_refuses_line_breaks() -> None:
    assert render_headers({"X-Who": "user {{u}}"}, {"u": "ada"}) == {"X-Who": "user ada"}
    with pytest.raises(ParamError, match="line break"):
        render_headers({"X-Who": "{{u}}"}, {"u": "ada\r\nX-Evil: 1"})


def test_mask_and_env() -> None:
    params = resolve_params(JOB, {"name": "Ada", "token": "s3cret", "cfg": {"a": 1}})
    masked = mask_params(JOB, params)
    assert masked["token"] == MASK and masked["name"] == "Ada"
    assert params["token"] == "s3cret"  # the original is untouched
    env = param_env(params)
    assert env["JOBWIRE_PARAM_NAME"] == "Ada"
    assert env["JOBWIRE_PARAM_TIMES"] == "1"
    assert env["JOBWIRE_PARAM_LOUD"] == "false"
    assert env["JOBWIRE_PARAM_CFG"] == '{"a":1}'
    assert "JOBWIRE_PARAM_RATIO" not in env  # absent optional parameters stay unset


def test_coerce_directly() -> None:
    from jobwire.model import ParamType

    assert coerce(ParamType.integer, "12") == 12
    with pytest.raises(ValueError, match="expected integer, got 'x'"):
        coerce(ParamType.integer, "x")


# --------------------------------------------------------------------------- definition checks


def problems(data: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    base: dict[str, Any] = {"name": "j", "target": {"type": "local", "command": ["echo"]}}
    base.update(data)
    return check_definition(Job.model_validate(base))


def test_check_placeholders_must_be_declared() -> None:
    found = problems(
        {
            "parameters": [{"name": "who"}],
            "target": {
                "type": "local",
                "command": ["echo", "{{who}}", "{{whom}}"],
                "env": {"A": "{{who}}", "B": "{{nope}}"},
            },
        }
    )
    assert found == [
        (("target", "command", 2), "{{whom}} is not a parameter of job 'j' (parameters: who)"),
        (("target", "env", "B"), "{{nope}} is not a parameter of job 'j' (parameters: who)"),
    ]


def test_check_forbidden_places() -> None:
    found = dict(
        problems(
            {
                "parameters": [{"name": "p"}],
                "target": {"type": "local", "command": ["x", "{{p}}"], "cwd": "/tmp/{{p}}"},
            }
        )
    )
    assert "cannot be used in `cwd`" in found[("target", "cwd")]
    # the program is refused by the target itself, so with the job's other problems (test_jobfile)
    with pytest.raises(ValidationError, match=r"the program \(command\[0\]\) cannot come from a parameter"):
        problems({"parameters": [{"name": "p"}], "target": {"type": "local", "command": ["{{p}}", "x"]}})

    found_list = problems(
        {
            "parameters": [{"name": "host"}, {"name": "tok", "secret": True}],
            "target": {
                "type": "http",
                "url": "https://{{host}}.example.com/x?t={{tok}}",
                "headers": {"X-{{host}}": "v"},
            },
        }
    )
    msgs = [m for loc, m in found_list if loc == ("target", "url")]
    assert any("scheme and host" in m for m in msgs)
    assert any("secret parameter 'tok'" in m for m in msgs)
    found = dict(found_list)
    assert "keys are not templated" in found[("target", "headers", "X-{{host}}")]


def test_check_defaults_choices_and_trigger_params() -> None:
    found = dict(
        problems(
            {
                "parameters": [
                    {"name": "n", "type": "integer", "default": "x"},
                    {"name": "c", "choices": ["a", "b"], "default": "z"},
                    {"name": "r", "required": True, "default": "q"},
                    {"name": "need"},
                ],
                "triggers": [
                    {"type": "interval", "interval": "1m", "params": {"n": "nope", "ghost": 1}},
                    {"type": "interval", "id": "i2", "interval": "1m", "params": {"need": "ok", "r": "v"}},
                    "api",
                ],
            }
        )
    )
    assert found[("parameters", 0, "default")] == "expected integer, got 'x'"
    assert found[("parameters", 1, "default")] == "must be one of 'a', 'b', got 'z'"
    assert "cannot have a default" in found[("parameters", 2, "required")]
    assert found[("triggers", 0, "params", "n")] == "expected integer, got 'nope'"
    assert "'ghost' is not a parameter" in found[("triggers", 0, "params", "ghost")]
    assert "required parameter" in found[("triggers", 0)]
    assert ("triggers", 1) not in found


def test_check_clean_job_has_no_problems() -> None:
    assert (
        problems(
            {
                "parameters": [{"name": "who"}, {"name": "n", "type": "integer", "default": 1}],
                "target": {
                    "type": "http",
                    "url": "https://example.com/hello/{{who}}?n={{n}}",
                    "headers": {"X-Who": "{{who}}"},
                    "payload": {"who": "{{who}}", "n": "{{n}}", "docker": "{{.State}}"},
                },
            }
        )
        == []
    )
