"""Before any expensive work: can every output be written, is the trace DB usable, can serve listen?

Each check raises `SettingsError` (one line naming the variable: exit 2, the value is wrong) or
`Unreachable` (the value may be right but its server does not answer now: exit 1). They look and
probe but create nothing, so a stage stopped here leaves nothing behind. `ready_or_exit` runs the
checks a stage needs and turns a failure into its line and exit status.
"""
from __future__ import annotations

import os
import socket
import sqlite3
import sys
import tempfile
from pathlib import Path

from synth_qwen.settings import SettingsError, exit_usage, redact

SQLITE_HEADER = b"SQLite format 3\x00"
CONNECT_TIMEOUT_S = 10  # an unreachable PostgreSQL host fails the check in this long, not minutes


class Unreachable(Exception):
    """A database server that does not answer (or refuses the login); the message says which."""


def invalid(variable: str, value, why: str) -> SettingsError:
    return SettingsError(f"{variable}={redact(str(value))!r} is invalid: {why}")


def nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    return path


def creatable_in(variable: str, value, path: Path) -> None:
    """`path` (missing) could be created: its nearest existing ancestor is a folder we may write in."""
    ancestor = nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise invalid(variable, value, f"{ancestor} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=ancestor).close()  # a probe that leaves no name behind
    except OSError as error:
        raise invalid(variable, value, f"cannot write in {ancestor} ({error.strerror})") from None


def writable_file(variable: str, path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir():
        raise invalid(variable, path, "it is a folder; name a file")
    if not path.exists():
        return creatable_in(variable, path, path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))  # opened, not changed
    except OSError as error:
        raise invalid(variable, path, f"cannot write it ({error.strerror})") from None


def writable_dir(variable: str, path: Path | None) -> None:
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise invalid(variable, path, "it is a file; name a folder")
    if not path.exists():
        return creatable_in(variable, path, path / "x")
    try:
        tempfile.TemporaryFile(dir=path).close()
    except OSError as error:
        raise invalid(variable, path, f"cannot write in it ({error.strerror})") from None


def existing_dir(variable: str, path: Path | None) -> None:
    """A folder we read from (not create) exists."""
    if path is not None and not path.is_dir():
        raise invalid(variable, path, "no such folder")


def utf8_text(variable: str, path: Path | None) -> None:
    """An existing file we read as text (a state file) is UTF-8."""
    if path is None or not path.is_file():
        return
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise invalid(variable, path, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise invalid(variable, path, f"cannot read it ({error.strerror})") from None


# ---------------------------------------------------------------------------------------
# The trace DB (CRAFTER_DB_URL)

def trace_db(url: str, create: bool = True, variable: str = "CRAFTER_DB_URL") -> None:
    """A SQLite file that is (or can become) a trace DB, or a PostgreSQL server that lets us in.
    create=False: a missing SQLite file is left to the caller (it says what writes one)."""
    from synth_qwen.tracing import sqlite_path  # sqlalchemy: only for stages that use a DB

    path = sqlite_path(url)
    if path is None:
        return reach_postgres(url, variable, create)
    if path.is_dir():
        raise invalid(variable, url, f"{path} is a folder, not a SQLite file")
    if not path.exists():
        return creatable_in(variable, url, path) if create else None
    sqlite_file(variable, url, path, writable=create)


def sqlite_file(variable: str, url: str, path: Path, writable: bool) -> None:
    """Its header says SQLite, its size matches the header, and its schema can be read."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(100)
        if writable:
            os.close(os.open(path, os.O_RDWR))
    except OSError as error:
        raise invalid(variable, url, f"cannot {'write' if writable else 'read'} {path} ({error.strerror})") from None
    if not header:
        return  # an empty file: SQLite makes it a new database
    if not header.startswith(SQLITE_HEADER):
        raise invalid(variable, url, f"{path} is not a SQLite database")
    if len(header) == 100 and not Path(f"{path}-wal").exists():  # with a WAL the file may lag its header
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        pages, valid_for, changes = (int.from_bytes(header[i:i + 4], "big") for i in (28, 92, 24))
        if valid_for == changes and pages and path.stat().st_size < page_size * pages:
            raise invalid(variable, url, f"{path} is truncated ({path.stat().st_size:,} of "
                                         f"{page_size * pages:,} bytes): restore it or start a new file")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                conn.execute(f'SELECT * FROM "{table}" LIMIT 1').fetchall()  # each table's first page
        conn.close()
    except sqlite3.DatabaseError as error:
        raise invalid(variable, url, f"{path} cannot be read as SQLite ({error})") from None


def reach_postgres(url: str, variable: str, create: bool = False) -> None:
    """The server lets us in; with `create`, the trace tables exist or this role may create them."""
    import sqlalchemy as sa

    from synth_qwen.tracing import session_traces, sqlalchemy_url

    engine = sa.create_engine(sqlalchemy_url(url), connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            if create and not sa.inspect(conn).has_table(session_traces.name) and not conn.execute(sa.text(
                    "SELECT has_schema_privilege(current_schema(), 'CREATE')")).scalar():
                role, schema = conn.execute(sa.text("SELECT current_user, current_schema()")).one()
                raise Unreachable(f"the trace DB {variable}={redact(url)} has no trace tables and role {role} may "
                                  f"not create tables in schema {schema}: GRANT CREATE ON SCHEMA {schema} TO "
                                  f"{role}, or use a database the role owns")
    except sa.exc.DBAPIError as error:
        reason = " ".join(str(error.orig).split())  # psycopg's message, on one line
        raise Unreachable(f"cannot connect to the trace DB {variable}={redact(url)} ({redact(reason)}): "
                          f"start PostgreSQL or fix {variable}") from None
    except ImportError:
        raise SettingsError(f"{variable}={redact(url)!r} needs the PostgreSQL driver: "
                            f"pip install 'synth_qwen[postgres]'") from None
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------
# serve

def listenable(host: str, port: int) -> None:
    """SERVE_HOST resolves to an address of this machine and SERVE_PORT is free there."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise invalid("SERVE_HOST", host, f"the name does not resolve ({error.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own socket does
        try:
            probe.bind(address)
        except OSError as error:
            raise cannot_listen(host, port, error) from None


def cannot_listen(host: str, port: int, error: OSError) -> SettingsError:
    return SettingsError(f"cannot listen on {host}:{port} ({error.strerror}): choose another SERVE_PORT "
                         f"(0 = any free port) or a SERVE_HOST of this machine")


# ---------------------------------------------------------------------------------------

def ready_or_exit(db: tuple[str, bool] | None = None, files: dict[str, Path | None] | None = None,
                  dirs: dict[str, Path | None] | None = None, state_files: dict[str, Path | None] | None = None,
                  inputs: dict[str, Path | None] | None = None) -> None:
    """Run a stage's checks: input folders, state files, output files and folders, the DB last.
    Exit 2 on a bad value, 1 on an unreachable DB."""
    try:
        for variable, path in (inputs or {}).items():
            existing_dir(variable, path)
        for variable, path in (state_files or {}).items():
            utf8_text(variable, path)
            writable_file(variable, path)
        for variable, path in (files or {}).items():
            writable_file(variable, path)
        for variable, path in (dirs or {}).items():
            writable_dir(variable, path)
        if db:
            trace_db(*db)
    except SettingsError as error:
        exit_usage(str(error))
    except Unreachable as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1)
