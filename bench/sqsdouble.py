"""A minimal SQS over HTTP (the JSON protocol botocore speaks), in memory, for the sustained-intake
bench row only: moto's ReceiveMessage recomputes every queue attribute by scanning the whole queue
for each message it returns, so with moto the row measured moto (~170-240 messages/s at 93 % of a
core) rather than jobwire. This double answers in O(batch). It implements just what the `sqs`
source calls: CreateQueue, GetQueueUrl, GetQueueAttributes, SetQueueAttributes,
SendMessage(Batch), ReceiveMessage (long polling, visibility timeout), DeleteMessageBatch,
ChangeMessageVisibilityBatch — and one action of its own, `JobwireBenchFeed`, the bench's producer
(a window of messages kept on the queue, refilled as they are deleted).

`python -m bench.sqsdouble --port N` serves until killed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ACCOUNT = "000000000000"


class Queue:
    def __init__(self, name: str) -> None:
        self.name = name
        self.attributes: dict[str, str] = {"QueueArn": f"arn:aws:sqs:us-east-1:{ACCOUNT}:{name}"}
        self.ready: deque[dict[str, Any]] = deque()
        self.inflight: dict[str, tuple[dict[str, Any], float]] = {}
        self.feed_left = 0
        self.feed_window = 0
        self.feed_body = "{}"

    def send(self, text: str) -> dict[str, Any]:
        msg = {"MessageId": str(uuid.uuid4()), "Body": text, "MD5OfBody": md5(text), "SentAt": time.time()}
        self.ready.append(msg)
        return msg

    def top_up(self) -> None:
        """The bench feed: keep `feed_window` messages waiting or in flight until `feed_left` ran out."""
        while self.feed_left > 0 and len(self.ready) + len(self.inflight) < self.feed_window:
            self.send(self.feed_body)
            self.feed_left -= 1


class State:
    def __init__(self) -> None:
        self.queues: dict[str, Queue] = {}
        self.cond = threading.Condition()

    def queue(self, url: str) -> Queue:
        return self.queues[url.rsplit("/", 1)[-1]]


STATE = State()
DELAY = 0.0
"""Seconds added to every answer (`--delay-ms`): a network round trip, to see how the receive loop
behaves when each call waits on the wire rather than on a CPU."""


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    """TCP_NODELAY, and each answer is ONE write (`do_POST`). Before, headers and body were two
    writes with Nagle on: the body waited for the client's delayed ACK of the headers (Linux: 40
    ms). Measured in jobwire's receive loop (2 pollers, load average ~8): ReceiveMessage ≈ 40 ms
    and DeleteMessageBatch ≈ 35 ms per call before, ≈ 2-10 ms and ≈ 2 ms after — the double, not
    jobwire, had bounded the row at ~200 runs/s per 2 pollers."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        if DELAY:
            time.sleep(DELAY)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        op = (self.headers.get("X-Amz-Target") or "").rsplit(".", 1)[-1]
        try:
            status, answer = 200, getattr(self, "op_" + op)(body)
        except KeyError:
            status, answer = 400, {"__type": "com.amazonaws.sqs#QueueDoesNotExist", "message": "no such queue"}
        except AttributeError:
            status, answer = 400, {"__type": "com.amazonaws.sqs#InvalidAction", "message": op}
        data = json.dumps(answer).encode()
        head = (
            f"HTTP/1.1 {status} {'OK' if status == 200 else 'Bad Request'}\r\n"
            "Content-Type: application/x-amz-json-1.0\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        self.wfile.write(head.encode() + data)

    def url(self, name: str) -> str:
        return f"http://{self.headers.get('Host')}/{ACCOUNT}/{name}"

    def op_CreateQueue(self, b: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        with STATE.cond:
            q = STATE.queues.setdefault(b["QueueName"], Queue(b["QueueName"]))
            q.attributes.update(b.get("Attributes") or {})
        return {"QueueUrl": self.url(q.name)}

    def op_GetQueueUrl(self, b: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        return {"QueueUrl": self.url(STATE.queues[b["QueueName"]].name)}

    def op_GetQueueAttributes(self, b: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        q = STATE.queue(b["QueueUrl"])
        return {"Attributes": {**q.attributes, "ApproximateNumberOfMessages": str(len(q.ready))}}

    def op_SetQueueAttributes(self, b: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        with STATE.cond:
            STATE.queue(b["QueueUrl"]).attributes.update(b.get("Attributes") or {})
        return {}

    def op_SendMessage(self, b: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        with STATE.cond:
            msg = STATE.queue(b["QueueUrl"]).send(b["MessageBody"])
            STATE.cond.notify_all()
        return {"MessageId": msg["MessageId"], "MD5OfMessageBody": msg["MD5OfBody"]}

    def op_SendMessageBatch(self, b: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        ok = []
        with STATE.cond:
            q = STATE.queue(b["QueueUrl"])
            for e in b["Entries"]:
                msg = q.send(e["MessageBody"])
                ok.append({"Id": e["Id"], "MessageId": msg["MessageId"], "MD5OfMessageBody": msg["MD5OfBody"]})
            STATE.cond.notify_all()
        return {"Successful": ok, "Failed": []}

    def op_ReceiveMessage(self, b: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        deadline = time.monotonic() + float(b.get("WaitTimeSeconds") or 0)
        wanted = int(b.get("MaxNumberOfMessages") or 1)
        visibility = float(b.get("VisibilityTimeout") or 30)
        with STATE.cond:
            q = STATE.queue(b["QueueUrl"])
            while True:
                now = time.time()
                for handle, (msg, until) in list(q.inflight.items()):
                    if until <= now:  # visibility timed out: visible again
                        del q.inflight[handle]
                        q.ready.appendleft(msg)
                if q.ready or time.monotonic() >= deadline:
                    break
                STATE.cond.wait(max(0.0, deadline - time.monotonic()))
            out = []
            while q.ready and len(out) < wanted:
                msg = q.ready.popleft()
                handle = uuid.uuid4().hex
                q.inflight[handle] = (msg, now + visibility)
                out.append(
                    {
                        "MessageId": msg["MessageId"],
                        "ReceiptHandle": handle,
                        "MD5OfBody": msg["MD5OfBody"],
                        "Body": msg["Body"],
                        "Attributes": {"SentTimestamp": str(int(msg["SentAt"] * 1000)), "ApproximateReceiveCount": "1"},
                    }
                )
        return {"Messages": out} if out else {}

    def op_JobwireBenchFeed(self, b: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        """Not SQS: the bench's producer. Sends `Total` messages with body `Body`, keeping `Window`
        of them waiting or in flight — refilled as they are deleted, i.e. as jobwire records them —
        so no producer process competes with jobwire for this machine's CPUs."""
        with STATE.cond:
            q = STATE.queue(b["QueueUrl"])
            q.feed_left, q.feed_window, q.feed_body = int(b["Total"]), int(b["Window"]), str(b.get("Body", "{}"))
            q.top_up()
            STATE.cond.notify_all()
        return {}

    def op_DeleteMessageBatch(self, b: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        with STATE.cond:
            q = STATE.queue(b["QueueUrl"])
            for e in b["Entries"]:
                q.inflight.pop(e["ReceiptHandle"], None)
            if q.feed_left:
                q.top_up()
                STATE.cond.notify_all()
        return {"Successful": [{"Id": e["Id"]} for e in b["Entries"]], "Failed": []}

    def op_ChangeMessageVisibilityBatch(self, b: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        with STATE.cond:
            q = STATE.queue(b["QueueUrl"])
            for e in b["Entries"]:
                if e["ReceiptHandle"] in q.inflight:
                    msg, _ = q.inflight[e["ReceiptHandle"]]
                    q.inflight[e["ReceiptHandle"]] = (msg, time.time() + float(e["VisibilityTimeout"]))
        return {"Successful": [{"Id": e["Id"]} for e in b["Entries"]], "Failed": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to every answer")
    args = parser.parse_args()
    global DELAY
    DELAY = args.delay_ms / 1e3
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
