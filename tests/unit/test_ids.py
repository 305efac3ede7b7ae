"""Event ids and generated run keys (`engine/intake.new_id`): the shape the store and the API
expect, distinct, and a forked child does not repeat its parent's sequence."""

from __future__ import annotations

import os
import re

from jobwire.engine.intake import new_id


def test_shape_and_distinct() -> None:
    ids = [new_id("e") for _ in range(10_000)]
    assert all(re.fullmatch(r"e[0-9a-f]{23}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_forked_child_does_not_repeat_the_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, "".join(new_id("k") for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 1000).decode()
    os.close(read)
    parent = "".join(new_id("k") for _ in range(4))
    assert len(child) == len(parent) == 96
    assert child != parent
