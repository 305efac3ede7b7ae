"""The sink contract: where status documents go. One method: `publish`.

The engine gives each sink its own queue and worker, so a slow or failing sink never delays a
run or another sink; `publish` raising means "try again" (with backoff) up to the sink's limit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from jobwire.model import StatusDocument


class Sink(ABC):
    kind: ClassVar[str]
    max_attempts: int = 5

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    @abstractmethod
    async def publish(self, doc: StatusDocument) -> None: ...
