"""`parse_duration` remembers the texts it parsed (a stored definition has seven durations, nearly
all the same few texts): what it remembers must be what it would parse, errors never remembered,
and the memory bounded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from jobwire import model
from jobwire.model import Job, parse_duration

BASE = {"name": "d", "target": {"type": "local", "command": ["true"]}}


@pytest.mark.parametrize("text", ["10s", " 1h30m ", "500ms", "2D", "1.5", "3600s", "0s"])
def test_a_remembered_text_gives_what_parsing_gives(text: str) -> None:
    fresh = model._parse_duration(text)
    assert parse_duration(text) == fresh
    assert model._PARSED[text] == fresh
    assert parse_duration(text) == fresh  # now from memory


@pytest.mark.parametrize("text", ["-1s", "soon", "99999999999w", "nan", "1e308", ""])
def test_a_refused_text_is_refused_every_time_and_not_remembered(text: str) -> None:
    for _ in range(2):
        with pytest.raises(ValueError):
            parse_duration(text)
    assert text not in model._PARSED


def test_the_memory_is_bounded() -> None:
    limit = model._DurationTexts.LIMIT
    for i in range(limit + 50):
        assert parse_duration(f"{i}ms") == timedelta(milliseconds=i)
    assert len(model._PARSED) <= limit
    assert parse_duration(f"{limit + 49}ms") == timedelta(milliseconds=limit + 49)


@pytest.mark.parametrize("value", [timedelta(seconds=-1), -1, -0.5, "-1s", True])
def test_a_negative_or_boolean_duration_is_refused_in_a_definition(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Job.model_validate({**BASE, "timeout": value})
    assert "timeout" in str(info.value)
