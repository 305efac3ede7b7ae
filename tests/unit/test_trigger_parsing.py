"""The raw front's request parser and the fast path's JSON decoding decide as before their
shortcuts: `rawfront.parse` against the line-by-line parser it replaced (kept below as the
reference), `fastpath.loads` against `json.loads`, on hand-picked and generated inputs."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest

from jobwire.api.fastpath import loads, takes
from jobwire.api.rawfront import MAX_HEAD, parse

_REQUEST_LINE = re.compile(rb"POST /api/v1/jobs/([A-Za-z0-9._~-]+)/runs HTTP/1\.1")
_PREFIX = b"POST /api/v1/jobs/"
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HANDED_OVER = frozenset({b"transfer-encoding", b"expect", b"upgrade"})


def reference_parse(buf: bytearray, max_body: int) -> Any:
    """`parse` as it was before session 21 (each header line searched for control characters)."""
    n = len(buf)
    if buf[: len(_PREFIX)] != _PREFIX[:n]:
        return None
    end = buf.find(b"\r\n\r\n", 0, MAX_HEAD)
    if end < 0:
        return 0 if n < MAX_HEAD else None
    lines = bytes(buf[:end]).split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None:
        return None
    headers: dict[bytes, bytes] = {}
    for raw in lines[1:]:
        name, sep, value = raw.partition(b":")
        if not sep or not name or name.strip(b" \t") != name or b" " in name or _CTL.search(raw):
            return None
        name = name.lower()
        if name in headers or name in _HANDED_OVER:
            return None
        headers[name] = value.strip(b" \t")
    tokens = {t.strip().lower() for t in headers.get(b"connection", b"").split(b",")}
    if b"upgrade" in tokens or not takes(headers):
        return None
    length = headers.get(b"content-length", b"0")
    if not length.isdigit() or len(length) > 12 or int(length) > max_body:
        return None
    size = end + 4 + int(length)
    if n < size:
        return 0
    raw = bytes(buf[:size])
    return (line.group(1).decode("ascii"), headers, raw[end + 4 :], b"close" in tokens, raw), size


def _view(found: Any) -> Any:
    if isinstance(found, tuple):
        request, size = found
        return (request.job, request.headers, request.body, request.close, request.raw), size
    return found


HEAD = b"POST /api/v1/jobs/h/runs HTTP/1.1\r\n"
CASES = [
    HEAD + b"host: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
    HEAD + b"host: x\r\n\r\n",
    HEAD + b"host: x\r\nconnection: keep-alive, Close\r\n\r\n",
    HEAD + b"host: x\r\nconnection: upgrade\r\n\r\n",
    HEAD + b"host: x\r\nx-a: tab\there\r\n\r\n",
    HEAD + b"host: x\r\nx-a: bare\rcr\r\n\r\n",
    HEAD + b"host: x\r\nx-a: bare\nlf\r\n\r\n",
    HEAD + b"host: x\r\nx-a: ends in cr\r\r\n\r\n",
    HEAD + b"host: x\r\n\nx-a: starts with lf\r\n\r\n",
    HEAD + b"host: x\r\nx-a: nul\x00\r\n\r\n",
    HEAD + b"host: x\r\nx-a: del\x7f\r\n\r\n",
    HEAD + b"host: x\r\nx-a: high \xff bytes\r\n\r\n",
    HEAD + b"host: x\r\nx\x01a: ctl in name\r\n\r\n",
    HEAD + b"host: x\r\n x-a: space first\r\n\r\n",
    HEAD + b"host: x\r\nx-a : space before colon\r\n\r\n",
    HEAD + b"host: x\r\nHost: twice\r\n\r\n",
    HEAD + b"host: x\r\ntransfer-encoding: chunked\r\n\r\n",
    HEAD + b"host: x\r\ncontent-length: 5\r\n\r\n{}",
    HEAD + b"host: x\r\ncontent-length: -1\r\n\r\n",
    HEAD + b"host: x\r\ncontent-length: 9999999999999\r\n\r\n",
    HEAD + b"host: x\r\ncontent-type: text/plain\r\n\r\n",
    HEAD + b"host: x\r\nno colon here\r\n\r\n",
    HEAD + b"host: x\r\n",
    b"POST /api/v1/jobs/h/runs HTTP/1.0\r\nhost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n\r\n",
    b"POST /api/v1/jo",
]


@pytest.mark.parametrize("raw", CASES)
def test_parse_decides_as_the_line_by_line_parser(raw: bytes) -> None:
    assert _view(parse(bytearray(raw), 1024)) == reference_parse(bytearray(raw), 1024)


def test_parse_agrees_on_generated_heads() -> None:
    rng = random.Random(21)
    pieces = [b"a", b"x-k", b":", b": ", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x00", b"\x1f", b"\x7f",
              b"close", b"upgrade", b",", b"content-length", b"2", b"connection", b"content-type",
              b"application/json", b"\xc3\xa9"]
    checked = 0
    for _ in range(3000):
        lines = [b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(0, 4))]
        raw = HEAD + b"host: x\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n{}"
        got, want = _view(parse(bytearray(raw), 1024)), reference_parse(bytearray(raw), 1024)
        assert got == want, raw
        checked += isinstance(want, tuple)
    assert checked > 100, "some generated heads must be ones the parser takes"


BODIES = [
    b"{}", b"{", b"{nope", b'{"a": 1}', b'{"a": "\xff"}', b'{"a": "\xed\xa0\x80"}', b'{"s": "\\ud800"}',
    b"{\x00", b"{}\x00", b"{} x", b'{"a": 1e400}', b'{"a": NaN}', b"[1, 2]", b"null", b" {}",
    '{"a": "é"}'.encode("utf-16-le"), '{"a": 1}'.encode("utf-16"), '{"a": 1}'.encode("utf-32"),
    b"\xef\xbb\xbf{}", '{"ü": 1}'.encode(), b"{" + b"[" * 50 + b"]" * 50 + b"}",
]


def _outcome(fn: Any, body: bytes) -> Any:
    try:
        return "ok", fn(body)
    except json.JSONDecodeError as exc:
        return "json", exc.msg, exc.pos, exc.doc
    except ValueError as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("body", BODIES)
def test_loads_is_json_loads(body: bytes) -> None:
    got, want = _outcome(loads, body), _outcome(json.loads, body)
    if got[0] == "ok" and want[0] == "ok" and got[1] != got[1]:  # NaN is not equal to itself
        assert repr(got) == repr(want)
    else:
        assert got == want
