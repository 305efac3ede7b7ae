"""The installation's key for callback tokens: `<data_dir>/secret.key`, 32 random bytes.

A callback token is HMAC-SHA256(key, run id), so whoever knows the key (or can make jobwire use a
known one, such as the empty key) can forge the token of any run whose id they know. Hence:

* the key is written atomically: a temporary file in the same folder, written and fsynced, then
  linked into place (`os.link`: another jobwire starting at the same moment keeps the first key)
  and the folder fsynced. A full disk leaves no key at all — never a short one.
* on load, a key of the wrong size is refused with a message naming the file; a 0-byte file can
  only be the torn first write of an older jobwire (which wrote it in place), so it is replaced by
  a new key with a warning in the log (tokens made with the empty key then stop working — the point);
* a key file any user may read (mode o+r/w) is refused, like ssh refuses such a private key: the fix
  is `chmod 600`, or deleting the file if someone else may have read it. Group access is only
  warned about: Kubernetes makes every file on a volume group-readable for the pod's `fsGroup`
  (deploy/kubernetes does), whose only member is jobwire's user.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

import structlog

from jobwire.store import Store

log = structlog.get_logger(__name__)

KEY_FILE = "secret.key"
KEY_BYTES = 32
SHARED_NAME = "callback_key"
"""The key's name in a shared store (`Store.shared_secret`): several replicas, one key."""

_ROTATE_HINT = "delete it to make a new key (the callback tokens of runs in flight then stop working)"


class SecretKeyError(RuntimeError):
    """`secret.key` cannot be used or written; the message names the file and what to do."""


def load_secret(data_dir: Path) -> bytes:
    """The key in `data_dir/secret.key`, made on first use. Raises `SecretKeyError`."""
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _create(path)
    except OSError as exc:
        raise SecretKeyError(f"cannot read {path}: {exc.strerror}: {_hint(exc, path)}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretKeyError(f"{path} is not a regular file: move it away; jobwire then makes a new key")
        if st.st_size == 0:
            log.warning(
                "secret.key was empty (a first start on a full disk?): a new key replaces it; "
                "callback tokens made with the empty key no longer work",
                file=str(path),
            )
            return _create(path, replace=True)
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o007:
            raise SecretKeyError(
                f"{path} can be read by other users (mode {mode:04o}): run "
                f"`chmod 600 {path}`, or, if someone else may have read it, {_ROTATE_HINT}"
            )
        if mode & 0o070:
            log.warning(
                "secret.key is accessible to its group (a Kubernetes fsGroup volume does this): "
                "make sure only jobwire's user is in that group, or chmod 600 it",
                file=str(path),
                mode=f"{mode:04o}",
                gid=st.st_gid,
            )
        key = _read_all(fd, KEY_BYTES + 1)
    except OSError as exc:
        raise SecretKeyError(f"cannot read {path}: {exc.strerror}: {_hint(exc, path)}") from exc
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise SecretKeyError(
            f"{path} holds {st.st_size} bytes, not the {KEY_BYTES} of a key jobwire wrote: restore it "
            f"from a backup, or {_ROTATE_HINT}"
        )
    return key


class CallbackTokens:
    """The callback token of each run: HMAC-SHA256(key, run id) with the key of `secret.key`,
    loaded by `load` when the engine starts (until then the key is empty)."""

    def __init__(self, store: Store | None = None) -> None:
        self._key = b""
        self._store = store

    def load(self, data_dir: Path) -> None:
        """The key of `secret.key` (made on first use); nothing for a shared store (`load_shared`)."""
        if self._store is None or not self._store.shared:
            self._key = load_secret(data_dir)  # raises SecretKeyError

    async def load_shared(self, data_dir: Path) -> None:
        """Several replicas on one store: the key every one of them uses, kept in the store (made
        once by the first replica; one that had a `secret.key` gives it, so the tokens of its runs
        in flight keep working). Raises `SecretKeyError` for a stored key of the wrong size."""
        store = self._store
        if store is None or not store.shared:
            return  # one process: its `secret.key`, loaded by `load`
        initial = load_secret(data_dir) if (data_dir / KEY_FILE).exists() else None
        key = await store.shared_secret(SHARED_NAME, initial)
        if key is None:  # the store keeps none after all: this replica's file
            self._key = load_secret(data_dir)
            return
        if len(key) != KEY_BYTES:
            raise SecretKeyError(
                f"the callback key stored in the database ({SHARED_NAME!r} in jobwire_settings) holds "
                f"{len(key)} bytes, not {KEY_BYTES}: delete that row to make a new key (the callback "
                "tokens of runs in flight then stop working)"
            )
        self._key = key

    def token(self, run_id: str) -> str:
        return hmac.new(self._key, run_id.encode(), hashlib.sha256).hexdigest()

    def check(self, run_id: str, token: str) -> bool:
        """Whether `token` is the run's callback token (compared in constant time)."""
        return hmac.compare_digest(token.encode(), self.token(run_id).encode())


def _create(path: Path, replace: bool = False) -> bytes:
    """Write a new key atomically; if another process linked one first, use that one."""
    key = secrets.token_bytes(KEY_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(key)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if replace:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return load_secret(path.parent)  # another jobwire made it a moment ago
            _fsync_dir(path.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except OSError as exc:
        raise SecretKeyError(f"cannot write {path}: {exc.strerror}: {_hint(exc, path)}") from exc
    log.info("made a new secret.key for callback tokens", file=str(path))
    return key


def _read_all(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a folder; the rename is still atomic
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _hint(exc: OSError, path: Path) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free space on the disk holding {path.parent} and start again"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"make {path.parent} writable by this user, or set JOBWIRE_DATA_DIR to a folder that is"
    return "check the file and its folder (JOBWIRE_DATA_DIR)"
