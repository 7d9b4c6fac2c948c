"""write_errors: a write the disk refused is recognised however it arrives; anything else is not."""
import errno
import sqlite3

import pytest
import sqlalchemy as sa

from synth_qwen.write_errors import no_space, write_failure


def full_sqlite_error(tmp_path) -> sqlite3.Error:
    """A real SQLITE_FULL: the database may not grow past its pages (as on a full disk)."""
    conn = sqlite3.connect(tmp_path / "t.db")
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.execute("PRAGMA max_page_count = 3")
    with pytest.raises(sqlite3.OperationalError) as error:
        conn.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 100)
    return error.value


def test_refused_writes_from_files_sqlite_sqlalchemy_and_safetensors(tmp_path):
    disk_full = OSError(errno.ENOSPC, "No space left on device")
    assert write_failure(disk_full) == "No space left on device" and no_space(disk_full)
    sqlite_full = full_sqlite_error(tmp_path)
    assert write_failure(sqlite_full) == "database or disk is full"
    wrapped = sa.exc.OperationalError("COMMIT", {}, sqlite_full)  # what the trace writer raises
    assert write_failure(wrapped) == "database or disk is full"
    rust = RuntimeError("Error while serializing: I/O error: File too large (os error 27)")  # safetensors' words
    assert write_failure(rust) == "File too large" and not no_space(rust)


def test_other_errors_are_not_write_failures():
    assert write_failure(OSError(errno.ECONNREFUSED, "Connection refused")) is None  # a network error
    assert write_failure(sqlite3.OperationalError("no such table: t")) is None
    assert write_failure(ValueError("bad value")) is None
    assert not no_space(OSError(errno.EIO, "Input/output error"))  # refused, but not for want of room
