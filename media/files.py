"""Content hashing, atomic file writes, and a memo of what was computed from files: what every stage
that touches disk needs."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

CHUNK = 1 << 20
# A file modified this shortly before it is stamped may be rewritten within the same tick of its
# filesystem's clock and keep its mtime (FAT counts in 2 s, some NFS servers in 1 s): not memoized.
SETTLE_NS = 2_000_000_000

T = TypeVar("T")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write to a temporary file beside `path`, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class FileStamp:
    """What tells one version of a file from another without reading it (size, mtime, inode), and
    when it was looked at."""

    size: int
    mtime_ns: int
    inode: int
    taken_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        taken_ns = time.time_ns()  # before the stat: a write after it is newer than `taken_ns`
        info = os.stat(path)
        return cls(info.st_size, info.st_mtime_ns, info.st_ino, taken_ns)

    @property
    def settled(self) -> bool:
        """The file was last modified long enough before it was stamped that any later write shows."""
        return self.taken_ns - self.mtime_ns >= SETTLE_NS


class FileMemo(Generic[T]):
    """Values computed from files' contents (a sha256, a probe), each kept under the file's resolved
    path with the stamp the file had before the value was computed, and served only while the file
    still has that stamp: a rewritten, replaced or touched file is read again. A file stamped within
    `SETTLE_NS` of its last change is not kept. (What this cannot see: another file given the same
    size, mtime and inode on purpose.)

    `entries` maps a resolved path to [size, mtime_ns, inode, value]: JSON when the values are, so a
    memo can also be kept on disk between processes (`changed`: it gained entries since it was made)."""

    def __init__(self, entries: dict[str, list] | None = None) -> None:
        self.entries: dict[str, list] = {} if entries is None else entries
        self.changed = False

    def get(self, path: Path, compute: Callable[[Path], T]) -> T:
        """The value kept for this version of `path`, or `compute(path)` kept for it."""
        stamp = FileStamp.of(path)
        found = self.known(path, stamp)
        if found is None:
            found = compute(path)
            self.keep(path, stamp, found)
        return found

    def known(self, path: Path, stamp: FileStamp) -> T | None:
        entry = self.entries.get(_memo_key(path))
        if entry is None or entry[:3] != [stamp.size, stamp.mtime_ns, stamp.inode]:
            return None
        return entry[3]

    def keep(self, path: Path, stamp: FileStamp, value: T) -> None:
        """`value`, computed from `path` after `stamp` was taken."""
        if stamp.settled:
            self.entries[_memo_key(path)] = [stamp.size, stamp.mtime_ns, stamp.inode, value]
            self.changed = True


def _memo_key(path: Path) -> str:
    return str(Path(path).resolve())
