"""Event ids and generated run keys (`engine/intake.new_id`): the shape the store and the API
expect, distinct, in the order they were made (across microseconds), and a forked child does not
repeat its parent's random sequence."""

from __future__ import annotations

import hashlib
import os
import re
import time
from datetime import UTC, datetime, timedelta

from jobwire.engine.intake import new_id
from jobwire.model import event_run_key, run_id_for, time_run_key


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


def test_run_ids_of_keys_jobwire_made_lead_with_their_time() -> None:
    """A run id is a pure function of its run key. A key that carries a time jobwire put there (a
    generated event key, a fire time) leads the id with that time, in 256 µs steps, then the whole
    92-bit hash; any other key gives the hash alone, as every key did before."""
    made = event_run_key("h", "api", new_id("k"))
    fire_at = datetime(2026, 12, 7, 5, 0, 0, 123456, tzinfo=UTC)
    fire = time_run_key("daily", "cron", fire_at)
    other = event_run_key("h", "amqp", "message-17")
    for key in (made, fire, other):
        assert run_id_for(key) == run_id_for(key)
        assert run_id_for(key).endswith(hashlib.sha256(key.encode()).hexdigest()[:23])
    assert run_id_for(other) == "r" + hashlib.sha256(other.encode()).hexdigest()[:23]
    assert re.fullmatch(r"r[0-9a-f]{34}", run_id_for(made)) and re.fullmatch(r"r[0-9a-f]{34}", run_id_for(fire))
    assert run_id_for(made)[1:12] == made[-23:-12]  # the key's clock, 11 of its 13 hex digits
    steps = (fire_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=256)
    assert run_id_for(fire)[1:12] == f"{steps:011x}"


def test_run_ids_sort_in_time_order_and_stay_distinct() -> None:
    """Runs recorded later get ids that sort after (across 256 µs steps), so a burst's rows sit
    side by side in the index of run ids; 10,000 jobs due at one instant share the time and still
    get 10,000 ids."""
    earlier = [event_run_key("h", "api", new_id("k")) for _ in range(100)]
    step = time.time_ns() // 256_000
    while time.time_ns() // 256_000 <= step:  # the clock's next 256 µs step
        pass
    later = [event_run_key("h", "api", new_id("k")) for _ in range(100)]
    assert max(map(run_id_for, earlier)) < min(map(run_id_for, later))
    at = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
    burst = {run_id_for(time_run_key(f"job-{i}", "cron", at)) for i in range(10_000)}
    assert len(burst) == 10_000 and len({i[:12] for i in burst}) == 1
    assert max(burst) < run_id_for(time_run_key("job-0", "cron", at + timedelta(milliseconds=1)))
    # a time before 1970 (an `at` trigger can name one) cannot lead: the hash alone
    old = time_run_key("j", "at", datetime(1969, 7, 20, tzinfo=UTC))
    assert run_id_for(old) == "r" + hashlib.sha256(old.encode()).hexdigest()[:23]
