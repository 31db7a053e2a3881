"""BlobStore adapter for small blobs (heat maps) in one SQLite file: ``sqlite-blob:<sha256>.<encoding>``.

SQLite keeps blobs of a few kilobytes faster than a file system does: one append to its
write-ahead log instead of a temporary file, a rename and two fsyncs. Every ``put`` is its own
transaction with ``synchronous=FULL``, so it is durable when it returns, as a fsynced file is; with
``group_commit`` the log is not flushed per put (``synchronous=NORMAL``) but by :meth:`sync`.
"""

import errno
import hashlib
import re
import sqlite3
import threading
from pathlib import Path
from typing import get_args

from schemas.blob import BlobEncoding, BlobRef
from services.storage.durability import fsync_path, sync_filesystem
from services.storage.errors import DISK_FULL_ERRNOS, BlobCorrupted, BlobStoreFull

SCHEME = "sqlite-blob:"
_ENCODINGS: tuple[str, ...] = get_args(BlobEncoding)
_URI = re.compile(r"sqlite-blob:(?P<sha256>[0-9a-f]{64})\.(?P<encoding>[a-z]+)")

_CREATE = """
CREATE TABLE IF NOT EXISTS blobs (
    name TEXT PRIMARY KEY,  -- <sha256>.<encoding>
    data BLOB NOT NULL
)
"""


class SqliteBlobStore:
    """Content-addressed blobs in the SQLite database at ``path``, addressed by ``sqlite-blob:`` URIs.

    The URI names the blob, not the file: it is resolved by the store that holds it (the blob store
    a record store is configured with). ``put`` of the same bytes twice is one row; ``get`` checks
    the bytes against the SHA-256 in the name. One connection, guarded by a lock.
    """

    def __init__(self, path: str | Path, group_commit: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.group_commit = group_commit
        self._unsynced = False  # group commit: a put since the last sync
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(f"PRAGMA synchronous = {'NORMAL' if group_commit else 'FULL'}")
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._db.execute(_CREATE)
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def sync(self) -> None:
        """Make every blob put so far durable: flush the write-ahead log (group commit; otherwise
        each put already is). Raises BlobStoreFull or OSError when the disk refuses."""
        with self._lock:
            if not self._unsynced:
                return
            self._unsynced = False
        try:
            if not sync_filesystem(self.path.parent):
                wal = self.path.with_name(self.path.name + "-wal")
                fsync_path(wal if wal.exists() else self.path)  # (checkpointed: the log is in the file)
        except OSError as error:
            with self._lock:
                self._unsynced = True
            if error.errno in DISK_FULL_ERRNOS:
                raise BlobStoreFull(error.errno, f"blob store {self.path} is full: {error}") from error
            raise

    @staticmethod
    def owns(uri: str) -> bool:
        """Whether ``uri`` names a blob of this kind of store."""
        return uri.startswith(SCHEME)

    def put(self, data: bytes, encoding: str, width: int, height: int) -> BlobRef:
        if encoding not in _ENCODINGS:
            raise ValueError(f"unsupported blob encoding {encoding!r}; expected one of {_ENCODINGS}")
        sha256 = hashlib.sha256(data).hexdigest()
        name = f"{sha256}.{encoding}"
        ref = BlobRef(
            uri=SCHEME + name,
            sha256=sha256,
            size_bytes=len(data),
            width=width,
            height=height,
            encoding=encoding,  # type: ignore[arg-type]  # checked against BlobEncoding above
        )
        try:
            with self._lock:
                self._db.execute("INSERT OR IGNORE INTO blobs (name, data) VALUES (?, ?)", (name, data))
                self._unsynced = self.group_commit
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode == sqlite3.SQLITE_FULL:
                raise BlobStoreFull(
                    errno.ENOSPC, f"blob store {self.path} is full: could not write {len(data)} bytes"
                ) from error
            raise
        return ref

    def get(self, uri: str) -> bytes:
        name, sha256 = self._name_of(uri)
        with self._lock:
            row = self._db.execute("SELECT data FROM blobs WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise FileNotFoundError(errno.ENOENT, f"blob not found: {uri}")
        data = bytes(row[0])
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise BlobCorrupted(f"blob {uri} is corrupted: its bytes hash to {actual}, not {sha256}")
        return data

    def delete(self, uri: str) -> None:
        """Remove the blob; deleting a blob that is already gone is not an error."""
        name, _ = self._name_of(uri)
        with self._lock:
            self._db.execute("DELETE FROM blobs WHERE name = ?", (name,))

    def exists(self, uri: str) -> bool:
        name, _ = self._name_of(uri)
        with self._lock:
            return self._db.execute("SELECT 1 FROM blobs WHERE name = ?", (name,)).fetchone() is not None

    @staticmethod
    def _name_of(uri: str) -> tuple[str, str]:
        match = _URI.fullmatch(uri)
        if match is None:
            raise ValueError(f"blob URI {uri!r} does not name a blob (sqlite-blob:<sha256>.<encoding>)")
        return uri.removeprefix(SCHEME), match["sha256"]
