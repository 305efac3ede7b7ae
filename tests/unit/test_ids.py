"""Event ids and generated run keys (`engine/intake.new_id`): the shape the store and the API
expect, distinct, in the order they were made (across microseconds), and a forked child does not
repeat its parent's random sequence."""

from __future__ import annotations

import os
import re
import time

from jobwire.engine.intake import new_id


def test_shape_and_distinct() -> None:
    ids = [new_id("e") for _ in range(10_000)]
    assert all(re.fullmatch(r"e[0-9a-f]{23}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_ids_made_later_sort_after() -> None:
    """Time first: an id made in a later microsecond sorts after every id made before it, so the
    rows of a burst land side by side at the right edge of the store's indexes."""
    pairs = []
    for _ in range(1_000):
        first = new_id("e")
        made = time.time_ns() // 1000
        while time.time_ns() // 1000 <= made:  # the next microsecond of the wall clock
            pass
        pairs.append((first, new_id("e")))
    assert all(a < b for a, b in pairs)
    # the time part is the wall clock's microseconds
    now = time.time_ns() // 1000
    assert abs(int(new_id("e")[1:14], 16) - now) < 1_000_000


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
    # the random parts (the last 10 hex digits of each id) differ, not only the clock's
    assert [child[i + 14 : i + 24] for i in range(0, 96, 24)] != [parent[i + 14 : i + 24] for i in range(0, 96, 24)]
