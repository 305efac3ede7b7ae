"""Defect 11 (job files): a hostile or broken job file gets one clear line naming the file, the
line and what to do — from `load_path`, `jobwire check`, `jobwire serve` and a reload — never a
traceback, a hang or a MemoryError (a 1.6 MB alias bomb used to take 109 s and then fail)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.jobfile import MAX_DEPTH, MAX_FILE_BYTES, JobFileError, check_paths, load_path

GOOD = 'jobs:\n  - name: ok\n    triggers: [{type: api}]\n    target: {type: local, command: ["true"]}\n'


def nul_byte() -> bytes:
    return b'jobs:\n  - name: a\x00b\n    target: {type: local, command: ["true"]}\n'


def not_utf8() -> bytes:
    return b"jobs:\n  - name: caf\xe9\n"


def deep_sequence() -> bytes:
    return b"jobs: " + b"[" * 100_000 + b"]" * 100_000 + b"\n"


def deep_mapping() -> bytes:
    return b"x: " + b"{a: " * 100_000 + b"1" + b"}" * 100_000 + b"\n"


def laughs() -> bytes:
    """The billion laughs: 10 levels of 9 aliases each — 9^10 values from 700 bytes."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 11)]
    return ("\n".join(lines) + "\njobs: []\n").encode()


def string_bomb() -> bytes:
    """A valid job whose payload aliases one 400 kB string 50 times: 20 MB of definition from
    400 kB (200,000 aliases of a 1 MB string made a 1.2 MB file that expanded to 200 GB)."""
    big = "x" * 400_000
    refs = ",".join(["*s"] * 50)
    return (
        "jobs:\n  - name: bomb\n    triggers: [{type: api}]\n"
        "    target:\n      type: http\n      url: http://example.com/\n"
        f'      payload: {{s: &s "{big}", l: [{refs}]}}\n'
    ).encode()


def merge_bomb() -> bytes:
    """Nested merge keys double at each level; PyYAML flattens them before anything is counted."""
    m = "&m0 {a: 1, b: 2}"
    for k in range(1, 40):
        m = f"&m{k} {{<<: [{m}, *m{k - 1}], k{k}: 1}}"
    return f"jobs: []\nx: {m}\n".encode()


def too_large() -> bytes:
    return b"# padding\n" * (MAX_FILE_BYTES // 10 + 1)


SIZE = "too large once aliases and merge keys are expanded (more than {}): write the data out instead of repeating anchors"
CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "nul": (
        nul_byte,
        "{f}:2: character U+0000 (column 12) is not allowed in a YAML file: remove it "
        "(a job file is text; write control characters as escapes in a double-quoted string)",
    ),
    "utf8": (not_utf8, "{f}:2: not UTF-8: byte 0xe9 at column 14 (byte offset 19): save the file as UTF-8"),
    "deep-seq": (
        deep_sequence,
        f"{{f}}:1: nested deeper than {MAX_DEPTH} levels (column {MAX_DEPTH + 6}): flatten the data",
    ),
    "deep-map": (
        deep_mapping,
        f"{{f}}:1: nested deeper than {MAX_DEPTH} levels (column {4 * MAX_DEPTH - 3}): flatten the data",
    ),
    "laughs": (laughs, "{f}:1: " + SIZE.format("200,000 values")),
    "strings": (string_bomb, "{f}:7: " + SIZE.format("16,777,216 characters")),
    "merges": (merge_bomb, "{f}:2: " + SIZE.format("200,000 values")),
    "large": (
        too_large,
        "{f}: larger than 4 MiB, the most a job file may be: split the jobs into several files in a folder",
    ),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    folder = tmp_path_factory.mktemp("bad")
    out = {}
    for name, (make, expected) in CASES.items():
        path = folder / f"{name}.yaml"
        path.write_bytes(make())
        out[name] = (path, expected.format(f=path))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_load_path_raises_one_clear_error(bad_files: dict[str, tuple[Path, str]], case: str) -> None:
    path, expected = bad_files[case]
    t0 = time.monotonic()
    with pytest.raises(JobFileError) as caught:
        load_path(path)
    assert [str(e) for e in caught.value.errors] == [expected]
    assert time.monotonic() - t0 < 30  # generous: each takes well under a second


def test_a_good_file_beside_bad_ones_still_loads(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_bytes(nul_byte())
    jobs, errors = check_paths([tmp_path])
    assert [j.name for j in jobs] == ["ok"]
    assert len(errors) == 1 and errors[0].source == str(tmp_path / "bad.yaml")


def test_an_unreadable_folder_is_an_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "jobs"
    folder.mkdir()

    def denied(self: Path, pattern: str) -> list[Path]:  # root reads any folder: simulate the error
        raise PermissionError(13, "Permission denied", str(self / "private"))

    monkeypatch.setattr(Path, "rglob", denied)
    with pytest.raises(JobFileError) as caught:
        load_path(folder)
    assert str(caught.value) == (
        f"{folder}: cannot list the folder: Permission denied ({folder / 'private'}): make it readable"
    )


def jobwire(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("JOBWIRE_")}
    full.update(JOBWIRE_LOG_LEVEL="error", **env)
    return subprocess.run(
        [sys.executable, "-m", "jobwire", *args], env=full, capture_output=True, text=True, timeout=120
    )


def test_check_prints_one_line_per_bad_file_and_exits_1(bad_files: dict[str, tuple[Path, str]]) -> None:
    paths = [str(p) for p, _ in bad_files.values()]
    done = jobwire("check", *paths)
    assert done.returncode == 1
    expected = [e for _, e in bad_files.values()] + [f"{len(CASES)} errors in job files"]
    assert done.stdout.splitlines() == expected
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("case", ["nul", "deep-seq", "laughs"])
def test_serve_refuses_to_start_with_one_clear_line(
    bad_files: dict[str, tuple[Path, str]], tmp_path: Path, case: str
) -> None:
    path, expected = bad_files[case]
    done = jobwire("serve", JOBWIRE_JOBS=str(path), JOBWIRE_DATA_DIR=str(tmp_path / "data"), JOBWIRE_PORT="9")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [expected, "error: job files have errors; jobwire did not start"]


async def test_reload_gets_the_same_clear_error_and_keeps_the_jobs(
    bad_files: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(GOOD)
    engine = Engine(Settings(data_dir=tmp_path / "data", database_url="memory://", jobs=[jobs]))
    await engine.start()
    try:
        for case in ("nul", "utf8", "deep-map", "laughs", "merges"):
            jobs.write_bytes(bad_files[case][0].read_bytes())
            expected = bad_files[case][1].replace(str(bad_files[case][0]), str(jobs))
            assert await engine.reload_files() == [expected]
            assert list(engine.jobs) == ["ok"]
    finally:
        await engine.stop()
