"""Files replaced whole or not at all: readers see the old file or the complete new one.

Bytes go to a hidden temp file beside the target (`.<name>.<pid>.<random>.partial`, same folder so
the rename stays on one filesystem), are flushed to disk, then the temp is renamed over the target.
A crash or an error mid-write leaves the target as it was. Three ways in, one mechanism:
`AtomicFile` streams text, `write_text_atomic` writes a string, `atomic_path` lends the temp's name to
a writer that wants a file name (imageio).
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temp_beside(path: Path, suffix: str = "") -> Path:
    """The hidden temp for `path`; `suffix` ends the name, for writers that pick a format by it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid + random: two writers of the same target (processes or threads) never share a temp file
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial{suffix}")


def put_in_place(temp: Path, path: Path) -> None:
    """fsync, then rename: the data is on disk before the name points at it."""
    with open(temp, "rb") as written:
        os.fsync(written.fileno())
    os.replace(temp, path)


class AtomicFile:
    """Stream text with write(); commit() puts it in place; discard() drops it (a no-op after commit)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.temp = temp_beside(self.path)
        self.handle = open(self.temp, "w", encoding="utf-8")

    def write(self, text: str) -> None:
        self.handle.write(text)

    def commit(self) -> None:
        self.handle.close()
        put_in_place(self.temp, self.path)

    def discard(self) -> None:
        try:
            self.handle.close()  # on a full disk this flush fails again: the data is being dropped anyway
        except OSError:
            pass
        finally:
            self.temp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """The whole of `text` at `path`, or (on any error) the old file untouched and no temp file left."""
    file = AtomicFile(path)
    try:
        file.write(text)
        file.commit()
    finally:
        file.discard()


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """`with atomic_path(out) as temp: write(temp)`: the file written at `temp` replaces `out` when the
    block ends; on an error it is removed and `out` is untouched."""
    path = Path(path)
    temp = temp_beside(path, suffix)
    try:
        yield temp
        put_in_place(temp, path)
    finally:
        temp.unlink(missing_ok=True)
