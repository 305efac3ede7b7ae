"""A fault-injecting double over the spot target's EC2 calls (`jobwire.targets.spot.ec2.Ec2`).

moto fulfils a spot request at once; real EC2 keeps it pending, cancels it, closes it, finds the
price too low or no capacity, and interrupts running instances. `FaultyEc2` delegates every call to
moto and rewrites answers from a script:

* `script`: (State, Status.Code) pairs, consumed in order by `request_spot` and by
  `describe_requests(ids=...)`; while one applies, the request is shown without its instance. A
  scripted state that will never be fulfilled (anything but open/pending-*) terminates the
  instance moto made behind it, as EC2 would never have started one; so does cancelling a request
  last shown pending.
* `answer_delay`: RequestSpotInstances is made at once but its answer comes back this much later.
* `interrupt`: once set, every `describe_requests(ids=...)` of a fulfilled request answers with this
  status code (`marked-for-termination`, `instance-terminated-by-price`, ...).
"""

from __future__ import annotations

import asyncio
from typing import Any

from jobwire.targets.spot.ec2 import Ec2

PENDING = ("pending-evaluation", "pending-fulfillment", "not-scheduled-yet")


class FaultyEc2:
    def __init__(self, real: Ec2, script: list[tuple[str, str]] | None = None) -> None:
        self.real = real
        self.region = real.region
        self.endpoint_url = real.endpoint_url
        self.script = list(script or [])
        self.interrupt: str | None = None
        self.answer_delay = 0.0
        self.calls: list[str] = []
        self.hidden: dict[str, str] = {}
        """Request id → the instance moto made for a request shown pending."""
        self.revoked: list[str] = []
        """Instances moto made for requests cancelled while shown pending (terminated here)."""
        self.requested_types: list[str] = []
        self.tokens: list[str] = []

    async def _fake(self, req: dict[str, Any]) -> dict[str, Any]:
        if not self.script:
            if self.interrupt and req.get("State") == "active":
                return {**req, "Status": {"Code": self.interrupt, "Message": "scripted interruption"}}
            return req
        state, code = self.script.pop(0)
        if not (state == "open" and code in PENDING) and req.get("InstanceId"):
            await self.real.terminate([str(req["InstanceId"])])
        elif req.get("InstanceId"):  # pending: the instance moto made is not there yet
            self.hidden[str(req["SpotInstanceRequestId"])] = str(req["InstanceId"])
        fake = {k: v for k, v in req.items() if k != "InstanceId"}
        return {**fake, "State": state, "Status": {"Code": code, "Message": f"scripted {code}"}}

    async def request_spot(
        self, token: str, launch: dict[str, Any], tags: dict[str, str], max_price: str | None
    ) -> dict[str, Any]:
        self.calls.append("request_spot")
        self.tokens.append(token)
        self.requested_types.append(str(launch.get("InstanceType")))
        answer = await self.real.request_spot(token, launch, tags, max_price)
        if self.answer_delay:  # the request is made; its answer is slow to come back
            await asyncio.sleep(self.answer_delay)
        return await self._fake(answer)

    async def describe_requests(
        self, ids: list[str] | None = None, tags: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        self.calls.append("describe_requests")
        found = await self.real.describe_requests(ids, tags)
        if ids:
            return [await self._fake(r) for r in found]
        return found

    async def describe_instances(self, *a: Any, **kw: Any) -> list[dict[str, Any]]:
        self.calls.append("describe_instances")
        return await self.real.describe_instances(*a, **kw)

    async def create_tags(self, ids: list[str], tags: dict[str, str]) -> None:
        self.calls.append("create_tags")
        await self.real.create_tags(ids, tags)

    async def terminate(self, instance_ids: list[str]) -> None:
        self.calls.append("terminate")
        await self.real.terminate(instance_ids)

    async def cancel_requests(self, request_ids: list[str]) -> None:
        self.calls.append("cancel_requests")
        await self.real.cancel_requests(request_ids)
        # a request cancelled while pending never gets its instance
        hidden = [self.hidden.pop(r) for r in request_ids if r in self.hidden]
        if hidden:
            self.revoked += hidden
            await self.real.terminate(hidden)

    async def ssm_parameter(self, name: str) -> str:
        return await self.real.ssm_parameter(name)

    async def close(self) -> None:
        await self.real.close()
