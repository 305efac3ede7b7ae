"""The fast path of job files (`jobwire.yamlfast`) builds what the careful path builds, or gives up."""

from __future__ import annotations

import pytest

from jobwire import yamlfast
from jobwire.jobfile import MAX_DEPTH, MAX_NODES, _compose

SAME = [
    "jobs:\n  - name: a\n    triggers: [{cron: '*/5 * * * *'}]\n    target: {type: local, command: [echo, '{{x}}']}\n"
    "  - name: b\n    description: |\n      two\n      lines\n    timeout: 90\n    retry: {max_attempts: 3, backoff: 1.5}\n",
    '{"jobs": [{"name": "j1", "triggers": [{"type": "interval", "interval": "3600s"}], "x": null, "t": true}]}',
    "name: single\nat: 2026-01-01T00:00:00Z\nday: 2026-01-02\nn: -0x10\nf: .5\nempty:\n",
    "---\nname: one\n---\nname: two\n...\n",
    "jobs: []\n",
    "",
    "1: int key\n'quoted': \"double\"\n",
    '{"a": [1, -2, 3.5, -0.25, 1.5e+3, "x\\u00e9", {"b": false}], "c": {}}',
    "[1, 2]",
    '{"a": 1e5, "b": NaN}',  # YAML reads these as text: `json` gives up, libyaml's events agree
]


@pytest.mark.parametrize("text", SAME)
def test_the_fast_path_builds_what_the_careful_path_builds(text: str) -> None:
    fast = yamlfast.compose(text, MAX_DEPTH, MAX_NODES)
    careful, errors = _compose(text, "f.yaml")
    assert fast is not None and not errors
    assert [d.data for d in fast if d.data is not None] == [d.data for d in careful if d.data is not None]
    for f, c in zip(
        [d for d in fast if d.data is not None], [d for d in careful if d.data is not None], strict=True
    ):
        for loc, line in f.lines.items():  # the lines it keeps (each job's name) are the careful ones
            assert c.lines[loc] == line
        if text.startswith("{"):
            assert f.lines == {}  # JSON through `json`: no lines (its errors come from the careful path)
        elif isinstance(f.data, dict) and isinstance(f.data.get("jobs"), list):
            assert set(f.lines) == {("jobs", i, "name") for i, j in enumerate(f.data["jobs"]) if "name" in j}


GIVE_UP = [
    "a: &x {b: 1}\nc: *x\n",  # anchors and aliases
    "base: &b {x: 1}\nj: {<<: *b, y: 2}\n",  # merge keys
    "a: !!python/object:os.system x\n",  # explicit tags
    "a: !!binary aGVsbG8=\n",
    "a: !custom {x: 1}\n",
    "a: 1\na: 2\n",  # duplicate keys
    "? [a, b]\n: c\n",  # a non-scalar key
    "a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n",  # too deep
    "a: [1, 2\n",  # a syntax error
    "a:\tb\n\x00",
    '{"a": 1, "a": 2}',  # JSON: duplicate keys (json keeps the last silently)
    '{"<<": {"a": 1}}',
    '{"a": ' + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "}",
]


@pytest.mark.parametrize("text", GIVE_UP)
def test_the_fast_path_gives_up_where_the_careful_path_must_judge(text: str) -> None:
    assert yamlfast.compose(text, MAX_DEPTH, MAX_NODES) is None


def test_the_fast_path_gives_up_past_the_value_budget() -> None:
    text = "a: [" + ", ".join(["1"] * 50) + "]\n"
    assert yamlfast.compose(text, MAX_DEPTH, 40) is None
    assert yamlfast.compose(text, MAX_DEPTH, 60) is not None
