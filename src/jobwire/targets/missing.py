"""The stand-in for a target kind whose client library is not installed (the `kubernetes` target
without `pip install 'jobwire[kubernetes]'`): jobwire starts and every other target runs; a run of
this kind fails at once with reason `PlugMissing` and the `pip install` to run, and `/readyz` names
the problem while a job uses the kind."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import structlog

from jobwire.config import Settings
from jobwire.model import Job, RunError, RunState
from jobwire.targets.base import Outcome, RunContext, Target

log = structlog.get_logger(__name__)


class MissingTarget(Target):
    kind = "missing"

    def __init__(self, settings: Settings, kind: str, problem: str) -> None:
        super().__init__(settings)
        self.missing_kind = kind
        self.problem = problem
        self._jobs: Callable[[], Iterable[Job]] | None = None
        self._logged = False

    def bind(
        self,
        run_exists: Any = None,
        jobs: Callable[[], Iterable[Job]] | None = None,
        registry: Any = None,
    ) -> None:
        if jobs is not None:
            self._jobs = jobs

    def _used(self) -> bool:
        return any(job.target.type == self.missing_kind for job in (self._jobs() if self._jobs else ()))

    def health(self) -> dict[str, str | None]:
        return {f"jobwire-target-{self.missing_kind}": self.problem} if self._used() else {}

    async def execute(self, ctx: RunContext) -> Outcome:
        if not self._logged:
            self._logged = True
            log.error("target kind cannot run", kind=self.missing_kind, error=self.problem)
        return Outcome(
            state=RunState.failed,
            retryable=False,
            error=RunError(message=self.problem, reason="PlugMissing", code=None),
        )
