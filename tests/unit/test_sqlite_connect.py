"""The SQLite store's connection settings that the bench rows depend on."""

from __future__ import annotations

from pathlib import Path

from jobwire.store.sqlite import WAL_AUTOCHECKPOINT, connect


def test_a_connection_is_wal_full_sync_and_checkpoints_every_ten_thousand_pages(tmp_path: Path) -> None:
    conn = connect(tmp_path / "jobwire.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: every run durable
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == WAL_AUTOCHECKPOINT == 10_000
    finally:
        conn.close()
