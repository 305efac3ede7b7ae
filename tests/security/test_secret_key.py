"""Defect 5: `secret.key` (the key of callback tokens) is written atomically and never used when
it is not a key jobwire wrote — an empty key would let anyone who knows a run id forge its token."""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from jobwire.config import Settings
from jobwire.engine import Engine
from jobwire.engine.secret import KEY_BYTES, SecretKeyError, load_secret
from tests.support.tmpfs import fill, small_tmpfs


def engine_for(data_dir: Path) -> Engine:
    return Engine(Settings(data_dir=data_dir, database_url="memory://"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "secret" in p.name)


async def test_first_start_writes_a_private_key_of_the_right_size(data_dir: Path) -> None:
    eng = engine_for(data_dir)
    await eng.start()
    await eng.stop()
    key = data_dir / "secret.key"
    assert len(key.read_bytes()) == KEY_BYTES
    assert key.stat().st_mode & 0o777 == 0o600
    assert leftovers(data_dir) == ["secret.key"]
    assert load_secret(data_dir) == key.read_bytes()  # the next start reads the same key


async def test_empty_key_is_replaced_with_a_warning_and_old_tokens_stop_working(data_dir: Path) -> None:
    (data_dir / "secret.key").write_bytes(b"")
    eng = engine_for(data_dir)
    with structlog.testing.capture_logs() as logs:
        await eng.start()
    try:
        key = (data_dir / "secret.key").read_bytes()
        assert len(key) == KEY_BYTES
        forged = hmac.new(b"", b"r-some-run", hashlib.sha256).hexdigest()
        assert eng.callback_token("r-some-run") != forged
        warnings = [e for e in logs if e["log_level"] == "warning" and "secret.key was empty" in e["event"]]
        assert warnings and warnings[0]["file"] == str(data_dir / "secret.key")
        assert leftovers(data_dir) == ["secret.key"]
    finally:
        await eng.stop()


@pytest.mark.parametrize("size", [1, 16, 31, 33, 4096])
async def test_key_of_the_wrong_size_is_refused_naming_the_file(data_dir: Path, size: int) -> None:
    path = data_dir / "secret.key"
    path.write_bytes(b"k" * size)
    path.chmod(0o600)
    with pytest.raises(SecretKeyError) as caught:
        await engine_for(data_dir).start()
    message = str(caught.value)
    assert str(path) in message and f"holds {size} bytes" in message
    assert "restore it from a backup, or delete it" in message
    assert path.read_bytes() == b"k" * size  # left alone for the operator


def test_key_readable_by_others_is_refused(data_dir: Path) -> None:
    path = data_dir / "secret.key"
    path.write_bytes(b"k" * KEY_BYTES)
    path.chmod(0o644)
    with pytest.raises(SecretKeyError, match=r"can be read by other users \(mode 0644\): run `chmod 600 "):
        load_secret(data_dir)
    path.chmod(0o600)
    assert load_secret(data_dir) == b"k" * KEY_BYTES


def test_key_readable_by_its_group_is_used_with_a_warning(data_dir: Path) -> None:
    """Kubernetes adds g+rw for the pod's fsGroup to every file on the volume: warn, do not refuse."""
    path = data_dir / "secret.key"
    path.write_bytes(b"k" * KEY_BYTES)
    path.chmod(0o660)
    with structlog.testing.capture_logs() as logs:
        assert load_secret(data_dir) == b"k" * KEY_BYTES
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["mode"] == "0660" and warning["file"] == str(path)


def test_a_folder_where_the_key_should_be_is_refused(data_dir: Path) -> None:
    (data_dir / "secret.key").mkdir()
    with pytest.raises(SecretKeyError, match="is not a regular file"):
        load_secret(data_dir)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every write fails as on a full disk (the tmpfs test below does it for real)."""

    def no_space(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", no_space)
    yield
    monkeypatch.undo()


def test_enospc_during_the_first_write_leaves_no_key_file(data_dir: Path, full_disk: None) -> None:
    with pytest.raises(SecretKeyError) as caught:
        load_secret(data_dir)
    assert str(caught.value) == (
        f"cannot write {data_dir / 'secret.key'}: No space left on device: "
        f"free space on the disk holding {data_dir} and start again"
    )
    assert leftovers(data_dir) == []


async def test_first_start_on_a_full_tmpfs_leaves_no_partial_key(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", size="64k") as disk:
        data_dir = disk / "data"
        data_dir.mkdir()
        filler = fill(disk)
        with pytest.raises(SecretKeyError, match="No space left on device"):
            await engine_for(data_dir).start()
        assert leftovers(data_dir) == []
        filler.unlink()  # space is back: the next start makes the key
        eng = engine_for(data_dir)
        await eng.start()
        await eng.stop()
        assert len((data_dir / "secret.key").read_bytes()) == KEY_BYTES
