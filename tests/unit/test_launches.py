"""The launch journal (engine/launches.py): which attempts may already have been handed to their
target, as known by the next jobwire after a crash.

Every check that matters reads the file the way the next process would: a new `LaunchJournal` on the
same path, or `replay` below (the file's meaning without touching it).
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobwire.engine import launches
from jobwire.engine.launches import LaunchJournal

NOT_OPEN = re.compile(r"launch journal .* is not open")


def opened(path: Path) -> LaunchJournal:
    journal = LaunchJournal(path)
    journal.open()
    return journal


def reopened(journal: LaunchJournal) -> LaunchJournal:
    """Stop this process's journal and open the file again, as the next process would."""
    journal.close()
    return opened(journal.path)


def live(journal: LaunchJournal, universe: set[str]) -> set[str]:
    """The live names among `universe`; also checks that `len` counts exactly those."""
    names = {n for n in universe if n in journal}
    assert len(journal) == len(names), "the journal holds names outside the universe"
    return names


def replay(path: Path) -> set[str]:
    """The live names the file means, for files whose every line is complete."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"torn last line: {data[-40:]!r}"
    names: set[str] = set()
    for line in data.decode().split("\n")[:-1]:
        assert line[:1] in ("+", "-"), f"not a journal line: {line!r}"
        (names.add if line[0] == "+" else names.discard)(line[1:])
    return names


def tmp_of(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


# ---------------------------------------------------------------- 1. across a close and reopen


def test_live_names_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "data" / "launches.journal"  # the data dir does not exist yet
    universe = {"r1", "r1-2", "r2", "r3"}
    j = opened(path)
    assert live(j, universe) == set()
    j.mark("r1")
    j.mark("r1-2")
    j.mark("r2")
    j.forget(["r2"])
    assert live(j, universe) == {"r1", "r1-2"}

    j = reopened(j)
    assert live(j, universe) == {"r1", "r1-2"}

    j.forget(["r1", "r1-2"])
    j.mark("r2")  # forgotten once, marked again: live again
    j.mark("r3")
    j = reopened(j)
    assert live(j, universe) == {"r2", "r3"}
    assert replay(path) == {"r2", "r3"}


def test_the_same_object_can_be_closed_and_opened_again(tmp_path: Path) -> None:
    j = opened(tmp_path / "launches.journal")
    j.mark("a")
    j.close()
    j.open()
    j.mark("b")
    j.forget(["a"])
    assert live(reopened(j), {"a", "b"}) == {"b"}


def test_a_crash_without_close_loses_nothing(tmp_path: Path) -> None:
    """No fsync and no close: what `os.write` returned for is what the next process sees."""
    path = tmp_path / "launches.journal"
    j = opened(path)
    for n in ("a", "b", "c"):
        j.mark(n)
    j.forget(["b"])
    # the process dies here: no close(); the next one opens the same file
    assert live(opened(path), {"a", "b", "c"}) == {"a", "c"}


# ---------------------------------------------------------------- 2. a torn last line
#
# `mark` writes `+name\n` in one os.write before the attempt is handed over, `forget` writes its `-`
# lines after the run's end is committed. A crash of jobwire cannot tear a write that returned; a
# torn last line comes from a power loss (or a write cut short, see below). So:
#  - `+name` lacking only its newline: the attempt may have been handed over → live (resumed: the
#    target adopts it or reports it lost; never launched twice);
#  - `+` with a cut-off name: a name no attempt has (run ids are a prefix + 23 hex digits), inert;
#  - `-name` cut anywhere: the run's end is already committed, so whatever it leaves live is never
#    asked about (`was_launched` is only asked for active runs);
#  - anything else (zeros after a power loss): ignored.


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"+a\n+abc", {"a", "abc"}, id="complete-plus-without-newline"),
        pytest.param(b"+a\n+r0123456789\n+r01234", {"a", "r0123456789", "r01234"}, id="cut-off-plus"),
        pytest.param(b"+a\n+", {"a", ""}, id="plus-sign-only"),
        pytest.param(b"+a\n+abc\n-abc", {"a"}, id="complete-minus-without-newline"),
        pytest.param(b"+a\n+abc\n-ab", {"a", "abc"}, id="cut-off-minus"),
        pytest.param(b"+a\n+abc\n-", {"a", "abc"}, id="minus-sign-only"),
        pytest.param(b"+a\n\x00\x00\x00\x00", {"a"}, id="zeros"),
    ],
)
def test_a_torn_last_line_is_read_as_it_reads_and_swallows_nothing(
    tmp_path: Path, content: bytes, expected: set[str]
) -> None:
    path = tmp_path / "launches.journal"
    path.write_bytes(content)
    universe = {"a", "abc", "ab", "", "r0123456789", "r01234", "x"}
    j = opened(path)
    assert live(j, universe) == expected
    assert replay(path) == expected  # rewritten on open: every line ended

    j.mark("x")  # lands on its own line, not glued to the torn one
    assert live(reopened(j), universe) == expected | {"x"}
    assert replay(path) == expected | {"x"}


class _ShortWrites:
    """`os` for launches.py whose `write` obeys a script: an int n writes only the first n bytes,
    an exception is raised, None writes everything. After the script, writes are whole."""

    def __init__(self, *script: int | OSError | None) -> None:
        self.script = list(script)

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        step = self.script.pop(0) if self.script else None
        if isinstance(step, OSError):
            raise step
        return os.write(fd, data if step is None else data[:step])


def test_a_short_write_is_finished_before_mark_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full: os.write may write part of the line. `mark` returning means the attempt is handed
    over, so its whole line must be in the file, and the next line must not run into it."""
    path = tmp_path / "launches.journal"
    j = opened(path)
    # mark: 3 bytes, then 2 more, then the rest; mark: whole; forget: 1 byte, then the rest
    shorts = _ShortWrites(3, 2, None, None, 1)
    monkeypatch.setattr(launches, "os", shorts)
    j.mark("r0123456789")
    j.mark("rABCDEFGHIJ")
    j.forget(["r0123456789"])
    monkeypatch.undo()
    assert replay(path) == {"rABCDEFGHIJ"}
    assert live(opened(path), {"r0123456789", "rABCDEFGHIJ"}) == {"rABCDEFGHIJ"}
    assert shorts.script == []


def test_a_failed_write_leaves_no_torn_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Part of the line written, then ENOSPC: `mark`/`forget` fail (nothing is handed over, the run
    is not forgotten), and the file is as before, so the next append is read correctly."""
    path = tmp_path / "launches.journal"
    universe = {"a", "b", "c", "d"}
    j = opened(path)
    j.mark("a")
    j.mark("b")
    before = path.read_bytes()
    full = OSError(errno.ENOSPC, "No space left on device")

    shorts = _ShortWrites(1, full)
    monkeypatch.setattr(launches, "os", shorts)
    with pytest.raises(OSError, match="No space left"):
        j.mark("c")
    assert shorts.script == []
    assert "c" not in j
    assert path.read_bytes() == before

    shorts = _ShortWrites(2, full)
    monkeypatch.setattr(launches, "os", shorts)
    with pytest.raises(OSError, match="No space left"):
        j.forget(["a", "b"])
    assert shorts.script == []
    assert live(j, universe) == {"a", "b"}
    assert path.read_bytes() == before

    monkeypatch.undo()  # space again
    j.mark("d")
    j.forget(["a"])
    assert replay(path) == {"b", "d"}
    assert live(reopened(j), universe) == {"b", "d"}


# ---------------------------------------------------------------- 3. compaction


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_compaction_rewrites_only_live_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launches, "COMPACT_MIN", 5)
    monkeypatch.setattr(launches, "COMPACT_FACTOR", 4)
    path = tmp_path / "launches.journal"
    names = [f"r{i:02d}" for i in range(50)]
    universe = {*names, "new"}
    j = opened(path)
    for n in names:
        j.mark(n)
    for n in names[:39]:  # one run's end at a time, as dispatch does
        j.forget([n])
    assert len(_lines(path)) == 50 + 39  # 39 dead < 4 × 11 live: appended, not compacted
    size = path.stat().st_size

    j.forget([names[39]])  # 40 dead ≥ 4 × 10 live, and ≥ COMPACT_MIN: compacted
    assert sorted(_lines(path)) == [f"+{n}" for n in names[40:]]
    assert path.stat().st_size < size
    assert not tmp_of(path).exists()

    j.forget([names[40]])  # counting starts again: appended
    assert len(_lines(path)) == 11
    j.mark("new")  # appends go to the new file, not the replaced one
    assert live(j, universe) == {*names[41:], "new"}
    assert replay(path) == {*names[41:], "new"}
    assert live(reopened(j), universe) == {*names[41:], "new"}


def test_no_compaction_below_compact_min(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launches, "COMPACT_MIN", 5)
    monkeypatch.setattr(launches, "COMPACT_FACTOR", 0)
    path = tmp_path / "launches.journal"
    j = opened(path)
    for n in "abcdef":
        j.mark(n)
    j.forget(list("abcd"))  # 4 dead: not yet
    assert len(_lines(path)) == 10
    j.forget(["e"])  # 5 dead
    assert _lines(path) == ["+f"]


def test_opening_compacts_and_ignores_a_stale_tmp(tmp_path: Path) -> None:
    """A crash mid-compaction leaves `.tmp` beside an intact journal: it is not read, and goes."""
    path = tmp_path / "launches.journal"
    path.write_bytes(b"".join(b"+r%d\n-r%d\n" % (i, i) for i in range(100)) + b"+keep\n")
    tmp_of(path).write_bytes(b"+ghost\n+keep\n")
    size = path.stat().st_size
    j = opened(path)
    assert live(j, {"keep", "ghost", "r1"}) == {"keep"}
    assert _lines(path) == ["+keep"]
    assert path.stat().st_size < size
    assert not tmp_of(path).exists()


# ---------------------------------------------------------------- 4. the previous design's files


def test_legacy_marker_files_are_adopted_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "launches.journal"
    legacy = tmp_path / "launched"
    legacy.mkdir()
    for n in ("r1", "r2-3"):
        (legacy / n).touch()
    path.write_bytes(b"+r4\n+r5\n-r5\n")
    universe = {"r1", "r2-3", "r4", "r5"}

    j = opened(path)
    assert live(j, universe) == {"r1", "r2-3", "r4"}
    assert not legacy.exists()
    assert replay(path) == {"r1", "r2-3", "r4"}  # now in the journal itself

    j.forget(["r1"])  # forgettable like any other, and not adopted again
    assert live(reopened(j), universe) == {"r2-3", "r4"}


def test_legacy_marker_files_without_a_journal(tmp_path: Path) -> None:
    legacy = tmp_path / "launched"
    legacy.mkdir()
    (legacy / "r9").touch()
    path = tmp_path / "launches.journal"
    j = opened(path)
    assert live(j, {"r9"}) == {"r9"}
    assert not legacy.exists()
    assert live(reopened(j), {"r9"}) == {"r9"}


def test_legacy_marker_files_stay_until_the_journal_holds_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If writing the journal fails (disk full, a crash), the old files are still there next time."""
    legacy = tmp_path / "launched"
    legacy.mkdir()
    (legacy / "r9").touch()
    path = tmp_path / "launches.journal"
    path.write_bytes(b"+r4\n")

    def full(self: LaunchJournal) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LaunchJournal, "_rewrite", full)
    with pytest.raises(OSError, match="No space left"):
        opened(path)
    monkeypatch.undo()
    assert (legacy / "r9").exists()
    assert live(opened(path), {"r4", "r9"}) == {"r4", "r9"}


# ---------------------------------------------------------------- 5. against a set


NAMES = ["r1", "r1-2", "r2", "", "-x", "+y", "é ü", "a\rb", "a-"]
OPS = st.one_of(
    st.tuples(st.just("mark"), st.sampled_from(NAMES)),
    st.tuples(st.just("forget"), st.lists(st.sampled_from(NAMES), max_size=4)),
    st.tuples(st.just("reopen"), st.booleans()),  # True: closed first; False: a crash
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(OPS, max_size=40), compact_min=st.integers(1, 4), compact_factor=st.integers(0, 4))
def test_any_interleaving_keeps_the_live_set_of_a_set(
    monkeypatch: pytest.MonkeyPatch, ops: list[tuple[str, object]], compact_min: int, compact_factor: int
) -> None:
    monkeypatch.setattr(launches, "COMPACT_MIN", compact_min)
    monkeypatch.setattr(launches, "COMPACT_FACTOR", compact_factor)
    universe = set(NAMES)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "launches.journal"
        model: set[str] = set()
        j = opened(path)
        for op, arg in ops:
            if op == "mark":
                assert isinstance(arg, str)
                j.mark(arg)
                model.add(arg)
            elif op == "forget":
                assert isinstance(arg, list)
                j.forget(arg)
                model.difference_update(arg)
            elif arg:
                j = reopened(j)
            else:
                j = opened(path)  # the old one is simply abandoned
            assert live(j, universe) == model
            assert replay(path) == model  # a crash now would leave exactly this
            assert not tmp_of(path).exists()
        j.close()
        assert live(opened(path), universe) == model


# ---------------------------------------------------------------- 6. nothing written for nothing


def test_marking_a_live_name_and_forgetting_unknown_ones_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "launches.journal"
    j = opened(path)
    j.mark("a")
    size = path.stat().st_size
    j.mark("a")
    assert path.stat().st_size == size
    j.forget(["zz", "b"])
    j.forget([])
    assert path.stat().st_size == size

    j.forget(["zz", "a", "b"])  # only the live one is written
    assert path.stat().st_size == size + len("-a\n")
    j.forget(["a"])  # already forgotten
    assert path.stat().st_size == size + len("-a\n")

    j.mark("c")
    j = reopened(j)
    size = path.stat().st_size
    j.mark("c")  # live from the file: still nothing to write
    assert path.stat().st_size == size


# ---------------------------------------------------------------- 7. a closed journal


@pytest.mark.parametrize(
    "use",
    [
        pytest.param(lambda j: j.mark("b"), id="mark"),
        pytest.param(lambda j: j.forget(["a"]), id="forget"),
    ],
)
def test_a_closed_journal_refuses_to_write(tmp_path: Path, use: Callable[[LaunchJournal], None]) -> None:
    path = tmp_path / "launches.journal"
    j = opened(path)
    j.mark("a")
    j.close()
    j.close()  # twice is harmless
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match=NOT_OPEN):
        use(j)
    assert live(j, {"a", "b"}) == {"a"}  # the failed call changed nothing
    assert path.read_bytes() == before


def test_a_journal_never_opened_refuses_to_write(tmp_path: Path) -> None:
    j = LaunchJournal(tmp_path / "launches.journal")
    with pytest.raises(RuntimeError, match=NOT_OPEN):
        j.mark("a")
    assert "a" not in j
    assert not (tmp_path / "launches.journal").exists()
