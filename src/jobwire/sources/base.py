"""The source contract: where events come from. One method: `run(submit)`.

A source turns what it receives into `Incoming` values and awaits `submit` for each; `submit`
returns only once the event (and its run) is durably recorded, so a broker source acknowledges
its message after `submit` returns — never before — and a crash in between means redelivery,
which the run key turns into a recorded duplicate instead of a second run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import ClassVar

from jobwire.model import Admission, Incoming

Submit = Callable[[Incoming], Awaitable[Admission]]


class Source(ABC):
    kind: ClassVar[str]

    @abstractmethod
    async def run(self, submit: Submit) -> None:
        """Consume until cancelled."""
