"""Errors the storage adapters raise, beyond the standard ones (FileNotFoundError, ValueError)."""

import errno

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # OSError numbers that mean the disk is full


class BlobStoreFull(OSError):
    """The disk under the blob store is full (ENOSPC); nothing partial was left behind."""


class BlobCorrupted(Exception):
    """A stored blob's bytes no longer match the SHA-256 it is addressed by."""


class RecordStoreVersionError(RuntimeError):
    """The record store was created by a newer linewatch than this one."""


class RecordStoreUnavailable(ConnectionError):
    """The record store's server could not be reached (or refused writes) for longer than its
    retry window. Nothing is lost: the caller waits and sends the same records again."""


class LabelNotFound(KeyError):
    """No label is stored for this frame (it was never auto-labelled or imported)."""


class LabelConflict(RuntimeError):
    """The label changed since the caller read it (another reviewer was first): read it again."""

    @classmethod
    def moved_on(cls, frame_id: str, revision: int, expected: int) -> "LabelConflict":
        return cls(
            f"label of frame {frame_id} is at revision {revision}, not {expected}: "
            "it was changed since it was read (read it again)"
        )
