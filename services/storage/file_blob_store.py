"""BlobStore adapter on the local file system: ``root/ab/<sha256>.<encoding>``, written atomically.

One level of 256 folders: a new blob seldom needs a new folder (two levels made one for nearly
every blob until tens of thousands were stored, a third of the cost of a put). Blobs written under
the older two-level layout (``root/ab/cd/<sha256>.<encoding>``) stay readable by their URIs."""

import errno
import hashlib
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import cast, get_args

from schemas.blob import BlobEncoding, BlobRef
from services.storage.durability import fsync_path, sync_filesystem
from services.storage.errors import DISK_FULL_ERRNOS, BlobCorrupted, BlobStoreFull
from services.storage.urls import file_url_to_path

_ENCODINGS: tuple[str, ...] = get_args(BlobEncoding)
_BLOB_NAME = re.compile(r"[0-9a-f]{64}\.[a-z]+")


def _write(fd: int, data: bytes, durable: bool) -> None:
    """Write ``data`` to the open file ``fd`` and close it; fsync it first when ``durable`` (else
    :meth:`FileBlobStore.sync` will)."""
    with open(fd, "wb", closefd=True) as file:
        file.write(data)
        if durable:
            file.flush()
            os.fsync(file.fileno())


class FileBlobStore:
    """Content-addressed blobs under ``root``, addressed by ``file:///`` URIs.

    ``put`` is idempotent: the same bytes with the same encoding land at the same path, once.
    ``get`` checks the bytes against the SHA-256 in the file name. Any URI that resolves outside
    ``root`` is refused with ValueError. Blobs are shared by content, so deleting one removes it
    for every record that points at the same bytes.

    With ``group_commit``, ``put`` does not wait for the disk: :meth:`sync` makes every blob put so
    far durable at once, and whoever stores a record that points at a blob calls it first (the line
    does, once per group of records). Without it, each ``put`` is durable when it returns.
    """

    def __init__(self, root: str | Path, group_commit: bool = False) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.group_commit = group_commit
        self._folders: set[Path] = set()  # folders known to exist
        self._unsynced: set[Path] = set()  # group commit: files put and their folders, not yet synced
        self._unsynced_lock = threading.Lock()

    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

    def sync(self) -> None:
        """Make every blob put so far durable (group commit; otherwise each put already is).

        Raises BlobStoreFull or OSError when the disk refuses; the blobs then stay to be synced."""
        with self._unsynced_lock:
            pending, self._unsynced = self._unsynced, set()
        if not pending:
            return
        try:
            if not sync_filesystem(self.root):
                for path in sorted(pending, key=lambda p: p.is_dir()):  # files, then their folders
                    try:
                        fsync_path(path)
                    except FileNotFoundError:  # deleted since: nothing to keep
                        continue
        except OSError as error:
            with self._unsynced_lock:
                self._unsynced |= pending
            if error.errno in DISK_FULL_ERRNOS:
                raise BlobStoreFull(error.errno, f"blob store {self.root} is full: {error}") from error
            raise

    def put(self, data: bytes, encoding: str, width: int, height: int) -> BlobRef:
        if encoding not in _ENCODINGS:
            raise ValueError(f"unsupported blob encoding {encoding!r}; expected one of {_ENCODINGS}")
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.root / sha256[:2] / f"{sha256}.{encoding}"
        ref = BlobRef(
            uri=path.as_uri(),
            sha256=sha256,
            size_bytes=len(data),
            width=width,
            height=height,
            encoding=cast(BlobEncoding, encoding),
        )
        if not self._holds(path, len(data)):
            self._write_atomically(path, data)
        return ref

    @staticmethod
    def _holds(path: Path, size: int) -> bool:
        """Whether the blob is stored whole (a crash before a sync can leave it empty or short)."""
        try:
            return path.stat().st_size == size
        except FileNotFoundError:
            return False

    def get(self, uri: str) -> bytes:
        path = self._path_of(uri)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, f"blob not found: {uri}") from None
        actual = hashlib.sha256(data).hexdigest()
        expected = path.name.partition(".")[0]  # the name is checked to be <sha256>.<encoding>
        if actual != expected:
            raise BlobCorrupted(f"blob {uri} is corrupted: its bytes hash to {actual}, not {expected}")
        return data

    def delete(self, uri: str) -> None:
        """Remove the blob; deleting a blob that is already gone is not an error."""
        self._path_of(uri).unlink(missing_ok=True)

    def exists(self, uri: str) -> bool:
        return self._path_of(uri).is_file()

    def _path_of(self, uri: str) -> Path:
        path = file_url_to_path(uri).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"blob URI {uri!r} points outside the blob store root {self.root}")
        if not _BLOB_NAME.fullmatch(path.name):
            raise ValueError(f"blob URI {uri!r} does not name a blob (<sha256>.<encoding>)")
        return path

    def _temporary_file(self, path: Path) -> tuple[int, str]:
        """A new temporary file beside ``path`` (its folder made when missing)."""
        folder = path.parent
        if folder not in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            self._folders.add(folder)
        try:
            return tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=path.suffix)
        except FileNotFoundError:  # the folder was removed since: make it again
            folder.mkdir(parents=True, exist_ok=True)
            return tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=path.suffix)

    def _write_atomically(self, path: Path, data: bytes) -> None:
        tmp: Path | None = None
        try:
            fd, tmp_name = self._temporary_file(path)
            tmp = Path(tmp_name)
            _write(fd, data, durable=not self.group_commit)
            os.replace(tmp, path)
            tmp = None
            if self.group_commit:
                with self._unsynced_lock:
                    self._unsynced.update((path, path.parent))
            else:
                fsync_path(path.parent)
        except OSError as error:
            if error.errno in DISK_FULL_ERRNOS:
                raise BlobStoreFull(
                    error.errno, f"blob store {self.root} is full: could not write {len(data)} bytes"
                ) from error
            raise
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
