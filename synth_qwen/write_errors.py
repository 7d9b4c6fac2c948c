"""A write the disk refused (full, over quota, a file-size limit, read-only, an I/O error), recognised
the same way by every stage, whether it came from a file, SQLite or PostgreSQL.

Each stage turns one into a single line saying what is safe and what to run next; anything else
stays a bug with its traceback.
"""
from __future__ import annotations

import errno
import os
import re
import sqlite3

NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # no room: serve answers these with 507
WRITE_ERRNOS = NO_SPACE_ERRNOS | {errno.EIO, errno.EROFS}
SQLITE_WRITE_CODES = {8: "readonly", 10: "ioerr", 13: "full"}  # primary result codes (the low byte)
POSTGRES_WRITE_SQLSTATES = ("53", "58030")  # class 53 insufficient resources (53100 disk full); io_error
RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how safetensors (Rust) reports the OSError it met


def driver_error(error: BaseException) -> BaseException:
    """The database driver's own error inside SQLAlchemy's wrapper (or the error itself)."""
    return getattr(error, "orig", None) or error


def write_failure(error: BaseException) -> str | None:
    """Why `error` is a refused write, in words ("No space left on device", "database or disk is
    full"), or None when it is something else."""
    error = driver_error(error)
    if isinstance(error, OSError) and error.errno in WRITE_ERRNOS:
        return error.strerror or errno.errorcode[error.errno]
    if isinstance(error, sqlite3.Error) and (getattr(error, "sqlite_errorcode", 0) & 0xFF) in SQLITE_WRITE_CODES:
        return str(error)
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if isinstance(sqlstate, str) and sqlstate.startswith(POSTGRES_WRITE_SQLSTATES):
        return str(error).strip().splitlines()[0]
    rust = RUST_OS_ERROR.search(str(error))
    if rust and int(rust.group(1)) in WRITE_ERRNOS:
        return os.strerror(int(rust.group(1)))
    return None


def no_space(error: BaseException) -> bool:
    """The disk (or a quota, or a file-size limit) had no room for a file being written."""
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS
