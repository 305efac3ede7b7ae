"""Seed 000's template jobs: with `JOBWIRE_TEMPLATE_JOBS=true`, an event from a broker (or, later,
an S3 file) that names a job with no definition launches the Kubernetes Job template of that name
in `NAMESPACE` — "a batch job with the same name, that exists in the namespace".

Before such events are handed in, each unknown name is looked up once: a template there → a job
is defined for it (origin `template`, target `{type: kubernetes, template: NAME}`, optional
parameters `input_location` and `environment`, so both reach the Job's environment and the status
documents) and the event runs it like any other; no template → the event is recorded `invalid`
with reason `TemplateNotFound: …` (and the source dead-letters the message).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog

from jobwire.model import Incoming, Job
from jobwire.store import StoredJob

log = structlog.get_logger(__name__)

SOURCES = frozenset({"amqp", "sqs", "s3"})
"""Event kinds that may name a job by a template (seed 000's intakes)."""


class TemplateLookup(Protocol):
    async def template_exists(self, namespace: str | None, name: str) -> bool: ...


class TemplateJobs:
    def __init__(
        self,
        enabled: bool,
        jobs: Mapping[str, StoredJob],
        lookup: Callable[[], TemplateLookup | None],
        define: Callable[[Job, str], Awaitable[Any]],
    ) -> None:
        self.enabled = enabled
        self._jobs = jobs
        self._lookup = lookup
        self._define = define

    async def resolve(self, events: Sequence[Incoming]) -> list[Incoming]:
        """`events`, with a job defined for each unknown name that has a template, and the ones
        whose name has none marked with their problem."""
        if not self.enabled:
            return list(events)
        unknown = {
            e.job
            for e in events
            if e.job and e.problem is None and e.source in SOURCES and e.job not in self._jobs
        }
        missing: dict[str, str] = {}
        for name in sorted(unknown):
            problem = await self._ensure(name)
            if problem is not None:
                missing[name] = problem
        if not missing:
            return list(events)
        return [e.model_copy(update={"problem": missing[e.job]}) if e.job in missing else e for e in events]

    async def _ensure(self, name: str) -> str | None:
        lookup = self._lookup()
        if lookup is None:
            return f"TemplateNotFound: no job named {name!r}, and the kubernetes target is not configured"
        try:
            job = Job.model_validate(
                {
                    "name": name,
                    "target": {"type": "kubernetes", "template": name},
                    "parameters": [
                        {"name": "input_location", "required": False},
                        {"name": "environment", "required": False},
                    ],
                }
            )
        except ValueError:
            return f"TemplateNotFound: {name!r} cannot name a Kubernetes Job template"
        try:
            found = await lookup.template_exists(None, name)
        except Exception as exc:  # the API is down: not the event's fault; the source retries
            raise ConnectionError(f"cannot look up the Job template {name!r}: {exc}") from exc
        if not found:
            return (
                f"TemplateNotFound: no job named {name!r} and no Job template {name!r} in the namespace "
                '(a CronJob of that name, or a suspended Job labelled jobwire.io/template: "true")'
            )
        if name not in self._jobs:
            await self._define(job, "template")
            log.info("job defined from its Kubernetes template", job=name)
        return None


__all__ = ["SOURCES", "TemplateJobs"]
