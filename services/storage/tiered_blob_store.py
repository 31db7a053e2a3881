"""One BlobStore over two: small blobs (heat maps) in SQLite, large ones (frames) as files."""

from pathlib import Path

from schemas.blob import BlobRef
from services.storage.file_blob_store import FileBlobStore
from services.storage.sqlite_blob_store import SqliteBlobStore

SMALL_BLOB_BYTES = 64 * 1024
"""Blobs up to this size go into SQLite. A heat map is 2-10 KB; a camera frame is 100 KB to a few
MB, and SQLite's own measurements put files ahead of it for blobs above about 100 KB."""

SMALL_BLOBS_FILE = "small-blobs.db"


class TieredBlobStore:
    """Blobs of at most ``small_max_bytes`` in ``small``, the rest in ``files``.

    ``get``, ``delete`` and ``exists`` go to the store whose URI scheme the URI has
    (``sqlite-blob:`` or ``file:``), so blobs written before a change of tiering stay readable.
    """

    def __init__(
        self, files: FileBlobStore, small: SqliteBlobStore, small_max_bytes: int = SMALL_BLOB_BYTES
    ) -> None:
        self.files, self.small, self.small_max_bytes = files, small, small_max_bytes

    @classmethod
    def at(
        cls, root: str | Path, small_max_bytes: int = SMALL_BLOB_BYTES, group_commit: bool = False
    ) -> "TieredBlobStore":
        """Files under ``root`` and the small blobs in ``root/small-blobs.db``; with ``group_commit``
        puts are made durable by :meth:`sync` (see FileBlobStore)."""
        files = FileBlobStore(root, group_commit)
        small = SqliteBlobStore(files.root / SMALL_BLOBS_FILE, group_commit)
        return cls(files, small, small_max_bytes)

    @property
    def root(self) -> Path:
        return self.files.root

    def close(self) -> None:
        self.small.close()

    def sync(self) -> None:
        """Make every blob put so far durable (one flush each for the files and the small blobs;
        the second finds the file system clean when both live on one)."""
        self.files.sync()
        self.small.sync()

    def put(self, data: bytes, encoding: str, width: int, height: int) -> BlobRef:
        store = self.small if len(data) <= self.small_max_bytes else self.files
        return store.put(data, encoding, width, height)

    def get(self, uri: str) -> bytes:
        return self._holder(uri).get(uri)

    def delete(self, uri: str) -> None:
        self._holder(uri).delete(uri)

    def exists(self, uri: str) -> bool:
        return self._holder(uri).exists(uri)

    def _holder(self, uri: str) -> FileBlobStore | SqliteBlobStore:
        return self.small if self.small.owns(uri) else self.files
