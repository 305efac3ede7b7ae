"""Loaded definitions share their pydantic fields-sets (engine/jobs.py) without changing anything."""

from __future__ import annotations

import copy

from jobwire.engine.jobs import share_fields_sets
from jobwire.model import Job


def jobs() -> list[Job]:
    return [
        Job.model_validate(
            {
                "name": f"j{i}",
                "triggers": [{"cron": f"{i} * * * *", "params": {"who": "x"}}, {"type": "api"}],
                "parameters": [{"name": "who", "default": "a"}],
                "target": {"type": "local", "command": ["echo", "{{who}}"], "env": {"N": str(i)}},
                "catchup": {"policy": "skip"},
                "retry": {"max_attempts": 3},
            }
        )
        for i in range(50)
    ]


def test_equal_sets_become_one_object_and_nothing_else_changes() -> None:
    mine, reference = jobs(), jobs()
    dumps = [j.model_dump_json() for j in mine]
    assert len({id(j.target.__pydantic_fields_set__) for j in mine}) == 50
    share_fields_sets(mine)
    assert len({id(j.target.__pydantic_fields_set__) for j in mine}) == 1
    assert len({id(j.triggers[0].__pydantic_fields_set__) for j in mine}) == 1
    assert len({id(j.parameters[0].__pydantic_fields_set__) for j in mine}) == 1
    assert len({id(j.catchup.__pydantic_fields_set__) for j in mine}) == 1
    assert len({id(j.retry.__pydantic_fields_set__) for j in mine}) == 1, "a field given explicitly"
    assert mine[0].concurrency is mine[1].concurrency, "a class default: one instance, never walked"
    assert mine == reference
    assert [j.model_dump_json() for j in mine] == dumps
    assert [j.model_fields_set for j in mine] == [j.model_fields_set for j in reference]
    # a copy with changes gets its own set: the shared one is never changed
    changed = mine[0].model_copy(update={"description": "changed"})
    assert "description" in changed.model_fields_set
    assert "description" not in mine[1].model_fields_set
    deep = copy.deepcopy(mine[2])
    assert deep == reference[2]
