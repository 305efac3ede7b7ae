"""The models the engine builds without a validation pass (`model.trusted`) are the models
validation would have built: same fields, same values, same fields set, same JSON. A field added to
`Run`, `Event` or `Transition` and forgotten in its trusted builder fails here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from jobwire.model import Event, Incoming, Run, RunState, Transition

NOW = datetime(2026, 12, 7, 11, 0, 0, 123456, tzinfo=UTC)


def same(a: BaseModel, b: BaseModel) -> None:
    assert type(a) is type(b)
    assert a.__dict__ == b.__dict__
    assert list(a.__dict__) == list(b.__dict__)
    assert a.model_fields_set == b.model_fields_set
    assert a.__pydantic_extra__ == b.__pydantic_extra__
    assert a.__pydantic_private__ == b.__pydantic_private__
    assert a.model_dump_json() == b.model_dump_json()


def test_transition_made_is_the_validated_transition() -> None:
    made = Transition.made(RunState.running, NOW, "started on http", 2)
    same(made, Transition(state=RunState.running, at=NOW, reason="started on http", attempt=2))
    same(Transition.made(RunState.pending, NOW, None, 1), Transition(state="pending", at=NOW, reason=None, attempt=1))


def test_event_received_is_the_validated_event() -> None:
    args: dict[str, Any] = dict(
        id="e1", job="j", trigger="api", source="api", received_at=NOW,
        scheduled_at=NOW + timedelta(seconds=1), input_location="s3://b/k",
    )
    same(Event.received(**args), Event(**args))
    same(Event.received("e2", None, "t", "amqp", NOW, None, None),
         Event(id="e2", job=None, trigger="t", source="amqp", received_at=NOW, scheduled_at=None, input_location=None))
    # the intake's run path: its payload and run known when the event is built
    same(Event.received("e3", "j", "api", "api", NOW, None, "s3://b/k", {"who": "bob"}, "r3"),
         Event(id="e3", job="j", trigger="api", source="api", received_at=NOW, scheduled_at=None,
               input_location="s3://b/k", payload={"who": "bob"}, run_id="r3"))


def test_run_recorded_is_the_validated_run() -> None:
    history = [Transition.made(RunState.pending, NOW, "event e1 from api", 1)]
    args: dict[str, Any] = dict(
        id="r1", key="j/api/k1", job="j", trigger="api", event_id="e1", state=RunState.pending,
        params={"who": "bob", "n": 3}, concurrency_key=None, created_at=NOW, scheduled_at=None,
        input_location=None, environment="prod", history=history,
    )
    same(Run.recorded(**args), Run(**args))


def test_snapshot_is_model_copy_with_its_own_containers() -> None:
    run = Run.recorded(
        "r1", "j/api/k1", "j", "api", "e1", RunState.pending, {"a": 1}, "c", NOW, None, None, None,
        [Transition.made(RunState.pending, NOW, "x", 1)],
    )
    run.target_status = {"pod": "p"}
    snap = run.snapshot()
    same(snap, run.model_copy(update={
        "history": list(run.history), "params": dict(run.params), "target_status": dict(run.target_status),
    }))
    run.history.append(Transition.made(RunState.running, NOW, "y", 1))
    run.params["a"] = 2
    run.target_status["pod"] = "q"
    run.state = RunState.running
    assert (len(snap.history), snap.params, snap.target_status, snap.state) == (
        1, {"a": 1}, {"pod": "p"}, RunState.pending
    )


def test_incoming_manual_is_the_validated_incoming() -> None:
    made = Incoming.manual("j", "api", {"who": "bob"}, "key-1")
    validated = Incoming(
        job="j", trigger="api", source="api", params={"who": "bob"}, event_key="key-1", received_at=made.received_at
    )
    validated.__pydantic_fields_set__.discard("received_at")  # a default there, given here to compare
    same(made, validated)
    assert Incoming.manual("j", "cli", {}, None).received_at.tzinfo is not None


def test_a_field_assigned_on_run_and_event_is_what_basemodel_assigns() -> None:
    # `FastFields.__setattr__` against BaseModel's own, on two equal models
    def pair() -> tuple[Run, Run, Event, Event]:
        made = [
            Run(id="r", key="k", job="j", trigger="api", event_id="e", state=RunState.pending, created_at=NOW)
            for _ in range(2)
        ]
        events = [Event(id="e", job="j", trigger="api", source="api", received_at=NOW) for _ in range(2)]
        return made[0], made[1], events[0], events[1]

    fast, slow, fast_event, slow_event = pair()
    run_fields: list[tuple[str, Any]] = [
        ("state", RunState.running), ("started_at", NOW), ("target_ref", "pid 1"), ("http_status", 200)
    ]
    event_fields: list[tuple[str, Any]] = [("run_id", "r"), ("payload", {"a": 1}), ("input_location", None)]
    for name, value in run_fields:
        setattr(fast, name, value)
        BaseModel.__setattr__(slow, name, value)
    for name, value in event_fields:
        setattr(fast_event, name, value)
        BaseModel.__setattr__(slow_event, name, value)
    same(fast, slow)
    same(fast_event, slow_event)
    assert "target_ref" in fast.model_fields_set and "input_location" in fast_event.model_fields_set
    # anything that is not a field still goes through BaseModel (which refuses it)
    for model in (fast, fast_event):
        with pytest.raises(ValueError, match="no_such_field"):
            model.__setattr__("no_such_field", 1)


def test_enum_values_read_in_c_are_the_enum_values() -> None:
    from jobwire.model import EventOutcome

    for enum in (RunState, EventOutcome):
        for member in enum:
            assert member.value == member._value_ == str(member)
            assert type(member.value) is str
    assert Transition.made(RunState.timed_out, NOW, None, 1).model_dump(mode="json")["state"] == "timed_out"
