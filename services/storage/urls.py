"""Paths from storage URLs.

``file:`` URLs follow RFC 8089: ``file:///var/linewatch/blobs`` is the absolute path
``/var/linewatch/blobs`` (``file:runs/blobs`` is relative). ``sqlite:`` URLs follow SQLAlchemy:
``sqlite:///runs/records.db`` is relative to the working directory, ``sqlite:////var/lib/records.db``
is absolute, ``sqlite:///:memory:`` is an in-memory database.
"""

from pathlib import Path
from urllib.parse import unquote


def file_url_to_path(url: str) -> Path:
    """The local path of a ``file:`` URL; percent-escapes are decoded."""
    if not url.startswith("file:"):
        raise ValueError(f"not a file: URL: {url!r}")
    rest = url.removeprefix("file:")
    if rest.startswith("//"):
        host, slash, path = rest[2:].partition("/")
        if host not in ("", "localhost"):
            raise ValueError(f"file URL {url!r} names host {host!r}; only local files are supported")
        rest = slash + path
    if not rest:
        raise ValueError(f"file URL {url!r} has no path")
    return Path(unquote(rest))


def sqlite_url_to_path(url: str) -> str:
    """The database path of a ``sqlite:///`` URL (``:memory:`` is passed through)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"expected sqlite:///relative.db or sqlite:////absolute.db, got {url!r}")
    return unquote(url.removeprefix(prefix))
