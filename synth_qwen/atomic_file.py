"""Files replaced whole or not at all: readers see the old file or the complete new one.

Text goes to a hidden temp file beside the target (`.<name>.<pid>.<random>.partial`, same folder so
the rename stays on one filesystem), is flushed to disk, then renamed over the target. A crash or
an error mid-write leaves the target as it was.
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path


def temp_beside(path: Path) -> Path:
    # pid + random: two writers of the same target (processes or threads) never share a temp file
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")


class AtomicFile:
    """Stream text with write(); commit() puts it in place; discard() drops it (a no-op after commit)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.temp = temp_beside(self.path)
        self.handle = open(self.temp, "w", encoding="utf-8")

    def write(self, text: str) -> None:
        self.handle.write(text)

    def commit(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())  # the data is on disk before the name points at it
        self.handle.close()
        os.replace(self.temp, self.path)

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
def replaced_whole(path: Path):
    """`with replaced_whole(path) as temp:` let any writer (an image library, a model saver) write the
    file `temp`; it becomes `path` when the block ends, and on an error `path` is untouched, `temp` gone."""
    temp = temp_beside(Path(path))
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
